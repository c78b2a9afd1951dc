//! Partition checkpoints: each assigned partition's engine state, written beside the offset
//! it reflects, as a chain of files (a full checkpoint, then deltas against it) under one head
//! per partition. The head is written last, so a reader sees the previous chain or the new
//! one, never half of one; a new chain starts when the old one holds mostly events the state
//! no longer needs, or has too many files for a quick restore.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context as _, Result};
use cordon_query::store::Location;

use super::KafkaStats;

/// The first bytes of every partition checkpoint head.
const CHECKPOINT_FORMAT: &str = "cordon-partition-checkpoint";
const CHECKPOINT_VERSION: u32 = 2;

/// The head of a partition's checkpoint: the offset the state reflects and the files of its
/// chain, oldest first (the state is the last full one's with the deltas after it applied;
/// every one holds events the state refers to; see [`cordon_detect::checkpoint`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointFile {
    format: String,
    version: u32,
    topic: String,
    partition: i32,
    offset: i64,
    parts: Vec<String>,
}

/// A partition's chain as this instance last wrote it.
#[derive(Default)]
struct Chain {
    /// The chain's files, oldest first.
    parts: Vec<String>,
    /// Bytes of events the chain's files hold (live or not).
    event_bytes: u64,
    /// The events the chain's checkpoints refer to.
    log: cordon_detect::checkpoint::EventLog,
    /// Bytes of the events the state holds, as far as the chain can tell: exact at its
    /// first (full) checkpoint; each delta adds its new events (it refers to the events its
    /// unchanged state held, so the log grows with the chain and cannot tell which died).
    live_bytes: u64,
    /// The copy of the engine the chain's last checkpoint was written from: the next one is
    /// a delta against it. It shares the rules' windows and partial matches with the engine
    /// until either changes one (a change copies that one).
    prev: Option<Box<cordon_detect::Engine>>,
    /// Start a new chain at the next checkpoint (after a restore, or a failed write).
    restart: bool,
    /// Files written whose head was not: deleted when the chain restarts.
    orphans: Vec<String>,
}

/// A new chain is started when the chain's files hold more than this many times the bytes
/// of the events the state holds (plus [`CHAIN_SLACK`]), or have this many files: a restore
/// reads every file of the chain and applies its deltas in turn.
const CHAIN_GROWTH: u64 = 2;
const CHAIN_SLACK: u64 = 8 << 20;
const CHAIN_FILES: usize = 64;

/// Where partition checkpoints live: the head at `<store>/<group>/<topic>/<partition>.ckpt`,
/// the chain's files beside it in `<partition>/`.
pub(super) struct CheckpointStore {
    location: Location,
    group: String,
    rt: tokio::runtime::Handle,
    /// By `topic/partition`: each partition's chain, as written by this instance.
    chains: Mutex<HashMap<String, Chain>>,
}

fn path_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What writing one partition checkpoint did.
pub(super) struct Saved {
    pub(super) bytes: usize,
    pub(super) events: usize,
    pub(super) restarted: bool,
    pub(super) largest: Vec<(String, usize)>,
}

impl CheckpointStore {
    /// A store at `location` for the consumer group `group`; its I/O runs on `rt`.
    pub(super) fn new(location: Location, group: String, rt: tokio::runtime::Handle) -> Self {
        CheckpointStore {
            location,
            group,
            rt,
            chains: Mutex::default(),
        }
    }

    fn name(&self, topic: &str, partition: i32) -> String {
        format!(
            "{}/{}/{partition}.ckpt",
            path_part(&self.group),
            path_part(topic)
        )
    }

    fn part_name(&self, topic: &str, partition: i32) -> String {
        format!(
            "{}/{}/{partition}/{}.part",
            path_part(&self.group),
            path_part(topic),
            ulid::Ulid::new()
        )
    }

