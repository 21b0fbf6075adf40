#!/usr/bin/env bash
# Runs the CUDA tests, the benchmarks against PyTorch and a few real
# commands on a GPU machine, from binaries staged by benches/gpu/stage.sh.
# Every step has its own time limit; the log goes to $OUT/log.txt.
set -u
G=$PWD/.gpu
O=${OUT:-/tmp/out}; mkdir -p "$O"
exec > >(tee -a "$O/log.txt") 2>&1
T0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - T0 ))s]"; }
step() { local name=$1 lim=$2; shift 2; echo; echo "===== $name $(el)"; timeout -k 5 "$lim" "$@"; echo "===== $name rc=$? $(el)"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
# cudarc (cuda-12080) loads libnvrtc.so or libnvrtc.so.12: point both at
# whatever NVRTC the machine has (CUDA 13 ships libnvrtc.so.13).
NV=$(ls /usr/local/cuda/lib64/libnvrtc.so.1[0-9]* 2>/dev/null | grep -v builtins | sort | tail -1)
[ -z "$NV" ] && NV=$(find /usr /opt -name 'libnvrtc.so.1[0-9]*' 2>/dev/null | grep -v builtins | head -1)
mkdir -p /tmp/nvl && ln -sf "$NV" /tmp/nvl/libnvrtc.so.12 && ln -sf "$NV" /tmp/nvl/libnvrtc.so
export LD_LIBRARY_PATH=/tmp/nvl:$(dirname "$NV"):${LD_LIBRARY_PATH:-}
# cli_device runs the binary at the path it was built with.
built=$(strings "$G/cli_device" | grep -o -m1 '/[[:alnum:]_./-]*/target/release/splitinv' | head -1 || true)
[ -n "$built" ] && mkdir -p "$(dirname "$built")" && cp "$G/splitinv" "$built"
export SPLITINV_DATA=$G/data SPLITINV_REQUIRE_CUDA=1
S=$G/splitinv
step info 30 $S info
step cuda_device 120 $G/cuda_device --nocapture
step ops_device 200 $G/ops_device cuda
step cli_device 120 $G/cli_device
step memory 120 $G/memory --nocapture
step optim_no_alloc 120 $G/optim_no_alloc
step bench 150 sh -c "$S --device cuda bench --json > $O/bench_cuda.json"
# The same workloads with every conv forced onto the 64×64 kernels: the
# comparison that says whether the size rule's 128×128 choice pays off.
step bench_t64 150 sh -c "SPLITINV_CONV_TILE=64 $S --device cuda bench --json > $O/bench_cuda_t64.json"
step compare 150 sh -c "python3 benches/compare_pytorch.py --device cuda --splitinv-json $O/bench_cuda.json | tee $O/compare_cuda.md"
step compare_fp32 90 sh -c "python3 benches/compare_pytorch.py --device cuda --no-tf32 --filter cifar --splitinv-json $O/bench_cuda.json | tee $O/compare_cuda_fp32.md"
step demo 90 $S --device cuda demo --out /tmp/demo
step reproduce_cifar10 ${REPRODUCE_LIMIT:-400} $S --device cuda reproduce --dataset cifar10 --json --out /tmp/rc
echo "done $(el)"
