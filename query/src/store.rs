//! The alert store: alerts (each with its evidence events) and their lifecycle events
//! appended to Parquet files partitioned by day, Hive-style
//! (`alerts/date=YYYY-MM-DD/part-<ulid>.parquet`, `alert_events/date=…/…`), so that DataFusion
//! (or DuckDB, Spark, anything that reads Parquet) can query them — on a local directory or
//! any object store URL (`s3://bucket/prefix`, `memory:///`), so that several instances can
//! share one store.
//!
//! Files are written whole and then made visible in one step — on a local disk a temporary
//! name, fsync and rename; on an object store a single PUT — so a crash never leaves a torn
//! file where a reader looks (readers only see `*.parquet`). Alerts are buffered and written
//! in batches: when the buffer is full, and by a background flusher at most
//! [`DEFAULT_FLUSH_INTERVAL`] after an alert arrived, so a new alert is queryable within about
//! a second without one file per alert. The price is small files under a trickle of alerts:
//! a partition that has received [`DEFAULT_AUTO_COMPACT`] files since its last compaction is
//! compacted (its files merged into one) by the flusher, and `cordon store compact` does the
//! same on demand.
//!
//! Why files every second rather than a second in-memory table next to the files: a query
//! over "files ∪ memory" sees an alert twice (or not at all) when a flush lands between the
//! two reads, and a separate `cordon serve` process could not see the memory at all. Writing
//! through keeps one source of truth that every process and instance reads.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The longest an alert waits in memory before it is written.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Files a partition receives before the flusher compacts it.
pub const DEFAULT_AUTO_COMPACT: usize = 64;

/// The tables of a store, each a directory of day partitions.
pub const TABLES: [&str; 2] = ["alerts", "alert_events"];

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
pub fn day(ms: i64) -> String {
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
    // Each alert's finding is written once; its evidences and baseline columns are slices of
    // that text.
    let ocsf: Vec<cordon_detect::OcsfText> = alerts.iter().map(|a| a.render_ocsf()).collect();
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
        Arc::new(StringArray::from_iter_values(
            ocsf.iter().map(cordon_detect::OcsfText::evidences),
        )),
        Arc::new(StringArray::from_iter(
            ocsf.iter().map(cordon_detect::OcsfText::baseline),
        )),
        Arc::new(StringArray::from_iter_values(
            ocsf.iter().map(|o| o.json.as_str()),
        )),
    ];
    RecordBatch::try_new(alerts_schema(), columns)
}

/// Where a store lives: a local directory or an object store.
#[derive(Clone, Debug)]
pub enum Location {
    /// A directory on this machine.
    Local(PathBuf),
    /// An object store (`s3://bucket/prefix`, `memory:///`, …).
    Object {
        /// The store.
        store: Arc<dyn object_store::ObjectStore>,
        /// The URL of the store's root (the scheme and bucket), for DataFusion.
        base: url::Url,
        /// The prefix of the alert store inside it.
        prefix: object_store::path::Path,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Object { base, prefix, .. } => write!(f, "{base}{prefix}"),
        }
    }
}

fn obj_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: what.to_owned(),
        message: e.to_string(),
    }
}

