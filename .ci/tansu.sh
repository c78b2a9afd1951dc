#!/usr/bin/env bash
# Builds the Kafka-protocol broker the tests and the Kafka bench run: tansu 0.6.0 (memory
# storage) with the four fixes below, installed as $TANSU_HOME/bin/tansu (default
# ~/.cache/cordon/tansu-0.6.0-indexed; with TANSU_FIXES=1, fix 1 alone, the broker the tests
# ran before, into ~/.cache/cordon/tansu-0.6.0-fetchfix). Skipped when that binary is already
# there.
#
# Fix 1, correctness: tansu 0.6.0's memory storage answers a fetch from offset N with the
# batches whose *first* offset is at least N. Apache Kafka answers with the batch that *holds*
# N (the client drops the records before N). So a consumer that resumes in the middle of a
# producer batch — as Cordon does after restoring a partition checkpoint — never sees the rest
# of that batch. Cordon's hand-over test caught it: records skipped after a restore, one alert
# missing. The fix starts the answer at the last batch that begins at or before N.
#
# Fix 2, cost: every fetch listed every batch of the partition in the object store (cloning
# each batch's path under the store's lock) to find where to start. A producer with
# `linger.ms=5` writes about 200 batches a second per partition, so within a 20 s run each
# fetch walked thousands of entries, several consumers fetch every few milliseconds, and the
# broker took most of a core at 20 000 events/s, its latency growing with the topic (`perf`
# on the broker: listing, path comparisons and page faults on top). Kafka finds the start in
# an offset index; so does this broker now: each partition's batch offsets are kept in memory,
# seeded by one listing at the partition's first fetch and extended by every produce after
# its batch is stored.
#
# Fix 3, duplicates: a partition's next read in the same fetch started at the requested offset
# plus the records returned, which, with fix 1, could fall inside a batch already in the answer,
# so that batch was sent twice (Cordon dropped and counted the repeats). It now starts past the
# last batch returned.
#
# Fix 4, latency: a fetch was answered only when `fetch.wait.max.ms` had passed, even with
# records waiting. Like Kafka, it is now answered as soon as it has records.
#
# About 15 to 30 minutes on a 2-core machine; the build directory is removed afterwards.
set -euo pipefail

version=0.6.0
# The tests and the bench run with all four (TANSU_FIXES=all, the default). TANSU_FIXES=1 builds
# the broker with fix 1 alone, to compare against (CORDON_TANSU=<its path>). With all four, the
# two-instance hand-over test once timed out 3 runs in 5: a partition restored at its end
# never reported a lag, because librdkafka's lag needs a committed offset. Cordon now reports
# the partition's end less its own next offset.
fixes="${TANSU_FIXES:-all}"
case "$fixes" in
  1) home="${TANSU_HOME:-$HOME/.cache/cordon/tansu-$version-fetchfix}" ;;
  all) home="${TANSU_HOME:-$HOME/.cache/cordon/tansu-$version-indexed}" ;;
  *) echo "TANSU_FIXES must be 1 or all, not $fixes" >&2; exit 2 ;;
esac
if [ -x "$home/bin/tansu" ]; then
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
for crate in tansu tansu-storage; do
  curl -fsSL --retry 3 "https://static.crates.io/crates/$crate/$crate-$version.crate" |
    tar -xzf -
done

python3 - "tansu-storage-$version/src" "$fixes" <<'EOF'
import sys
root = sys.argv[1]
full = sys.argv[2] == "all"
patched = {}

def patch(name, old, new):
    path = f"{root}/{name}"
    src = patched.get(path) or open(path).read()
    if src.count(old) != 1:
        sys.exit(f"{path}: the code to fix was not found (is this tansu 0.6.0?):\n{old}")
    patched[path] = src.replace(old, new)

