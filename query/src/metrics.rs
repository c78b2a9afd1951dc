//! Prometheus text exposition (format 0.0.4) of counters and gauges read as a snapshot.
//!
//! Cordon's counters live in the structures that count them (pipeline, engine, store,
//! responder, API) and are read when `/metrics` is scraped; the client crates are built around
//! owning registered metric objects instead, so this small writer renders the snapshot with
//! the format's rules: one `# HELP`/`# TYPE` per family, escaped label values.

use std::collections::HashSet;
use std::fmt::Write as _;

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    families: HashSet<String>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    fn sample(&mut self, kind: &str, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        if self.families.insert(name.to_owned()) {
            let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\n', " "));
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }

    /// A counter sample (a total that only grows).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample("counter", name, help, labels, v);
    }

    /// A gauge sample (a level).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample("gauge", name, help, labels, v);
    }

    /// A histogram: `counts[i]` observations at most `bounds[i]`, each bucket counted on
    /// its own (not cumulated), and `counts[bounds.len()]` the ones above the last bound;
    /// `sum` of all observations. Written cumulatively with `le` labels, then `_sum` and
    /// `_count`, as the format wants.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        if self.families.insert(name.to_owned()) {
            let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\n', " "));
            let _ = writeln!(self.out, "# TYPE {name} histogram");
        }
        let mut total = 0u64;
        for (i, n) in counts.iter().enumerate() {
            total += n;
            match bounds.get(i) {
                Some(le) => {
                    let _ = writeln!(self.out, "{name}_bucket{{le=\"{le}\"}} {total}");
                }
                None => {
                    let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let _ = writeln!(self.out, "{name}_sum {sum}");
        let _ = writeln!(self.out, "{name}_count {total}");
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let mut e = Exposition::default();
        e.histogram("d_seconds", "D", &[0.1, 1.0], &[2, 0, 1], 3.5);
        assert_eq!(
            e.finish(),
            "# HELP d_seconds D\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.1\"} 2\nd_seconds_bucket{le=\"1\"} 2\n\
             d_seconds_bucket{le=\"+Inf\"} 3\nd_seconds_sum 3.5\nd_seconds_count 3\n"
        );
    }

    #[test]
    fn families_once_and_labels_escaped() {
        let mut e = Exposition::default();
        e.counter("x_total", "Xs", &[("rule", "a\"b")], 1.0);
        e.counter("x_total", "Xs", &[("rule", "c")], 2.0);
        e.gauge("y", "Y", &[], 0.5);
        let t = e.finish();
        assert_eq!(t.matches("# TYPE x_total counter").count(), 1);
        assert!(t.contains("x_total{rule=\"a\\\"b\"} 1\n"), "{t}");
        assert!(t.contains("# TYPE y gauge\ny 0.5\n"), "{t}");
    }
}