    fn chains(&self) -> MutexGuard<'_, HashMap<String, Chain>> {
        self.chains.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the engine's state at `offset`: the events new since the chain's last file and
    /// the state into a new file of the chain (or of a new chain, when the old one holds
    /// mostly events no longer needed), then the head. A new chain's head replaces the old
    /// one's, whose files are then deleted.
    pub(super) fn save(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        engine: Box<cordon_detect::Engine>,
        stats: &KafkaStats,
    ) -> Result<Saved> {
        let key = format!("{topic}/{partition}");
        let mut chains = self.chains();
        let chain = chains.entry(key.clone()).or_default();
        let restart = chain.restart
            || chain.parts.is_empty()
            || chain.parts.len() >= CHAIN_FILES
            || chain.prev.is_none()
            || chain.event_bytes > CHAIN_GROWTH * chain.live_bytes + CHAIN_SLACK;
        let log = if restart {
            Default::default()
        } else {
            std::mem::take(&mut chain.log)
        };
        // Until this checkpoint is stored, a failure leaves the chain's log unknown: the
        // next checkpoint starts a new chain.
        chain.restart = true;
        let prev = chain.prev.take();
        let w = match prev.as_deref().filter(|_| !restart) {
            Some(prev) => engine.checkpoint_delta(prev, log),
            None => engine.checkpoint_with(log),
        }
        .with_context(|| format!("checkpointing {key}"))?;
        drop(prev);
        // In one call: the streaming encoder compresses block by block against the blocks
        // before (zstd's slower "extDict" path); one call took 0.72–1.09 of its time (median
        // 0.86) on 1 and 6 MiB of event JSON.
        let part = zstd::bulk::compress(&w.bytes, 1)?;
        cordon_detect::checkpoint::recycle(w.bytes);
        let part_name = self.part_name(topic, partition);
        let mut n = part.len();
        self.rt
            .block_on(self.location.put(&part_name, part))
            .with_context(|| format!("writing the checkpoint of {key}"))?;
        let mut parts = if restart {
            Vec::new()
        } else {
            chain.parts.clone()
        };
        parts.push(part_name.clone());
        let head = postcard::to_allocvec(&CheckpointFile {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            topic: topic.into(),
            partition,
            offset,
            parts: parts.clone(),
        })?;
        n += head.len();
        if let Err(e) = self
            .rt
            .block_on(self.location.put(&self.name(topic, partition), head))
        {
            chain.orphans.push(part_name);
            return Err(e).with_context(|| format!("writing the checkpoint of {key}"));
        }
        let retired = if restart {
            let mut old = std::mem::take(&mut chain.parts);
            old.append(&mut chain.orphans);
            old.sort();
            old.dedup();
            old
        } else {
            Vec::new()
        };
        chain.parts = parts;
        chain.event_bytes = if restart {
            chain.live_bytes = w.log.bytes();
            w.new_event_bytes
        } else {
            stats.checkpoint_deltas.fetch_add(1, Ordering::Relaxed);
            // A delta cannot tell which earlier events its unchanged state still holds; its
            // new ones are counted as held. A chain of deltas then ends at CHAIN_FILES, not
            // at the first 8 MiB of events: rewriting every held event then cost more than
            // the deltas saved (in the Kafka bench, a full rewrite every 7 s per partition).
            chain.live_bytes += w.new_event_bytes;
            chain.event_bytes + w.new_event_bytes
        };
        chain.log = w.log;
        chain.prev = Some(engine);
        chain.restart = false;
        drop(chains);
        for f in &retired {
            match self.rt.block_on(self.location.delete(f)) {
                Ok(()) => stats
                    .checkpoint_files_deleted
                    .fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(file = %f, error = %e, "an old checkpoint file was not deleted");
                    stats
                        .checkpoint_delete_failures
                        .fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        Ok(Saved {
            bytes: n,
            events: w.new_events,
            restarted: restart,
            largest: w.largest,
        })
    }

    /// This instance no longer owns the partition: its chain is the next owner's.
    pub(super) fn forget(&self, key: &str) {
        self.chains().remove(key);
    }

    /// `Ok(None)`: no checkpoint. `Err`: the store cannot be read (the caller must not go on
    /// without the state). A checkpoint that cannot be decoded is `Ok(Some(Err(..)))`; else
    /// the offset and the chain's files, oldest first, decompressed. The partition's next
    /// checkpoint starts a new chain, which retires these files.
    #[allow(clippy::type_complexity)]
    pub(super) fn load(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<std::result::Result<(i64, Vec<Vec<u8>>), String>>> {
        let name = self.name(topic, partition);
        let Some(bytes) = self
            .rt
            .block_on(self.location.get_opt(&name))
            .with_context(|| format!("reading the checkpoint of {topic}/{partition}"))?
        else {
            return Ok(None);
        };
        let head = match postcard::from_bytes::<CheckpointFile>(&bytes)
            .map_err(|e| format!("{name}: not a partition checkpoint ({e})"))
            .and_then(|f| {
                if f.format != CHECKPOINT_FORMAT || f.version != CHECKPOINT_VERSION {
                    return Err(format!(
                        "{name}: {:?} version {}, this Cordon reads {CHECKPOINT_FORMAT:?} version {CHECKPOINT_VERSION}",
                        f.format, f.version
                    ));
                }
                if f.topic != topic || f.partition != partition {
                    return Err(format!(
                        "{name}: holds {}/{}, not {topic}/{partition}",
                        f.topic, f.partition
                    ));
                }
                Ok(f)
            }) {
            Ok(h) => h,
            Err(e) => return Ok(Some(Err(e))),
        };
        let mut parts = Vec::with_capacity(head.parts.len());
        for p in &head.parts {
            let Some(raw) = self
                .rt
                .block_on(self.location.get_opt(p))
                .with_context(|| format!("reading the checkpoint of {topic}/{partition}"))?
            else {
                return Ok(Some(Err(format!("{name}: its file {p} is missing"))));
            };
            match zstd::decode_all(&raw[..]) {
                Ok(b) => parts.push(b),
                Err(e) => return Ok(Some(Err(format!("{p}: damaged ({e})")))),
            }
        }
        let mut chains = self.chains();
        let chain = chains.entry(format!("{topic}/{partition}")).or_default();
        // The files are retired when this instance's first checkpoint of the partition
        // (a new chain) is stored.
        chain.orphans.extend(head.parts);
        chain.restart = true;
        chain.prev = None;
        Ok(Some(Ok((head.offset, parts))))
    }
}