# Fix 1: a fetch from offset N starts at the batch holding N.
patch(
    "dynostore.rs",
    "        for offset in offsets.split_off(&offset) {\n",
    "        // The batch holding `offset` may begin before it (Kafka returns it whole).\n"
    "        let first = offsets.range(..=offset).next_back().copied().unwrap_or(offset);\n"
    "        for offset in offsets.split_off(&first) {\n",
)
# Fixes 2 to 4 (and the second half of fix 1), with TANSU_FIXES=all.
if full:
    # ... but only when that batch does hold N: while a batch is being stored, the one before it
    # can be the last that begins at or before N, and it ends before N.
    patch(
        "dynostore.rs",
        "        for offset in offsets.split_off(&first) {\n",
        "        let wanted = offset;\n"
        "        for offset in offsets.split_off(&first) {\n",
    )
    patch(
        "dynostore.rs",
        "            batch.base_offset = offset;\n",
        "            batch.base_offset = offset;\n"
        "            if offset + i64::from(batch.last_offset_delta) < wanted {\n"
        "                continue;\n"
        "            }\n",
    )

    # Fix 2: an index of each partition's batch offsets, so a fetch does not list every batch.
    patch(
        "dynostore.rs",
        "    object_store: Arc<DynObjectStore>,\n}\n",
        "    object_store: Arc<DynObjectStore>,\n"
        "    /// Each partition's batch offsets: (seeded by a full listing, the offsets).\n"
        "    batches: Arc<Mutex<BTreeMap<Topition, (bool, BTreeSet<i64>)>>>,\n}\n",
    )
    patch(
        "dynostore.rs",
        "            watermarks: Arc::new(Mutex::new(BTreeMap::new())),\n",
        "            watermarks: Arc::new(Mutex::new(BTreeMap::new())),\n"
        "            batches: Arc::new(Mutex::new(BTreeMap::new())),\n",
    )
    # Every stored batch enters the index (creating the partition's entry if need be, so a
    # listing running concurrently cannot miss it).
    patch(
        "dynostore.rs",
        "                .inspect_err(|error| error!(?error, transaction_id, ?topition))?;\n\n"
        "            Ok(offset)\n",
        "                .inspect_err(|error| error!(?error, transaction_id, ?topition))?;\n\n"
        "            if let Ok(mut index) = self.batches.lock() {\n"
        "                _ = index.entry(topition.clone()).or_default().1.insert(offset);\n"
        "            }\n\n"
        "            Ok(offset)\n",
    )
    # A fetch reads the index once it is seeded; the first fetch of a partition lists and seeds.
    patch(
        "dynostore.rs",
        "        let mut offsets = BTreeSet::new();\n\n        if offset < high_watermark {\n",
        "        let mut offsets = BTreeSet::new();\n\n"
        "        let indexed = self.batches.lock().ok().and_then(|index| {\n"
        "            index.get(topition).filter(|(seeded, _)| *seeded).map(|(_, known)| {\n"
        "                let first = known.range(..=offset).next_back().copied().unwrap_or(offset);\n"
        "                if offset < high_watermark {\n"
        "                    known.range(first..high_watermark).copied().collect::<BTreeSet<i64>>()\n"
        "                } else {\n"
        "                    BTreeSet::new()\n"
        "                }\n"
        "            })\n"
        "        });\n"
        "        let seed = indexed.is_none() && offset < high_watermark;\n"
        "        if let Some(indexed) = indexed {\n"
        "            offsets = indexed;\n"
        "        } else if offset < high_watermark {\n",
    )
    patch(
        "dynostore.rs",
        "        let mut batches = vec![];\n\n        let mut bytes = max_bytes as u64;\n",
        "        if seed && let Ok(mut index) = self.batches.lock() {\n"
        "            let entry = index.entry(topition.clone()).or_default();\n"
        "            entry.0 = true;\n"
        "            entry.1.extend(offsets.iter().copied());\n"
        "        }\n\n"
        "        let mut batches = vec![];\n\n        let mut bytes = max_bytes as u64;\n",
    )
    # A batch the index names but the store no longer has (a deleted topic made again): forget
    # the partition's index, so the next fetch lists again.
    patch(
        "dynostore.rs",
        "            let get_result = self\n"
        "                .object_store\n"
        "                .get(&location)\n"
        "                .await\n",
        "            let get_result = self\n"
        "                .object_store\n"
        "                .get(&location)\n"
        "                .await\n"
        "                .inspect_err(|_| {\n"
        "                    if let Ok(mut index) = self.batches.lock() {\n"
        "                        _ = index.remove(topition);\n"
        "                    }\n"
        "                })\n",
    )
    patch(
        "dynostore.rs",
        "        if let Some(metadata) = self.topic_metadata(topic).await? {\n"
        "            self.meta\n",
        "        if let Some(metadata) = self.topic_metadata(topic).await? {\n"
        "            if let Ok(mut index) = self.batches.lock() {\n"
        "                index.retain(|t, _| t.topic() != metadata.topic.name.as_str());\n"
        "            }\n"
        "            self.meta\n",
    )

    # Fix 3: a partition's next read starts past the last batch returned. It used to add the
    # records' count to the requested offset, which lands inside a batch already sent whenever the
    # first batch began before the requested offset (fix 1): that batch was sent twice.
    patch(
        "service/fetch.rs",
        "            offset += fetched\n"
        "                .iter()\n"
        "                .map(|batch| batch.record_count as i64)\n"
        "                .sum::<i64>();\n",
        "            if let Some(last) = fetched.last() {\n"
        "                offset = offset.max(last.base_offset + i64::from(last.last_offset_delta) + 1);\n"
        "            }\n",
    )

    # Fix 4: answer as soon as records are there, as Kafka does, rather than always waiting
    # `fetch.wait.max.ms`.
    patch(
        "service/fetch.rs",
        "                sleep(if remaining.as_millis() >= 250 {\n",
        "                let found = responses.iter().any(|topic| {\n"
        "                    topic.partitions.iter().flatten().any(|partition| partition.records.is_some())\n"
        "                });\n"
        "                if found && bytes > min_bytes {\n"
        "                    break;\n"
        "                }\n\n"
        "                sleep(if remaining.as_millis() >= 250 {\n",
    )
for path, src in patched.items():
    open(path, "w").write(src)
EOF

cat >>"tansu-$version/Cargo.toml" <<EOF

[patch.crates-io]
tansu-storage = { path = "../tansu-storage-$version" }
EOF

# `cargo build` keeps the crate's Cargo.lock (only the patched package changes in it);
# `cargo install` would ignore it.
# TANSU_TARGET keeps the build directory (for working on these fixes: a rebuild is then quick).
target="${TANSU_TARGET:-$work/target}"
(cd "tansu-$version" && CARGO_TARGET_DIR="$target" cargo build --release --features dynostore --bin tansu)
mkdir -p "$home/bin"
cp "$target/release/tansu" "$home/bin/tansu.tmp"
mv "$home/bin/tansu.tmp" "$home/bin/tansu"
echo "tansu $version (fixes: $fixes) installed at $home/bin/tansu"
