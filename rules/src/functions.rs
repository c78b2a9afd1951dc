//! EQL's functions (Elasticsearch dialect): `add`, `between`, `cidrMatch`, `concat`, `divide`,
//! `endsWith`, `indexOf`, `length`, `modulo`, `multiply`, `number`, `startsWith`, `string`,
//! `stringContains`, `substring`, `subtract`; the string ones take a `~` suffix for
//! case-insensitive matching. A null argument gives a null result, as in EQL.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::eval::{arith, ArithOp, Val};

/// The static type of a value, for query checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// A string.
    Str,
    /// A number.
    Num,
    /// A boolean.
    Bool,
    /// `null`.
    Null,
    /// A list of strings.
    StrList,
    /// Unknown (a field outside the schema).
    Any,
}

impl Ty {
    /// The type's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Num => "number",
            Ty::Bool => "boolean",
            Ty::Null => "null",
            Ty::StrList => "list of strings",
            Ty::Any => "any",
        }
    }

    /// Whether a value of this type may be used where `want` is expected.
    pub fn fits(self, want: Ty) -> bool {
        self == want
            || matches!(self, Ty::Any | Ty::Null)
            || want == Ty::Any
            || (self == Ty::StrList && want == Ty::Str)
    }
}

/// A function of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    /// `add(a, b)`
    Add,
    /// `between(s, left, right[, greedy])`
    Between(bool),
    /// `cidrMatch(ip, cidr, …)`
    CidrMatch,
    /// `concat(v, …)`
    Concat,
    /// `divide(a, b)`
    Divide,
    /// `endsWith(s, suffix)`
    EndsWith(bool),
    /// `indexOf(s, sub[, start])`
    IndexOf(bool),
    /// `length(s)`
    Length,
    /// `modulo(a, b)`
    Modulo,
    /// `multiply(a, b)`
    Multiply,
    /// `number(s[, base])`
    Number,
    /// `startsWith(s, prefix)`
    StartsWith(bool),
    /// `string(v)`
    String,
    /// `stringContains(s, sub)`
    StringContains(bool),
    /// `substring(s, start[, end])`
    Substring,
    /// `subtract(a, b)`
    Subtract,
}

/// Every function name, for suggestions.
pub const NAMES: &[&str] = &[
    "add",
    "between",
    "cidrMatch",
    "concat",
    "divide",
    "endsWith",
    "indexOf",
    "length",
    "modulo",
    "multiply",
    "number",
    "startsWith",
    "string",
    "stringContains",
    "substring",
    "subtract",
];

/// What a function accepts and returns.
pub struct Signature {
    /// Types of the fixed arguments.
    pub params: &'static [Ty],
    /// How many of them are required.
    pub required: usize,
    /// Type of any further arguments (variadic).
    pub rest: Option<Ty>,
    /// Result type.
    pub ret: Ty,
}

impl Func {
    /// Looks a function up by name; `insensitive` is the `~` suffix.
    pub fn lookup(name: &str, insensitive: bool) -> Result<Func, String> {
        let f = match name {
            "add" => Func::Add,
            "between" => Func::Between(insensitive),
            "cidrMatch" => Func::CidrMatch,
            "concat" => Func::Concat,
            "divide" => Func::Divide,
            "endsWith" => Func::EndsWith(insensitive),
            "indexOf" => Func::IndexOf(insensitive),
            "length" => Func::Length,
            "modulo" => Func::Modulo,
            "multiply" => Func::Multiply,
            "number" => Func::Number,
            "startsWith" => Func::StartsWith(insensitive),
            "string" => Func::String,
            "stringContains" => Func::StringContains(insensitive),
            "substring" => Func::Substring,
            "subtract" => Func::Subtract,
            _ => return Err(format!("unknown function `{name}`")),
        };
        let takes_tilde = matches!(
            f,
            Func::Between(_)
                | Func::EndsWith(_)
                | Func::IndexOf(_)
                | Func::StartsWith(_)
                | Func::StringContains(_)
        );
        if insensitive && !takes_tilde {
            return Err(format!(
                "function `{name}` has no case-insensitive `~` form"
            ));
        }
        Ok(f)
    }

