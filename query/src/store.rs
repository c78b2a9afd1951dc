//! The alert store: alerts appended to Parquet files partitioned by day, Hive-style
//! (`alerts/date=YYYY-MM-DD/part-<ulid>.parquet`), each with its evidence events, so that
//! DataFusion (or DuckDB, Spark, anything that reads Parquet) can query them.
//!
//! Files are written whole to a temporary name in their partition and renamed into place, so
//! a crash never leaves a torn file where a reader looks (readers only see `*.parquet`).
//! Alerts are buffered and written in batches — on `flush`, when the buffer is full, or when
//! the store is dropped — since one small file per alert would make every query slow;
//! [`AlertStore::compact`] merges a partition's small files into one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Array, Int8Array, ListBuilder, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use cordon_detect::Alert;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Alerts buffered before a flush.
pub const DEFAULT_BATCH: usize = 4096;

/// A store error, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("alert store {path}: {message}")]
pub struct StoreError {
    /// The file or directory.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The schema of the `alerts` table (without its `date` partition column).
pub fn alerts_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("time", ts(), false),
        Field::new("first_seen", ts(), false),
        Field::new("rule_id", DataType::Utf8, false),
        Field::new("rule_version", DataType::Int32, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("severity_id", DataType::Int8, false),
        Field::new("agent_id", DataType::Utf8, true),
        Field::new("session_id", DataType::Utf8, true),
        Field::new("principal", DataType::Utf8, true),
        Field::new("target", DataType::Utf8, true),
        Field::new("event_count", DataType::Int32, false),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("playbook", DataType::Utf8, true),
        Field::new("message", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("baseline", DataType::Utf8, true),
        Field::new("ocsf", DataType::Utf8, false),
    ]))
}

/// The day (UTC) of a time in ms, as `YYYY-MM-DD`.
fn day(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| "1970-01-01".to_owned())
}

/// Alerts as one record batch of [`alerts_schema`].
pub fn to_batch(alerts: &[&Alert]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let s = |f: &dyn Fn(&Alert) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(
            alerts.iter().map(|a| f(a)).collect::<Vec<Option<String>>>(),
        ))
    };
    let last = |a: &Alert, f: cordon_ingest::CoreField| {
        a.events
            .iter()
            .rev()
            .find_map(|e| e.str(f))
            .map(str::to_owned)
    };
    let ts = |v: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
    };
    let mut tags = ListBuilder::new(StringBuilder::new());
    for a in alerts {
        for t in &a.tags {
            tags.values().append_value(t);
        }
        tags.append(true);
    }
    let ocsf: Vec<serde_json::Value> = alerts.iter().map(|a| a.to_ocsf()).collect();
    let columns: Vec<ArrayRef> = vec![
        s(&|a| Some(a.id.clone())),
        ts(alerts.iter().map(|a| a.last_seen_ms).collect()),
        ts(alerts.iter().map(|a| a.first_seen_ms).collect()),
        s(&|a| Some(a.rule_id.clone())),
        Arc::new(Int32Array::from(
            alerts
                .iter()
                .map(|a| i32::try_from(a.rule_version).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )),
        s(&|a| Some(a.title.clone())),
        s(&|a| Some(a.severity.name().to_owned())),
        Arc::new(Int8Array::from(
            alerts
                .iter()
                .map(|a| a.severity.ocsf_id() as i8)
                .collect::<Vec<_>>(),
        )),
        s(&|a| a.agent_id().map(str::to_owned)),
        s(&|a| a.session_id().map(str::to_owned)),
        s(&|a| last(a, cordon_ingest::CoreField::PrincipalSub)),
        s(&|a| last(a, cordon_ingest::CoreField::Target)),
        Arc::new(Int32Array::from(
            alerts
                .iter()
                .map(|a| a.events.len() as i32)
                .collect::<Vec<_>>(),
        )),
        Arc::new(tags.finish()),
        s(&|a| a.playbook.clone()),
        s(&|a| Some(a.message.clone())),
        Arc::new(StringArray::from(
            ocsf.iter()
                .map(|o| o["evidences"].to_string())
                .collect::<Vec<String>>(),
        )),
        Arc::new(StringArray::from(
            ocsf.iter()
                .map(|o| {
                    let b = &o["unmapped"]["cordon.baseline"];
                    (!b.is_null()).then(|| b.to_string())
                })
                .collect::<Vec<Option<String>>>(),
        )),
        Arc::new(StringArray::from(
            ocsf.iter().map(|o| o.to_string()).collect::<Vec<String>>(),
        )),
    ];
    RecordBatch::try_new(alerts_schema(), columns)
}

