//! Wildcard patterns (`*` any run of characters, `?` one character), as `:` and `like` use them.
//!
//! Patterns are classified once when a rule is compiled: most are an exact string, a prefix, a
//! suffix or a substring, and those run as one `starts_with`/`ends_with`/`contains`; only the
//! rest use the general backtracking matcher. Case-insensitive patterns are stored lowercased
//! and compared with ASCII case folding when the input is ASCII, so the hot path does not
//! allocate.

/// A compiled wildcard pattern.
#[derive(Clone, Debug)]
pub struct Wildcard {
    kind: Kind,
    insensitive: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(Box<memchr::memmem::Finder<'static>>),
    Any,
    General(Vec<Tok>),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Lit(char),
    One,
    Star,
}

impl Wildcard {
    /// Compiles a pattern. `\*` and `\?` match a literal star or question mark.
    pub fn new(pattern: &str, insensitive: bool) -> Wildcard {
        let pat = if insensitive {
            pattern.to_lowercase()
        } else {
            pattern.to_owned()
        };
        let mut toks = Vec::new();
        let mut chars = pat.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) => toks.push(Tok::Lit(n)),
                    None => toks.push(Tok::Lit('\\')),
                },
                '*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star)
                    }
                }
                '?' => toks.push(Tok::One),
                c => toks.push(Tok::Lit(c)),
            }
        }
        let lit = |ts: &[Tok]| -> Option<String> {
            ts.iter()
                .map(|t| match t {
                    Tok::Lit(c) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        let n = toks.len();
        let kind = if toks == [Tok::Star] {
            Kind::Any
        } else if let Some(s) = lit(&toks) {
            Kind::Exact(s)
        } else if n >= 2 && toks[n - 1] == Tok::Star && lit(&toks[..n - 1]).is_some() {
            Kind::Prefix(lit(&toks[..n - 1]).unwrap_or_default())
        } else if n >= 2 && toks[0] == Tok::Star && lit(&toks[1..]).is_some() {
            Kind::Suffix(lit(&toks[1..]).unwrap_or_default())
        } else if n >= 3
            && toks[0] == Tok::Star
            && toks[n - 1] == Tok::Star
            && lit(&toks[1..n - 1]).is_some()
        {
            let needle = lit(&toks[1..n - 1]).unwrap_or_default();
            Kind::Contains(Box::new(
                memchr::memmem::Finder::new(needle.as_bytes()).into_owned(),
            ))
        } else {
            Kind::General(toks)
        };
        Wildcard { kind, insensitive }
    }

    /// The literal this pattern equals when it has no wildcard, and whether it ignores case
    /// (lowercased if so).
    pub fn exact(&self) -> Option<(&str, bool)> {
        match &self.kind {
            Kind::Exact(s) => Some((s, self.insensitive)),
            _ => None,
        }
    }

    /// Whether `s` matches the whole pattern.
    pub fn matches(&self, s: &str) -> bool {
        if self.insensitive && !s.is_ascii() {
            return self.matches_folded(&s.to_lowercase());
        }
        let ci = self.insensitive;
        match &self.kind {
            Kind::Any => true,
            Kind::Exact(p) => eq(s.as_bytes(), p.as_bytes(), ci),
            Kind::Prefix(p) => s.len() >= p.len() && eq(&s.as_bytes()[..p.len()], p.as_bytes(), ci),
            Kind::Suffix(p) => {
                s.len() >= p.len() && eq(&s.as_bytes()[s.len() - p.len()..], p.as_bytes(), ci)
            }
            Kind::Contains(f) => contains(s.as_bytes(), f, ci),
            Kind::General(toks) => general(toks, s, ci),
        }
    }

    /// Whether the pattern ignores case.
    pub fn insensitive(&self) -> bool {
        self.insensitive
    }

    /// Whether `s` matches any of `patterns`, all of them case-insensitive: the input is
    /// lowercased once for all of them (not at all when it has no capital), where
    /// [`Wildcard::matches`] folds it once per pattern. A list of a dozen credential paths
    /// tested against every file argument is where that shows.
    pub fn matches_any_insensitive<'p>(
        patterns: impl Iterator<Item = &'p Wildcard> + Clone,
        s: &str,
    ) -> bool {
        let run = |lower: &str| patterns.clone().any(|p| p.matches_folded(lower));
        if !s.is_ascii() {
            return run(&s.to_lowercase());
        }
        // ASCII lowercased stays ASCII.
        with_ascii_lowercase(s.as_bytes(), |lower| {
            run(std::str::from_utf8(lower).unwrap_or_default())
        })
    }

    /// Matches an input already lowercased (an insensitive pattern is stored lowercased).
    fn matches_folded(&self, s: &str) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact(p) => s == p,
            Kind::Prefix(p) => s.starts_with(p.as_str()),
            Kind::Suffix(p) => s.ends_with(p.as_str()),
            Kind::Contains(f) => f.find(s.as_bytes()).is_some(),
            Kind::General(toks) => general(toks, s, false),
        }
    }
}