impl Location {
    /// A path, or a URL with a scheme the `object_store` crate knows. Object store options
    /// (credentials, endpoint, region) come from the environment (`AWS_*`, `GOOGLE_*`,
    /// `AZURE_*`), never from the URL, so they stay out of logs.
    pub fn parse(s: &str) -> Result<Location, StoreError> {
        if let Some(p) = s.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(p)));
        }
        let url = match url::Url::parse(s) {
            // One-letter schemes are Windows drive letters, not URLs.
            Ok(u) if u.scheme().len() > 1 => u,
            _ => return Ok(Location::Local(PathBuf::from(s))),
        };
        let env = std::env::vars().filter(|(k, _)| {
            ["AWS_", "GOOGLE_", "AZURE_", "OBJECT_STORE_"]
                .iter()
                .any(|p| k.starts_with(p))
        });
        let (store, prefix) = object_store::parse_url_opts(&url, env).map_err(|e| {
            obj_err(
                s,
                format!(
                    "{e} (expected a directory or an object store URL such as s3://bucket/prefix)"
                ),
            )
        })?;
        let mut base = url.clone();
        base.set_path("/");
        base.set_query(None);
        Ok(Location::Object {
            store: Arc::from(store),
            base,
            prefix,
        })
    }

    /// The URL DataFusion lists a table under (ends with `/`).
    pub fn table_url(&self, table: &str) -> String {
        match self {
            Location::Local(p) => {
                let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                format!("{}/", abs.join(table).display())
            }
            Location::Object { base, prefix, .. } => {
                let p = prefix.as_ref();
                if p.is_empty() {
                    format!("{base}{table}/")
                } else {
                    format!("{base}{p}/{table}/")
                }
            }
        }
    }

    /// The object store DataFusion must know to read this location, if not the local disk.
    pub fn object_store(&self) -> Option<(url::Url, Arc<dyn object_store::ObjectStore>)> {
        match self {
            Location::Local(_) => None,
            Location::Object { store, base, .. } => Some((base.clone(), store.clone())),
        }
    }

    fn object_path(prefix: &object_store::path::Path, rel: &str) -> object_store::path::Path {
        let mut p = prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Makes sure the tables' directories exist (local) — an object store needs nothing.
    pub fn create(&self) -> Result<(), StoreError> {
        if let Location::Local(root) = self {
            for t in TABLES {
                let d = root.join(t);
                std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
            }
        }
        Ok(())
    }

    /// Writes a whole file at `rel` (`table/date=…/part-….parquet`) so that it appears at once.
    pub async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Location::Local(root) => {
                let dst = root.join(rel);
                let dir = dst.parent().map_or_else(|| root.clone(), Path::to_path_buf);
                std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
                let name = dst
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = dir.join(format!(".{name}.tmp"));
                {
                    use std::io::Write as _;
                    let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
                    f.write_all(&bytes).map_err(|e| err(&tmp, e))?;
                    f.sync_all().map_err(|e| err(&tmp, e))?;
                }
                std::fs::rename(&tmp, &dst).map_err(|e| err(&dst, e))?;
                if let Ok(d) = std::fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            Location::Object { store, prefix, .. } => {
                use object_store::ObjectStoreExt as _;
                let path = Self::object_path(prefix, rel);
                store
                    .put(&path, bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| obj_err(path.as_ref(), e))
            }
        }
    }

    /// The `*.parquet` files under `rel` (a table or a partition), as relative paths, sorted.
    pub async fn list(&self, rel: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_modified(rel)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// [`Location::list`] with each file's last modification (ms since the epoch; 0 when
    /// the file system does not say).
    pub async fn list_modified(&self, rel: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let mut out = Vec::new();
        match self {
            Location::Local(root) => {
                let mut stack = vec![root.join(rel)];
                while let Some(dir) = stack.pop() {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(err(&dir, e)),
                    };
                    for e in entries.filter_map(Result::ok) {
                        let p = e.path();
                        if p.is_dir() {
                            stack.push(p);
                        } else if p.extension().is_some_and(|x| x == "parquet") {
                            if let Ok(r) = p.strip_prefix(root) {
                                let modified = e
                                    .metadata()
                                    .and_then(|m| m.modified())
                                    .ok()
                                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                    .map_or(0, |d| d.as_millis() as i64);
                                out.push((r.to_string_lossy().replace('\\', "/"), modified));
                            }
                        }
                    }
                }
            }
            Location::Object { store, prefix, .. } => {
                use futures::TryStreamExt as _;
                let dir = Self::object_path(prefix, rel);
                let metas: Vec<object_store::ObjectMeta> = store
                    .list(Some(&dir))
                    .try_collect()
                    .await
                    .map_err(|e| obj_err(dir.as_ref(), e))?;
                let skip = prefix.as_ref().len() + usize::from(!prefix.as_ref().is_empty());
                for m in metas {
                    let p = m.location.as_ref();
                    if p.ends_with(".parquet") && p.len() > skip {
                        out.push((p[skip..].to_owned(), m.last_modified.timestamp_millis()));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads a whole file.
    pub async fn get(&self, rel: &str) -> Result<bytes::Bytes, StoreError> {
        match self {
            Location::Local(root) => {
                let p = root.join(rel);
                std::fs::read(&p).map(Into::into).map_err(|e| err(&p, e))
            }
            Location::Object { store, prefix, .. } => {
                use object_store::ObjectStoreExt as _;
                let path = Self::object_path(prefix, rel);
                let r = store
                    .get(&path)
                    .await
                    .map_err(|e| obj_err(path.as_ref(), e))?;
                r.bytes().await.map_err(|e| obj_err(path.as_ref(), e))
            }
        }
    }

    /// Reads a whole file, or `None` when there is none.
    pub async fn get_opt(&self, rel: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        match self {
            Location::Local(root) => {
                let p = root.join(rel);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b.into())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(err(&p, e)),
                }
            }
            Location::Object { store, prefix, .. } => {
                use object_store::ObjectStoreExt as _;
                let path = Self::object_path(prefix, rel);
                match store.get(&path).await {
                    Ok(r) => r
                        .bytes()
                        .await
                        .map(Some)
                        .map_err(|e| obj_err(path.as_ref(), e)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(obj_err(path.as_ref(), e)),
                }
            }
        }
    }

    /// Deletes a file.
    pub async fn delete(&self, rel: &str) -> Result<(), StoreError> {
        match self {
            Location::Local(root) => {
                let p = root.join(rel);
                std::fs::remove_file(&p).map_err(|e| err(&p, e))
            }
            Location::Object { store, prefix, .. } => {
                use object_store::ObjectStoreExt as _;
                let path = Self::object_path(prefix, rel);
                store
                    .delete(&path)
                    .await
                    .map_err(|e| obj_err(path.as_ref(), e))
            }
        }
    }

    /// Appends batches as a new file in `table`'s partition for `day`; returns its path.
    pub async fn append(
        &self,
        table: &str,
        day: &str,
        batches: &[RecordBatch],
    ) -> Result<String, StoreError> {
        let rel = format!("{table}/date={day}/part-{}.parquet", ulid::Ulid::new());
        let bytes = encode(batches).map_err(|e| obj_err(&rel, e))?;
        self.put(&rel, bytes).await?;
        Ok(rel)
    }

    /// Appends lifecycle events (durably, before returning), one file per day they fall on.
    pub async fn append_lifecycle(
        &self,
        events: &[crate::lifecycle::LifecycleEvent],
    ) -> Result<(), StoreError> {
        let mut by_day: BTreeMap<String, Vec<crate::lifecycle::LifecycleEvent>> = BTreeMap::new();
        for e in events {
            by_day.entry(day(e.time_ms)).or_default().push(e.clone());
        }
        for (d, evs) in by_day {
            let batch = crate::lifecycle::to_batch(&evs).map_err(|e| obj_err("alert_events", e))?;
            self.append("alert_events", &d, &[batch]).await?;
        }
        Ok(())
    }

    /// Merges the files of each partition of each table that has more than `min_files` into
    /// one. The merged file is in place before the small ones go, so a reader never misses
    /// rows (it may briefly see both, never neither). Returns the partitions compacted.
    pub async fn compact(&self, min_files: usize) -> Result<usize, StoreError> {
        let mut done = 0;
        for table in TABLES {
            let mut parts: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for f in self.list(table).await? {
                if let Some((dir, _)) = f.rsplit_once('/') {
                    parts.entry(dir.to_owned()).or_default().push(f);
                }
            }
            for (dir, files) in parts {
                if files.len() > min_files.max(1) {
                    self.compact_files(&dir, &files).await?;
                    done += 1;
                }
            }
        }
        Ok(done)
    }

    /// Merges `files` into one, keeping one row per id (`alert_id`, `event_id`): two
    /// instances sharing the store can, rarely, both write one alert (a replay racing the
    /// other's write); the copies are the same alert, so the first is kept.
    async fn compact_files(&self, dir: &str, files: &[String]) -> Result<String, StoreError> {
        let mut batches = Vec::new();
        let mut ids: std::collections::HashSet<String> = std::collections::HashSet::new();
        for f in files {
            let bytes = self.get(f).await?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(|e| obj_err(f, e))?;
            for b in reader {
                let b = b.map_err(|e| obj_err(f, e))?;
                let key = ["alert_id", "event_id"]
                    .iter()
                    .find_map(|k| b.column_by_name(k))
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
                let Some(key) = key else {
                    batches.push(b);
                    continue;
                };
                let keep: arrow::array::BooleanArray = key
                    .iter()
                    .map(|id| Some(id.is_none_or(|id| ids.insert(id.to_owned()))))
                    .collect();
                let b =
                    arrow::compute::filter_record_batch(&b, &keep).map_err(|e| obj_err(f, e))?;
                batches.push(b);
            }
        }
        let rel = format!("{dir}/part-{}.parquet", ulid::Ulid::new());
        let bytes = encode(&batches).map_err(|e| obj_err(&rel, e))?;
        self.put(&rel, bytes).await?;
        for f in files {
            self.delete(f).await?;
        }
        Ok(rel)
    }
}

/// Batches as the bytes of one Parquet file (Snappy).
fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let schema = batches.first().map_or_else(alerts_schema, |b| b.schema());
    let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.into_inner()
}

/// Counters of a store.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StoreStats {
    /// Alerts written to files.
    pub alerts_written: u64,
    /// Files written.
    pub files_written: u64,
    /// Partitions compacted by the flusher.
    pub compactions: u64,
    /// Flushes that failed (the alerts stay buffered and are retried).
    pub flush_errors: u64,
    /// Alerts waiting in memory.
    pub buffered: u64,
    /// Alerts not written because the store already had their id (a replay).
    pub duplicates: u64,
}

struct Shared {
    location: Location,
    rt: Option<tokio::runtime::Runtime>,
    pending: Mutex<Vec<Alert>>,
    oldest: Mutex<Option<Instant>>,
    /// Serialises flushes (the pipeline's and the flusher's).
    writing: Mutex<HashMap<String, Vec<String>>>,
    auto_compact: usize,
    written: AtomicU64,
    files: AtomicU64,
    compactions: AtomicU64,
    flush_errors: AtomicU64,
    buffered: AtomicU64,
    duplicates: AtomicU64,
    /// Ids of the alerts written or buffered lately, for dedupe on replay.
    seen: Mutex<Seen>,
    stop: AtomicBool,
}

/// Recently stored alert ids, bounded: a replay after a crash or a Kafka rebalance raises the
/// same alerts again (ids derive from the rule and the evidence events), and the store keeps
/// one row per alert.
#[derive(Default)]
struct Seen {
    ids: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

/// Alert ids remembered for dedupe (about 160 bytes each with the set and the order).
pub const DEDUPE_IDS: usize = 200_000;

/// How far back (wall clock, before the newest file) [`AlertStore::remember_recent`] reads
/// alert ids: longer than a checkpoint interval plus a session timeout and a rebalance, the
/// span of alerts a dead instance wrote that its partitions' next owner raises again.
pub const REPLAY_WINDOW_MS: i64 = 15 * 60 * 1000;

impl Seen {
    /// Records an id; false when it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= DEDUPE_IDS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

impl Shared {
    /// Loads the ids of the alerts a replay can raise again: those of the files written
    /// within [`REPLAY_WINDOW_MS`] of the newest file (wall clock: what another instance
    /// wrote since its last checkpoint before it died, whatever the alerts' event dates —
    /// partitions run at different points in event time), and those of the latest two day
    /// partitions (by name).
    fn remember_recent(&self) -> Result<(), StoreError> {
        // A file listed can be gone when read: another instance compacted it into a new file
        // the listing may have missed. Then list again (a few times at most). A file that
        // cannot be read does not stop the others from being read.
        let mut failed = None;
        for _ in 0..3 {
            let mut vanished = false;
            let files = self.block_on(self.location.list_modified("alerts"))?;
            let mut days: Vec<&str> = files
                .iter()
                .filter_map(|(f, _)| f.rsplit_once('/').map(|(d, _)| d))
                .collect();
            days.sort_unstable();
            days.dedup();
            let recent: Vec<&str> = days.iter().rev().take(2).copied().collect();
            let newest = files.iter().map(|(_, t)| *t).max().unwrap_or(0);
            for (f, _) in files.iter().filter(|(f, t)| {
                *t >= newest - REPLAY_WINDOW_MS
                    || recent.iter().any(|d| f.starts_with(&format!("{d}/")))
            }) {
                match self.block_on(self.location.get_opt(f)) {
                    Ok(Some(bytes)) => {
                        if let Err(e) = self.remember_file(f, bytes) {
                            failed.get_or_insert(e);
                        }
                    }
                    Ok(None) => vanished = true,
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if !vanished {
                break;
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Adds the alert ids of one Parquet file to the remembered ones.
    fn remember_file(&self, f: &str, bytes: bytes::Bytes) -> Result<(), StoreError> {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| obj_err(f, e))?;
        let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), ["alert_id"]);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for b in builder
            .with_projection(mask)
            .build()
            .map_err(|e| obj_err(f, e))?
        {
            let b = b.map_err(|e| obj_err(f, e))?;
            if let Some(ids) = b.column(0).as_any().downcast_ref::<StringArray>() {
                for id in ids.iter().flatten() {
                    seen.insert(id);
                }
            }
        }
        Ok(())
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => futures::executor::block_on(f),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut since_compact = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let alerts = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        *self.oldest.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if alerts.is_empty() {
            return Ok(());
        }
        let mut by_day: BTreeMap<String, Vec<&Alert>> = BTreeMap::new();
        for a in &alerts {
            by_day.entry(day(a.last_seen_ms)).or_default().push(a);
        }
        let mut written_days: std::collections::HashSet<String> = std::collections::HashSet::new();
        let result = (|| {
            for (d, day_alerts) in &by_day {
                let batch = to_batch(day_alerts).map_err(|e| obj_err("alerts", e))?;
                let rel = self.block_on(self.location.append("alerts", d, &[batch]))?;
                written_days.insert(d.clone());
                self.files.fetch_add(1, Ordering::Relaxed);
                // Only this writer's own files are merged: several instances may share a
                // store, and two compacting the same files would each write the rows again.
                let own = since_compact.entry(d.clone()).or_default();
                own.push(rel);
                if self.auto_compact > 0 && own.len() >= self.auto_compact {
                    let dir = format!("alerts/date={d}");
                    let merged = self.block_on(self.location.compact_files(&dir, own))?;
                    *own = vec![merged];
                    self.compactions.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.written
                    .fetch_add(alerts.len() as u64, Ordering::Relaxed);
                self.buffered
                    .fetch_sub(alerts.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Keep the alerts of the days not written for the next flush: nothing is
                // dropped on a failed write, and nothing written is written again.
                self.flush_errors.fetch_add(1, Ordering::Relaxed);
                let (done, mut alerts): (Vec<Alert>, Vec<Alert>) = alerts
                    .into_iter()
                    .partition(|a| written_days.contains(&day(a.last_seen_ms)));
                self.written.fetch_add(done.len() as u64, Ordering::Relaxed);
                self.buffered
                    .fetch_sub(done.len() as u64, Ordering::Relaxed);
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                alerts.append(&mut p);
                *p = alerts;
                *self.oldest.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Err(e)
            }
        }
    }
}

/// A handle that reads a store's counters from another thread.
#[derive(Clone)]
pub struct StatsHandle(Arc<Shared>);

impl StatsHandle {
    /// The counters now.
    pub fn stats(&self) -> StoreStats {
        let s = &self.0;
        StoreStats {
            alerts_written: s.written.load(Ordering::Relaxed),
            files_written: s.files.load(Ordering::Relaxed),
            compactions: s.compactions.load(Ordering::Relaxed),
            flush_errors: s.flush_errors.load(Ordering::Relaxed),
            buffered: s.buffered.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// The alert store's writer: buffers alerts and writes them in batches, with a background
/// flusher that writes an alert at most a flush interval after it arrived.
pub struct AlertStore {
    shared: Arc<Shared>,
    batch: usize,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for AlertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertStore")
            .field("location", &self.shared.location.to_string())
            .finish()
    }
}

impl AlertStore {
    /// Opens (or creates) a store in a local directory, flushing every second.
    pub fn open(root: &Path) -> Result<AlertStore, StoreError> {
        AlertStore::open_at(
            Location::Local(root.to_path_buf()),
            Some(DEFAULT_FLUSH_INTERVAL),
        )
    }

    /// Opens a store at a location; `flush_interval` `None` writes only when the buffer is
    /// full or on [`AlertStore::flush`].
    pub fn open_at(
        location: Location,
        flush_interval: Option<Duration>,
    ) -> Result<AlertStore, StoreError> {
        location.create()?;
        let rt = match &location {
            Location::Local(_) => None,
            Location::Object { .. } => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| obj_err("runtime", e))?,
            ),
        };
        let shared = Arc::new(Shared {
            location,
            rt,
            pending: Mutex::new(Vec::new()),
            oldest: Mutex::new(None),
            writing: Mutex::new(HashMap::new()),
            auto_compact: DEFAULT_AUTO_COMPACT,
            written: AtomicU64::new(0),
            files: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            flush_errors: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            seen: Mutex::new(Seen::default()),
            stop: AtomicBool::new(false),
        });
        shared.remember_recent()?;
        let flusher = flush_interval.map(|every| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("cordon-store-flush".into())
                .spawn(move || {
                    let tick = (every / 4).max(Duration::from_millis(10));
                    while !s.stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(tick);
                        let due = s
                            .oldest
                            .lock()
                            .map(|o| o.is_some_and(|t| t.elapsed() >= every))
                            .unwrap_or(false);
                        if due {
                            if let Err(e) = s.flush() {
                                tracing::error!(error = %e, "alert store flush failed; retrying");
                            }
                        }
                    }
                })
        });
        let flusher = flusher
            .transpose()
            .map_err(|e| obj_err("flusher thread", e))?;
        Ok(AlertStore {
            shared,
            batch: DEFAULT_BATCH,
            flusher,
        })
    }

    /// Loads the ids of recently written alerts again (files written within
    /// [`REPLAY_WINDOW_MS`] of the newest one, and the latest two day partitions), so alerts
    /// another instance stored meanwhile (before a Kafka partition moved here) are not stored
    /// twice when their events are replayed.
    pub fn remember_recent(&self) -> Result<(), StoreError> {
        self.shared.remember_recent()
    }

    /// Where the store is.
    pub fn location(&self) -> &Location {
        &self.shared.location
    }

    /// Alerts written to files, and files written.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.stats();
        (s.alerts_written, s.files_written)
    }

    /// The store's counters.
    pub fn stats(&self) -> StoreStats {
        self.stats_handle().stats()
    }

    /// A handle to read the counters from elsewhere.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.shared.clone())
    }

    /// Adds an alert (unless the store already has its id: a replay); writes a batch when the
    /// buffer is full.
    pub fn append(&self, alert: Alert) -> Result<(), StoreError> {
        if !self
            .shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(&alert.id)
        {
            self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let full = {
            let mut p = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            p.push(alert);
            if p.len() == 1 {
                *self.shared.oldest.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now());
            }
            p.len() >= self.batch
        };
        self.shared.buffered.fetch_add(1, Ordering::Relaxed);
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered alerts, one file per day partition. Takes `&self`: alerts can be
    /// appended while a flush writes (they go in the next one).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush()
    }

    /// Merges each partition's files (of every table) into one when it has more than
    /// `min_files`. Returns the partitions compacted.
    pub fn compact(&mut self, min_files: usize) -> Result<usize, StoreError> {
        self.flush()?;
        let mut writing = self
            .shared
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The files this writer would merge next are merged now.
        writing.clear();
        self.shared
            .block_on(self.shared.location.compact(min_files))
    }
}

impl Drop for AlertStore {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(f) = self.flusher.take() {
            f.thread().unpark();
            let _ = f.join();
        }
        if let Err(e) = self.shared.flush() {
            tracing::error!(error = %e, "alerts left unwritten");
        }
    }
}

/// The `*.parquet` files of a local directory, sorted.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    out.sort();
    Ok(out)
}