/// The alert store on a local directory.
#[derive(Debug)]
pub struct AlertStore {
    root: PathBuf,
    buffer: Vec<Alert>,
    batch: usize,
    written: u64,
    files: u64,
}

impl AlertStore {
    /// Opens (or creates) a store under `root`.
    pub fn open(root: &Path) -> Result<AlertStore, StoreError> {
        let alerts = root.join("alerts");
        std::fs::create_dir_all(&alerts).map_err(|e| err(&alerts, e))?;
        Ok(AlertStore {
            root: root.to_path_buf(),
            buffer: Vec::new(),
            batch: DEFAULT_BATCH,
            written: 0,
            files: 0,
        })
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the `alerts` table.
    pub fn alerts_dir(&self) -> PathBuf {
        self.root.join("alerts")
    }

    /// Alerts written to files, and files written.
    pub fn counts(&self) -> (u64, u64) {
        (self.written, self.files)
    }

    /// Adds an alert; writes a batch when the buffer is full.
    pub fn append(&mut self, alert: Alert) -> Result<(), StoreError> {
        self.buffer.push(alert);
        if self.buffer.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered alerts, one file per day partition.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut by_day: BTreeMap<String, Vec<&Alert>> = BTreeMap::new();
        for a in &self.buffer {
            by_day.entry(day(a.last_seen_ms)).or_default().push(a);
        }
        for (d, alerts) in &by_day {
            let batch = to_batch(alerts).map_err(|e| err(&self.root, e))?;
            write_file(&self.alerts_dir().join(format!("date={d}")), &[batch])?;
            self.files += 1;
        }
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Merges each partition's files into one when it has more than `min_files`. Returns
    /// the partitions compacted. The merged file is in place before the small ones go, so a
    /// reader never misses alerts (it may briefly see both, never neither).
    pub fn compact(&mut self, min_files: usize) -> Result<usize, StoreError> {
        self.flush()?;
        let mut done = 0;
        let dir = self.alerts_dir();
        let mut parts: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| err(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        parts.sort();
        for part in parts {
            let files = parquet_files(&part)?;
            if files.len() <= min_files.max(1) {
                continue;
            }
            let mut batches = Vec::new();
            for f in &files {
                let file = std::fs::File::open(f).map_err(|e| err(f, e))?;
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .and_then(|b| b.build())
                        .map_err(|e| err(f, e))?;
                for b in reader {
                    batches.push(b.map_err(|e| err(f, e))?);
                }
            }
            write_file(&part, &batches)?;
            for f in &files {
                std::fs::remove_file(f).map_err(|e| err(f, e))?;
            }
            done += 1;
        }
        Ok(done)
    }
}

impl Drop for AlertStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "alerts left unwritten");
        }
    }
}

/// The `*.parquet` files of a directory, sorted.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    out.sort();
    Ok(out)
}

/// Writes batches to a new file in `dir`: a temporary name, fsync, rename, fsync the
/// directory.
fn write_file(dir: &Path, batches: &[RecordBatch]) -> Result<PathBuf, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let name = format!("part-{}", ulid::Ulid::new());
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(format!("{name}.parquet"));
    let file = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let schema = batches.first().map_or_else(alerts_schema, |b| b.schema());
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| err(&tmp, e))?;
    for b in batches {
        w.write(b).map_err(|e| err(&tmp, e))?;
    }
    let file = w.into_inner().map_err(|e| err(&tmp, e))?;
    file.sync_all().map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| err(&dst, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(dst)
}