    /// The function's signature.
    pub fn signature(self) -> Signature {
        use Ty::*;
        let sig = |params: &'static [Ty], required, rest, ret| Signature {
            params,
            required,
            rest,
            ret,
        };
        match self {
            Func::Add | Func::Divide | Func::Modulo | Func::Multiply | Func::Subtract => {
                sig(&[Num, Num], 2, None, Num)
            }
            Func::Between(_) => sig(&[Str, Str, Str, Bool], 3, None, Str),
            Func::CidrMatch => sig(&[Str, Str], 2, Some(Str), Bool),
            Func::Concat => sig(&[Any], 1, Some(Any), Str),
            Func::EndsWith(_) | Func::StartsWith(_) | Func::StringContains(_) => {
                sig(&[Str, Str], 2, None, Bool)
            }
            Func::IndexOf(_) => sig(&[Str, Str, Num], 2, None, Num),
            Func::Length => sig(&[Str], 1, None, Num),
            Func::Number => sig(&[Str, Num], 1, None, Num),
            Func::String => sig(&[Any], 1, None, Str),
            Func::Substring => sig(&[Str, Num, Num], 2, None, Str),
        }
    }

    /// Calls the function.
    pub fn call<'a>(self, args: &[Val<'a>]) -> Val<'a> {
        if args.iter().any(|a| matches!(a, Val::Null)) {
            return Val::Null;
        }
        let s = |i: usize| args.get(i).and_then(|v| v.as_str());
        let n = |i: usize| args.get(i).and_then(|v| v.as_f64());
        let b = |v: bool| Val::Bool(v);
        match self {
            Func::Add => arith(ArithOp::Add, &args[0], &args[1]),
            Func::Subtract => arith(ArithOp::Sub, &args[0], &args[1]),
            Func::Multiply => arith(ArithOp::Mul, &args[0], &args[1]),
            Func::Divide => arith(ArithOp::Div, &args[0], &args[1]),
            Func::Modulo => arith(ArithOp::Mod, &args[0], &args[1]),
            Func::Between(ci) => {
                let (Some(src), Some(l), Some(r)) = (s(0), s(1), s(2)) else {
                    return Val::Null;
                };
                let greedy = matches!(args.get(3), Some(Val::Bool(true)));
                between(src, l, r, greedy, ci)
                    .map(|x| Val::Str(Cow::Owned(x.to_owned())))
                    .unwrap_or(Val::Str(Cow::Borrowed("")))
            }
            Func::CidrMatch => {
                let Some(ip) = s(0).and_then(|t| t.parse::<IpAddr>().ok()) else {
                    return Val::Null;
                };
                b(args[1..]
                    .iter()
                    .filter_map(|c| c.as_str())
                    .any(|c| cidr_contains(c, ip)))
            }
            Func::Concat => {
                let mut out = String::new();
                for a in args {
                    match a.to_text() {
                        Some(t) => out.push_str(&t),
                        None => return Val::Null,
                    }
                }
                Val::Str(Cow::Owned(out))
            }
            Func::EndsWith(ci) => match (s(0), s(1)) {
                (Some(x), Some(y)) => b(fold(x, ci).ends_with(fold(y, ci).as_ref())),
                _ => Val::Null,
            },
            Func::StartsWith(ci) => match (s(0), s(1)) {
                (Some(x), Some(y)) => b(fold(x, ci).starts_with(fold(y, ci).as_ref())),
                _ => Val::Null,
            },
            Func::StringContains(ci) => match (s(0), s(1)) {
                (Some(x), Some(y)) => b(fold(x, ci).contains(fold(y, ci).as_ref())),
                _ => Val::Null,
            },
            Func::IndexOf(ci) => {
                let (Some(x), Some(y)) = (s(0), s(1)) else {
                    return Val::Null;
                };
                let (x, y) = (fold(x, ci), fold(y, ci));
                let start = n(2).unwrap_or(0.0).max(0.0) as usize;
                let chars: Vec<(usize, char)> = x.char_indices().collect();
                let Some(&(byte_start, _)) = chars.get(start) else {
                    return if start == chars.len() && y.is_empty() {
                        Val::Int(start as i64)
                    } else {
                        Val::Null
                    };
                };
                match x[byte_start..].find(y.as_ref()) {
                    Some(pos) => Val::Int(x[..byte_start + pos].chars().count() as i64),
                    None => Val::Null,
                }
            }
            Func::Length => match &args[0] {
                Val::Str(x) => Val::Int(x.chars().count() as i64),
                Val::Fps(l) => Val::Int(l.len() as i64),
                Val::Array(a) => Val::Int(a.len() as i64),
                _ => Val::Null,
            },
            Func::Number => {
                let Some(x) = s(0) else {
                    return match &args[0] {
                        v @ (Val::Int(_) | Val::Float(_)) => v.clone(),
                        _ => Val::Null,
                    };
                };
                let x = x.trim();
                match n(1) {
                    Some(base) => {
                        let digits = if base == 16.0 {
                            x.trim_start_matches("0x").trim_start_matches("0X")
                        } else {
                            x
                        };
                        if !(2.0..=36.0).contains(&base) {
                            return Val::Null;
                        }
                        i64::from_str_radix(digits, base as u32)
                            .map(Val::Int)
                            .unwrap_or(Val::Null)
                    }
                    None => x
                        .parse::<i64>()
                        .map(Val::Int)
                        .or_else(|_| x.parse::<f64>().map(Val::Float))
                        .unwrap_or(Val::Null),
                }
            }
            Func::String => args[0].to_text().map(Val::Str).unwrap_or(Val::Null),
            Func::Substring => {
                let Some(x) = s(0) else { return Val::Null };
                let len = x.chars().count() as i64;
                let idx = |v: f64| {
                    let i = v as i64;
                    (if i < 0 { len + i } else { i }).clamp(0, len) as usize
                };
                let start = idx(n(1).unwrap_or(0.0));
                let end = n(2).map(idx).unwrap_or(len as usize);
                if start >= end {
                    return Val::Str(Cow::Borrowed(""));
                }
                Val::Str(Cow::Owned(
                    x.chars().skip(start).take(end - start).collect(),
                ))
            }
        }
    }
}