fn eq(a: &[u8], b: &[u8], ci: bool) -> bool {
    if ci {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// Substring search; for case-insensitive patterns (stored lowercased) the ASCII input is
/// lowercased first, so the search stays one SIMD `memmem` pass.
fn contains(hay: &[u8], finder: &memchr::memmem::Finder<'_>, ci: bool) -> bool {
    if !ci {
        return finder.find(hay).is_some();
    }
    with_ascii_lowercase(hay, |lower| finder.find(lower).is_some())
}

/// `f` of `bytes` with ASCII letters lowercased: the bytes as they are when they hold no
/// capital, else a copy in a stack buffer (on the heap past 512 bytes), without allocating
/// for the short values rules test.
fn with_ascii_lowercase<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if !bytes.iter().any(u8::is_ascii_uppercase) {
        return f(bytes);
    }
    let mut buf = [0u8; 512];
    match buf.get_mut(..bytes.len()) {
        Some(lower) => {
            lower.copy_from_slice(bytes);
            lower.make_ascii_lowercase();
            f(lower)
        }
        None => f(&bytes.to_ascii_lowercase()),
    }
}

/// Classic wildcard matching with one backtrack point (the last star): linear in practice.
fn general(toks: &[Tok], s: &str, ci: bool) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    let same = |a: char, b: char| {
        if ci {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    while i < chars.len() {
        match toks.get(p) {
            Some(Tok::Star) => {
                star = Some((p, i));
                p += 1;
            }
            Some(Tok::One) => {
                p += 1;
                i += 1;
            }
            Some(Tok::Lit(c)) if same(*c, chars[i]) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|t| *t == Tok::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let cases = [
            ("read_*", "read_file", false, true),
            ("read_*", "READ_file", false, false),
            ("read_*", "READ_file", true, true),
            ("*_file", "read_file", false, true),
            ("*secret*", "my_SECRET_x", true, true),
            ("*secret*", "my_SECRET_x", false, false),
            ("a?c", "abc", false, true),
            ("a?c", "abbc", false, false),
            ("a*b*c", "aXXbYYc", false, true),
            ("a*b*c", "aXXbYY", false, false),
            ("*", "", false, true),
            ("", "", false, true),
            ("x\\*", "x*", false, true),
            ("x\\*", "xy", false, false),
            ("ÉTÉ*", "été-2026", true, true),
            ("s?nd", "sénd", false, true),
        ];
        for (p, s, ci, want) in cases {
            assert_eq!(Wildcard::new(p, ci).matches(s), want, "{p} ~ {s} ci={ci}");
        }
    }

    /// Folding the input once for a list gives what each pattern gives alone, for every
    /// shape of pattern, on inputs with and without capitals, non-ASCII, and longer than
    /// the stack buffer.
    #[test]
    fn folding_once_for_a_list_changes_nothing() {
        let patterns = [
            "*.env",
            "*/.ENV*",
            "*id_rsa*",
            "read_*",
            "exact",
            "a?c",
            "a*b*c",
            "*",
            "ÉTÉ*",
            "*kelvin\u{212a}*",
            "\\*x",
        ];
        let long = format!("{}/.Env", "Q".repeat(600));
        let inputs = [
            "",
            "/srv/app/.env",
            "/SRV/APP/.ENV",
            "/home/u/.ssh/ID_RSA.pub",
            "READ_file",
            "exact",
            "EXACT",
            "aBc",
            "AXXbYYc",
            "été-2026",
            "ÉTÉ-2026",
            "x/.EnV.sample",
            "kelvinK",
            "\\*X",
            long.as_str(),
        ];
        for n in 1..=patterns.len() {
            for w in patterns.windows(n) {
                let compiled: Vec<Wildcard> = w.iter().map(|p| Wildcard::new(p, true)).collect();
                for s in inputs {
                    assert_eq!(
                        Wildcard::matches_any_insensitive(compiled.iter(), s),
                        compiled.iter().any(|p| p.matches(s)),
                        "{w:?} ~ {s}"
                    );
                }
            }
        }
    }
}
