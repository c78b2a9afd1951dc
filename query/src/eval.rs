//! Scoring detections against labelled traffic, at session level: a session is flagged when
//! an alert names it (the session of the alert's last evidence event). Per scenario, how many attack sessions were flagged or
//! missed; overall, precision (flagged sessions that are attacks) and recall (attack sessions
//! flagged) and the false-positive rate over benign sessions.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// The label of one session (`labels.json`: `{session_id: {"label", "scenario"}}`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Label {
    /// `attack` or `benign`.
    pub label: String,
    /// The scenario name (`benign` for benign sessions).
    pub scenario: String,
}

/// Labels by session id.
pub type Labels = HashMap<String, Label>;

/// Score of one scenario.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ScenarioScore {
    /// Sessions of this scenario.
    pub sessions: usize,
    /// Of which flagged.
    pub flagged: usize,
    /// Of which missed.
    pub missed: usize,
}

/// The whole evaluation.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Report {
    /// Per scenario (attacks and `benign`).
    pub scenarios: BTreeMap<String, ScenarioScore>,
    /// Flagged attack sessions / flagged sessions.
    pub precision: f64,
    /// Flagged attack sessions / attack sessions.
    pub recall: f64,
    /// Flagged benign sessions / benign sessions.
    pub false_positive_rate: f64,
    /// Flagged sessions that have no label.
    pub unlabelled_flagged: usize,
    /// Labelled sessions left out because their agent was still warming up.
    pub excluded_warm_up: usize,
}

/// Scores flagged sessions against labels.
pub fn evaluate(labels: &Labels, flagged: &HashSet<String>) -> Report {
    let mut r = Report::default();
    let (mut tp, mut fp, mut attacks, mut benign) = (0usize, 0usize, 0usize, 0usize);
    for (session, label) in labels {
        let s = r.scenarios.entry(label.scenario.clone()).or_default();
        s.sessions += 1;
        let hit = flagged.contains(session);
        if hit {
            s.flagged += 1;
        } else {
            s.missed += 1;
        }
        if label.label == "attack" {
            attacks += 1;
            tp += usize::from(hit);
        } else {
            benign += 1;
            fp += usize::from(hit);
        }
    }
    r.unlabelled_flagged = flagged.iter().filter(|s| !labels.contains_key(*s)).count();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    r.precision = ratio(tp, tp + fp);
    r.recall = ratio(tp, attacks);
    r.false_positive_rate = ratio(fp, benign);
    r
}

impl Report {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<32} {:>8} {:>8} {:>8}\n",
            "scenario", "sessions", "flagged", "missed"
        );
        for (name, s) in &self.scenarios {
            out.push_str(&format!(
                "{name:<32} {:>8} {:>8} {:>8}\n",
                s.sessions, s.flagged, s.missed
            ));
        }
        if self.excluded_warm_up > 0 {
            out.push_str(&format!(
                "({} sessions left out: their agent was still in warm-up)\n",
                self.excluded_warm_up
            ));
        }
        out.push_str(&format!(
            "precision {:.3}  recall {:.3}  benign false-positive rate {:.4}\n",
            self.precision, self.recall, self.false_positive_rate
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_and_recall() {
        let mut labels = Labels::new();
        let l = |label: &str, scenario: &str| Label {
            label: label.into(),
            scenario: scenario.into(),
        };
        labels.insert("a1".into(), l("attack", "exfil"));
        labels.insert("a2".into(), l("attack", "exfil"));
        labels.insert("b1".into(), l("benign", "benign"));
        labels.insert("b2".into(), l("benign", "benign"));
        let flagged: HashSet<String> = ["a1", "b1", "zz"].iter().map(|s| s.to_string()).collect();
        let r = evaluate(&labels, &flagged);
        assert_eq!(r.precision, 0.5);
        assert_eq!(r.recall, 0.5);
        assert_eq!(r.false_positive_rate, 0.5);
        assert_eq!(r.unlabelled_flagged, 1);
        assert_eq!(
            r.scenarios["exfil"],
            ScenarioScore {
                sessions: 2,
                flagged: 1,
                missed: 1
            }
        );
    }
}