fn fold(s: &str, ci: bool) -> Cow<'_, str> {
    if ci {
        Cow::Owned(s.to_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

fn between<'s>(src: &'s str, left: &str, right: &str, greedy: bool, ci: bool) -> Option<&'s str> {
    // Case folding can change byte lengths for non-ASCII text; search ASCII-folded copies,
    // which keep offsets, and fall back to exact search otherwise.
    let hay: Cow<'_, str> = if ci && src.is_ascii() {
        Cow::Owned(src.to_ascii_lowercase())
    } else {
        Cow::Borrowed(src)
    };
    let (l, r) = if ci {
        (left.to_ascii_lowercase(), right.to_ascii_lowercase())
    } else {
        (left.to_owned(), right.to_owned())
    };
    let start = hay.find(&l)? + l.len();
    let rest = &hay[start..];
    let end = if greedy {
        rest.rfind(&r)?
    } else {
        rest.find(&r)?
    };
    Some(&src[start..start + end])
}

fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let (net, bits) = match cidr.split_once('/') {
        Some((n, b)) => (n, b.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(s: &str) -> Val<'_> {
        Val::Str(Cow::Borrowed(s))
    }

    #[test]
    fn string_functions() {
        let f = |name, ci, args: &[Val<'_>]| {
            Func::lookup(name, ci)
                .unwrap()
                .call(args)
                .to_text()
                .map(|c| c.into_owned())
        };
        assert_eq!(
            f("between", false, &[st("a/b/c/d"), st("/"), st("/")]).as_deref(),
            Some("b")
        );
        assert_eq!(
            f(
                "between",
                false,
                &[st("a/b/c/d"), st("/"), st("/"), Val::Bool(true)]
            )
            .as_deref(),
            Some("b/c")
        );
        assert_eq!(
            f("between", true, &[st("xAbCy"), st("a"), st("Y")]).as_deref(),
            Some("bC")
        );
        assert_eq!(
            f("concat", false, &[st("a"), Val::Int(1), Val::Bool(true)]).as_deref(),
            Some("a1true")
        );
        assert_eq!(
            f("endsWith", true, &[st("File.EXE"), st(".exe")]).as_deref(),
            Some("true")
        );
        assert_eq!(
            f("endsWith", false, &[st("File.EXE"), st(".exe")]).as_deref(),
            Some("false")
        );
        assert_eq!(
            f("indexOf", false, &[st("abcabc"), st("c"), Val::Int(3)]).as_deref(),
            Some("5")
        );
        assert_eq!(f("indexOf", false, &[st("abc"), st("z")]), None);
        assert_eq!(f("length", false, &[st("héllo")]).as_deref(), Some("5"));
        assert_eq!(
            f("number", false, &[st("0x1F"), Val::Int(16)]).as_deref(),
            Some("31")
        );
        assert_eq!(f("number", false, &[st("2.5")]).as_deref(), Some("2.5"));
        assert_eq!(
            f("substring", false, &[st("hello"), Val::Int(-3)]).as_deref(),
            Some("llo")
        );
        assert_eq!(
            f("substring", false, &[st("hello"), Val::Int(1), Val::Int(3)]).as_deref(),
            Some("el")
        );
        assert_eq!(
            f("stringContains", true, &[st("Hello"), st("ELL")]).as_deref(),
            Some("true")
        );
        assert_eq!(
            f("divide", false, &[Val::Int(7), Val::Int(2)]).as_deref(),
            Some("3")
        );
        assert_eq!(f("divide", false, &[Val::Int(7), Val::Int(0)]), None);
        assert_eq!(
            f("modulo", false, &[Val::Int(7), Val::Int(3)]).as_deref(),
            Some("1")
        );
        assert_eq!(
            f("startsWith", false, &[Val::Null, st("x")]),
            None,
            "null propagates"
        );
    }

    #[test]
    fn cidr() {
        let f = Func::CidrMatch;
        assert_eq!(f.call(&[st("10.1.2.3"), st("10.0.0.0/8")]), Val::Bool(true));
        assert_eq!(
            f.call(&[st("11.1.2.3"), st("10.0.0.0/8"), st("192.168.0.0/16")]),
            Val::Bool(false)
        );
        assert_eq!(f.call(&[st("fe80::1"), st("fe80::/10")]), Val::Bool(true));
        assert_eq!(f.call(&[st("not-an-ip"), st("10.0.0.0/8")]), Val::Null);
    }

    #[test]
    fn lookup_errors() {
        assert!(Func::lookup("lenght", false).is_err());
        assert!(Func::lookup("length", true).unwrap_err().contains("`~`"));
    }
}
