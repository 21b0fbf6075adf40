#!/usr/bin/env bash
# Builds the release binaries and CUDA test binaries and stages them, with
# the datasets, into .gpu/ (git-ignored via .git/info/exclude), for a
# machine with a GPU but no Rust toolchain. Then, on that machine, from the
# repository root: `bash benches/gpu/run.sh` (results under $OUT or /tmp/out).
#
#   bash benches/gpu/stage.sh [DATA_DIR]      # DATA_DIR default ../shared/data
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/data
cargo build --release
strip -o .gpu/splitinv target/release/splitinv
# The CUDA tests (memory.rs and optim_no_alloc.rs are CPU-only: CI runs them).
for t in cuda_device ops_device cli_device; do
  exe=$(cargo test --release --no-run --test "$t" --message-format=json 2>/dev/null |
        T="$t" python3 -c 'import os, sys, json
for l in sys.stdin:
    m = json.loads(l)
    tg = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and tg.get("name") == os.environ["T"] and "test" in tg.get("kind", []):
        print(m["executable"])' | tail -1)
  [ -n "$exe" ] || { echo "no test binary for $t" >&2; exit 1; }
  strip -o ".gpu/$t" "$exe"
done
cp -r "$data/mnist" "$data/cifar10" .gpu/data/
du -sh .gpu
