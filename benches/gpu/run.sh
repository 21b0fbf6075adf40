#!/usr/bin/env bash
# Runs the CUDA tests, the benchmarks against PyTorch and a few real
# commands on a GPU machine, from binaries staged by benches/gpu/stage.sh.
# Device time is scarce (minutes per session), so every step has its own
# time limit and the steps are chosen on the command line, most important
# first:
#
#   bash benches/gpu/run.sh                 # tests tf32 bench fp32 tc profile
#   bash benches/gpu/run.sh tests bench t64 fp32 reproduce
#
# Steps: tests (the three CUDA test binaries, side by side), tf32 (bench
# with --conv-math tf32 against PyTorch's default, which also runs its
# convolutions on TF32: the like-for-like pair), profile (the
# CIFAR workloads' GPU time per kernel, bench --profile, FFMA, tc and tf32), sweep
# (tf32 and tc with other 128×128 thresholds), tc (the op
# tests and the benchmark with the tensor-core conv kernels,
# SPLITINV_CONV_TILE=tc), bench (splitinv bench --device cuda), compare
# (PyTorch CUDA eager on the same workloads), t64 (bench with every conv on
# the 64×64 tiles), fp32 (PyTorch without TF32 against bench's FP32
# numbers: the other like-for-like pair; after bench), demo, reproduce (CIFAR-10
# with the zoo's weights, limit $REPRODUCE_LIMIT s, default 400),
# reproduce_train (the same after training a fresh target with the zoo's
# recipe: the "training included" run; CONV_MATH=tf32 runs either with TF32
# convolutions, into its own folder). Both reproduce steps write under
# target/gpu-rc/ with --resume, so a step cut short by its limit goes on
# where it stopped when run again on the same (still warm) machine; the
# cells' own seconds add up to the whole run's time.
# Logs and results go to $OUT (or /tmp/out).
set -u
G=$PWD/.gpu
O=${OUT:-/tmp/out}; mkdir -p "$O"
exec > >(tee -a "$O/log.txt") 2>&1
T0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - T0 ))s]"; }
step() { local name=$1 lim=$2; shift 2; echo; echo "===== $name $(el)"; timeout -k 5 "$lim" "$@"; echo "===== $name rc=$? $(el)"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
# cudarc (cuda-12080) loads libnvrtc.so or libnvrtc.so.12: point both at
# whatever NVRTC the machine has (CUDA 13 ships libnvrtc.so.13).
NV=$(ls /usr/local/cuda/lib64/libnvrtc.so.1[0-9]* 2>/dev/null | grep -v builtins | sort | tail -1)
[ -z "$NV" ] && NV=$(find /usr /opt -name 'libnvrtc.so.1[0-9]*' 2>/dev/null | grep -v builtins | head -1)
echo "NVRTC: $NV"
mkdir -p /tmp/nvl && ln -sf "$NV" /tmp/nvl/libnvrtc.so.12 && ln -sf "$NV" /tmp/nvl/libnvrtc.so
export LD_LIBRARY_PATH=/tmp/nvl:$(dirname "$NV"):${LD_LIBRARY_PATH:-}
# cli_device runs the binary at the path it was built with.
built=$(strings "$G/cli_device" | grep -o -m1 '/[[:alnum:]_./-]*/target/release/splitinv' | head -1 || true)
[ -n "$built" ] && mkdir -p "$(dirname "$built")" && cp "$G/splitinv" "$built"
export SPLITINV_DATA=$G/data SPLITINV_REQUIRE_CUDA=1
S=$G/splitinv
RC=$PWD/target/gpu-rc
CM=${CONV_MATH:-fp32}   # the reproduce steps' --conv-math (CONV_MATH=tf32 for the TF32 run)
step info 20 $S info

tests() {
  # Separate processes, so they can share the GPU side by side; each log
  # comes back whole.
  # (A bare `wait` would also wait for the tee behind the log.)
  local pids=()
  timeout -k 5 150 $G/cuda_device --nocapture --test-threads=1 > "$O/t_cuda_device.txt" 2>&1 & pids+=($!)
  timeout -k 5 150 $G/ops_device cuda > "$O/t_ops_device.txt" 2>&1 & pids+=($!)
  timeout -k 5 150 $G/cli_device --nocapture > "$O/t_cli_device.txt" 2>&1 & pids+=($!)
  wait "${pids[@]}"
  for f in cuda_device ops_device cli_device; do
    echo "--- $f"; grep -E "^part |^test result|FAILED|panicked|failures:|^ok |skipped" "$O/t_$f.txt" | head -60
  done
  # $OUT brings back at most 8 files: one file for the three logs.
  for f in cuda_device ops_device cli_device; do echo "===== $f"; cat "$O/t_$f.txt"; done > "$O/tests.txt"
  rm -f "$O"/t_cuda_device.txt "$O"/t_ops_device.txt "$O"/t_cli_device.txt
}

for s in "${@:-tests tf32 bench fp32 tc profile}"; do for s in $s; do case $s in
  tests) echo; echo "===== tests $(el)"; tests; echo "===== tests done $(el)" ;;
  bench) step bench 140 sh -c "$S --device cuda bench --json > $O/bench_cuda.json"; head -c 3000 "$O/bench_cuda.json"; echo ;;
  tc) step ops_tc 120 sh -c "SPLITINV_CONV_TILE=tc $G/ops_device cuda > $O/t_ops_tc.txt 2>&1"; grep -E "^test result|FAILED|panicked" "$O/t_ops_tc.txt" | head -20
      step bench_tc 140 sh -c "SPLITINV_CONV_TILE=tc $S --device cuda bench --json > $O/bench_cuda_tc.json"; cat "$O/bench_cuda_tc.json" | cut -c1-110 ;;
  tf32) step bench_tf32 140 sh -c "$S --device cuda --conv-math tf32 bench --json > $O/bench_cuda_tf32.json"; cut -c1-110 "$O/bench_cuda_tf32.json"
      step compare_tf32 150 sh -c "PYTHONUNBUFFERED=1 python3 benches/compare_pytorch.py --device cuda --splitinv-json $O/bench_cuda_tf32.json | tee $O/compare_cuda_tf32.md" ;;
  profile) # Where each CIFAR workload's GPU time goes, per kernel and grid (into the log).
      step profile 150 $S --device cuda bench --quick --filter cifar --profile 10
      step profile_tf32 150 $S --device cuda --conv-math tf32 bench --quick --filter cifar --profile 10
      step profile_tc 150 env SPLITINV_CONV_TILE=tc $S --device cuda bench --quick --filter cifar --profile 10 ;;
  sweep) # The size rule's threshold with the tensor-core kernels: TF32 at 264, 132 (its default) and 66 blocks, 3xTF32 at 264 (default) and 132.
      for b in 264 132 66; do step sweep_tf32_$b 90 env SPLITINV_CONV_BIG_MIN_BLOCKS=$b $S --device cuda --conv-math tf32 bench --quick --filter cifar; done
      for b in 264 132; do step sweep_tc_$b 90 env SPLITINV_CONV_TILE=tc SPLITINV_CONV_BIG_MIN_BLOCKS=$b $S --device cuda bench --quick --filter cifar; done ;;
  t64) step bench_t64 140 sh -c "SPLITINV_CONV_TILE=64 $S --device cuda bench --json > $O/bench_cuda_t64.json" ;;
  compare) step compare 150 sh -c "PYTHONUNBUFFERED=1 python3 benches/compare_pytorch.py --device cuda --splitinv-json $O/bench_cuda.json | tee $O/compare_cuda.md" ;;
  fp32) step compare_fp32 90 sh -c "PYTHONUNBUFFERED=1 python3 benches/compare_pytorch.py --device cuda --no-tf32 --filter cifar --splitinv-json $O/bench_cuda.json | tee $O/compare_cuda_fp32.md" ;;
  demo) step demo 60 $S --device cuda demo --out /tmp/demo ;;
  reproduce) step reproduce_cifar10_$CM ${REPRODUCE_LIMIT:-400} $S --device cuda --conv-math $CM reproduce --dataset cifar10 --json --resume --out "$RC/zoo_$CM"
      cp "$RC/zoo_$CM/results.json" "$O/reproduce_zoo_$CM.json" 2>/dev/null; ls "$RC/zoo_$CM/cells" 2>/dev/null | wc -l ;;
  reproduce_train) step reproduce_train_$CM ${REPRODUCE_LIMIT:-400} $S --device cuda --conv-math $CM reproduce --dataset cifar10 --json --resume --weights "$RC/trained_$CM/cifar10cnn.safetensors" --out "$RC/trained_$CM"
      cp "$RC/trained_$CM/results.json" "$O/reproduce_trained_$CM.json" 2>/dev/null ;;
  *) echo "unknown step $s" ;;
esac; done; done
echo "done $(el)"
