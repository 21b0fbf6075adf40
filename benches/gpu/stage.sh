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
for t in cuda_device ops_device cli_device memory optim_no_alloc; do
  exe=$(cargo test --release --no-run --test "$t" --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])' | tail -1)
  strip -o ".gpu/$t" "$exe"
done
cp -r "$data/mnist" "$data/cifar10" .gpu/data/
du -sh .gpu
