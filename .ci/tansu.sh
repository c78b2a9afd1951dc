#!/usr/bin/env bash
# Builds the Kafka-protocol broker the tests and the Kafka bench run: tansu 0.6.0 (memory
# storage) with one fix, installed as $TANSU_HOME/bin/tansu (default
# ~/.cache/cordon/tansu-0.6.0-fetchfix). Skipped when that binary is already there.
#
# The fix: tansu 0.6.0's memory storage answers a fetch from offset N with the batches whose
# *first* offset is at least N. Apache Kafka answers with the batch that *holds* N (the client
# drops the records before N). So a consumer that resumes in the middle of a producer batch —
# as Cordon does after restoring a partition checkpoint — never sees the rest of that batch.
# Cordon's hand-over test caught it: records skipped after a restore, one alert missing. The
# fix starts the answer at the last batch that begins at or before N.
#
# About 15 to 30 minutes on a 2-core machine; the build directory is removed afterwards.
set -euo pipefail

version=0.6.0
home="${TANSU_HOME:-$HOME/.cache/cordon/tansu-$version-fetchfix}"
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

python3 - "tansu-storage-$version/src/dynostore.rs" <<'EOF'
import sys
path = sys.argv[1]
src = open(path).read()
old = "        for offset in offsets.split_off(&offset) {\n"
new = (
    "        // The batch holding `offset` may begin before it (Kafka returns it whole).\n"
    "        let first = offsets.range(..=offset).next_back().copied().unwrap_or(offset);\n"
    "        for offset in offsets.split_off(&first) {\n"
)
if src.count(old) != 1:
    sys.exit(f"{path}: the fetch loop to fix was not found (is this tansu {sys.argv[1]}?)")
open(path, "w").write(src.replace(old, new))
EOF

cat >>"tansu-$version/Cargo.toml" <<EOF

[patch.crates-io]
tansu-storage = { path = "../tansu-storage-$version" }
EOF

# `cargo build` keeps the crate's Cargo.lock (only the patched package changes in it);
# `cargo install` would ignore it.
(cd "tansu-$version" && CARGO_TARGET_DIR="$work/target" cargo build --release --features dynostore --bin tansu)
mkdir -p "$home/bin"
cp "$work/target/release/tansu" "$home/bin/tansu.tmp"
mv "$home/bin/tansu.tmp" "$home/bin/tansu"
echo "tansu $version (fetch fix) installed at $home/bin/tansu"
