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

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
