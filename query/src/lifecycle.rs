//! Alert lifecycle: what analysts do to an alert — acknowledge, assign, resolve, suppress — as
//! an append-only stream of OCSF Detection Finding activities (`activity_id` 2 Update for ack
//! and assign, 3 Close for resolve and suppress), never edits of the alert itself. The current
//! status of an alert is the status of its latest lifecycle event (`new` when it has none);
//! the SQL view `alert_status` computes exactly that, so history and status cannot disagree.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What an analyst did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Seen; someone is on it.
    Ack,
    /// Given to someone.
    Assign,
    /// Dealt with.
    Resolve,
    /// Not worth working (a known false positive, accepted risk).
    Suppress,
}

impl std::str::FromStr for Change {
    type Err = String;
    fn from_str(s: &str) -> Result<Change, String> {
        Ok(match s {
            "ack" => Change::Ack,
            "assign" => Change::Assign,
            "resolve" => Change::Resolve,
            "suppress" => Change::Suppress,
            _ => {
                return Err(format!(
                    "no lifecycle change {s:?}; expected ack, assign, resolve or suppress"
                ))
            }
        })
    }
}

impl Change {
    /// The name used in URLs and the `change` column.
    pub fn name(self) -> &'static str {
        match self {
            Change::Ack => "ack",
            Change::Assign => "assign",
            Change::Resolve => "resolve",
            Change::Suppress => "suppress",
        }
    }

    /// The status the alert has after this change, and its OCSF `status_id`.
    pub fn status(self) -> (&'static str, i8) {
        match self {
            Change::Ack => ("in_progress", 2),
            Change::Assign => ("in_progress", 2),
            Change::Resolve => ("resolved", 4),
            Change::Suppress => ("suppressed", 3),
        }
    }

    /// OCSF `activity_id`: 2 Update, 3 Close.
    pub fn activity(self) -> i8 {
        match self {
            Change::Ack | Change::Assign => 2,
            Change::Resolve | Change::Suppress => 3,
        }
    }
}

/// One lifecycle event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// Its id (a ULID).
    pub event_id: String,
    /// The alert.
    pub alert_id: String,
    /// When (ms since the epoch).
    pub time_ms: i64,
    /// What was done.
    pub change: Change,
    /// Who the alert is assigned to (for `assign`; kept by later changes only if they say so).
    pub assignee: Option<String>,
    /// Why (free text).
    pub reason: Option<String>,
    /// The API key id that did it.
    pub actor_id: String,
    /// The key's name.
    pub actor_name: String,
}

impl LifecycleEvent {
    /// A new event now.
    pub fn new(alert_id: &str, change: Change, actor_id: &str, actor_name: &str) -> Self {
        LifecycleEvent {
            event_id: ulid::Ulid::new().to_string(),
            alert_id: alert_id.to_owned(),
            time_ms: jiff::Timestamp::now().as_millisecond(),
            change,
            assignee: None,
            reason: None,
            actor_id: actor_id.to_owned(),
            actor_name: actor_name.to_owned(),
        }
    }

    /// The event as the API shows it (the columns of `alert_events`, time as RFC 3339).
    pub fn to_json(&self) -> Value {
        json!({
            "event_id": self.event_id,
            "alert_id": self.alert_id,
            "time": jiff::Timestamp::from_millisecond(self.time_ms)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            "change": self.change.name(),
            "status": self.change.status().0,
            "assignee": self.assignee,
            "reason": self.reason,
            "actor_id": self.actor_id,
            "actor_name": self.actor_name,
        })
    }

    /// The event as an OCSF Detection Finding Update or Close activity.
    pub fn to_ocsf(&self) -> Value {
        let (status, status_id) = self.change.status();
        let activity = self.change.activity();
        json!({
            "class_uid": 2004,
            "category_uid": 2,
            "activity_id": activity,
            "activity_name": if activity == 2 { "Update" } else { "Close" },
            "type_uid": 2004 * 100 + i64::from(activity),
            "time": self.time_ms,
            "status_id": status_id,
            "status": status,
            "status_detail": self.reason,
            "comment": self.reason,
            "metadata": {
                "uid": self.event_id,
                "version": "1.8.0",
                "product": {"name": "Cordon", "vendor_name": "Cordon"},
                "correlation_uid": self.alert_id,
            },
            "finding_info": {"uid": self.alert_id},
            "actor": {"user": {"uid": self.actor_id, "name": self.actor_name}},
            "assignee": self.assignee.as_ref().map(|a| json!({"name": a})),
            "unmapped": {"cordon.change": self.change.name()},
        })
    }
}

/// The schema of the `alert_events` table (without its `date` partition column).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("alert_id", DataType::Utf8, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("change", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("status_id", DataType::Int8, false),
        Field::new("assignee", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("actor_id", DataType::Utf8, false),
        Field::new("actor_name", DataType::Utf8, false),
        Field::new("ocsf", DataType::Utf8, false),
    ]))
}

/// Lifecycle events as one batch of [`schema`].
pub fn to_batch(events: &[LifecycleEvent]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let s = |f: &dyn Fn(&LifecycleEvent) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(
            events.iter().map(f).collect::<Vec<Option<String>>>(),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        s(&|e| Some(e.event_id.clone())),
        s(&|e| Some(e.alert_id.clone())),
        Arc::new(
            TimestampMillisecondArray::from(events.iter().map(|e| e.time_ms).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        s(&|e| Some(e.change.name().to_owned())),
        s(&|e| Some(e.change.status().0.to_owned())),
        Arc::new(Int8Array::from(
            events
                .iter()
                .map(|e| e.change.status().1)
                .collect::<Vec<_>>(),
        )),
        s(&|e| e.assignee.clone()),
        s(&|e| e.reason.clone()),
        s(&|e| Some(e.actor_id.clone())),
        s(&|e| Some(e.actor_name.clone())),
        s(&|e| Some(e.to_ocsf().to_string())),
    ];
    RecordBatch::try_new(schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_map_to_ocsf_activities_and_statuses() {
        let mut e = LifecycleEvent::new("a1", Change::Suppress, "key_1", "ana");
        e.reason = Some("known scanner".into());
        let o = e.to_ocsf();
        assert_eq!(o["activity_id"], 3);
        assert_eq!(o["type_uid"], 200403);
        assert_eq!(o["status_id"], 3);
        assert_eq!(o["finding_info"]["uid"], "a1");
        let a = LifecycleEvent::new("a1", Change::Assign, "key_1", "ana").to_ocsf();
        assert_eq!(
            (a["activity_id"].as_i64(), a["status_id"].as_i64()),
            (Some(2), Some(2))
        );
        assert!("close"
            .parse::<Change>()
            .unwrap_err()
            .contains("expected ack"));
        let b = to_batch(&[e]).unwrap();
        assert_eq!(b.num_rows(), 1);
    }
}
