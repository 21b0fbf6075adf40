#!/usr/bin/env python3
"""Time splitinv's standard workloads in PyTorch and compare with `splitinv bench`.

Same workloads, same shapes, same optimiser settings, same thread count, in the
same run:

    python3 benches/compare_pytorch.py --threads 2            # CPU
    python3 benches/compare_pytorch.py --device cuda          # GPU (eager)
    python3 benches/compare_pytorch.py --device cuda --no-tf32   # GPU, cuDNN in FP32

It runs `target/release/splitinv bench --json` (build it first with
`cargo build --release`) unless --splitinv-json FILE gives its output, then
prints a markdown table: PyTorch ms/step, splitinv ms/step, and the speed-up
(PyTorch time / splitinv time; > 1 means splitinv is faster).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


LENET_NAMES = ["conv1", "ReLU1", "pool1", "conv2", "ReLU2", "pool2", "flatten", "fc1", "fc1act", "fc2", "fc2act", "fc3"]


def cifar_cnn():
    layers = []
    for cin, cout in [(3, 64), (64, 128), (128, 128)]:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Linear(2048, 512), nn.Sigmoid(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


CIFAR_NAMES = ["conv11", "ReLU11", "conv12", "ReLU12", "pool1", "conv21", "ReLU21", "conv22", "ReLU22", "pool2",
               "conv31", "ReLU31", "conv32", "ReLU32", "pool3", "flatten", "fc1", "fc1act", "fc2"]


def tv_squared(x):
    return ((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2).mean() + ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).mean()


def workloads(device):
    out = []
    for tag, make, shape in [("mnist", lenet, (1, 28, 28)), ("cifar", cifar_cnn, (3, 32, 32))]:
        for b in (32, 128):
            out.append((f"train/{tag}/b{b}", tag, make, shape, b, None))
    for tag, make, shape, names, splits in [("mnist", lenet, (1, 28, 28), LENET_NAMES, ["conv1", "ReLU2", "fc2act"]),
                                            ("cifar", cifar_cnn, (3, 32, 32), CIFAR_NAMES, ["conv11", "ReLU22", "ReLU32"])]:
        for s in splits:
            for b in (1, 10):
                out.append((f"whitebox/{tag}/{s}/b{b}", tag, make, shape, b, names.index(s) + 1))
    if device != "cpu":
        # The GPU-only workloads of `splitinv bench` (src/bench.rs).
        out.append(("train/cifar/b256", "cifar", cifar_cnn, (3, 32, 32), 256, None))
        out.append(("whitebox/cifar/ReLU22/b1000", "cifar", cifar_cnn, (3, 32, 32), 1000, CIFAR_NAMES.index("ReLU22") + 1))
    return out


def prepare(make, shape, batch, cut, device):
    torch.manual_seed(1)
    net = make().to(device)
    if cut is None:
        x = torch.randn(batch, *shape, device=device)
        y = torch.arange(batch, device=device) % 10
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-3, amsgrad=True)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        return step
    f1 = net[:cut]
    for p in f1.parameters():
        p.requires_grad_(False)
    x0 = torch.rand(batch, *shape, device=device) * 2 - 1
    with torch.no_grad():
        target = f1(x0)
    x = torch.zeros(batch, *shape, device=device, requires_grad=True)
    opt = torch.optim.Adam([x], lr=1e-2, eps=1e-8, amsgrad=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(f1(x), target) + 1.0 * tv_squared(x)
        loss.backward()
        opt.step()
    return step


def time_step(step, device, quick):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    warmup, min_steps, budget = (2, 3, 0.3) if quick else (5, 10, 3.0)
    for _ in range(warmup):
        step()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < budget:
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--splitinv-json", help="file with `splitinv bench --json` output (else it is run)")
    ap.add_argument("--splitinv", default="target/release/splitinv")
    ap.add_argument("--filter", default="")
    ap.add_argument("--no-tf32", action="store_true",
                    help="cuDNN convolutions in full FP32 (PyTorch's default lets them use TF32 tensor cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    ours = {}
    if args.splitinv_json:
        lines = open(args.splitinv_json).read().splitlines()
    else:
        cmd = [args.splitinv, "--threads", str(args.threads), "bench", "--json"]
        if args.device != "cpu":
            cmd += ["--device", args.device]
        if args.quick:
            cmd.append("--quick")
        if args.filter:
            cmd += ["--filter", args.filter]
        lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    peaks = {}
    maths = set()
    for line in lines:
        if line.strip().startswith("{"):
            r = json.loads(line)
            ours[r["workload"]] = r["s_per_step"]
            peaks[r["workload"]] = r.get("peak_gpu_bytes")
            if r.get("conv_math"):
                maths.add(r["conv_math"])

    gpu = args.device != "cpu"
    mib = lambda b: f"{b / 2**20:.1f}" if b is not None else "n/a"
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}" if gpu else ""))
    if gpu and maths:
        # A like-for-like comparison pairs splitinv --conv-math tf32 with
        # PyTorch's default and --conv-math fp32 with --no-tf32; say so when
        # the two sides differ.
        theirs = "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
        print(f"splitinv conv math: {', '.join(sorted(maths))}; PyTorch convolutions: {theirs}"
              + ("" if maths == {theirs} else " (NOT the same precision)"))
    if gpu:
        print("| workload | PyTorch ms/step | splitinv ms/step | speed-up | PyTorch peak MiB | splitinv peak MiB |")
        print("|---|---:|---:|---:|---:|---:|")
    else:
        print("| workload | PyTorch ms/step | splitinv ms/step | speed-up |")
        print("|---|---:|---:|---:|")
    for name, _tag, make, shape, batch, cut in workloads(args.device):
        if args.filter and args.filter not in name:
            continue
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time_step(prepare(make, shape, batch, cut, args.device), args.device, args.quick)
        o = ours.get(name)
        ratio = f"{t / o:.2f}x" if o else "n/a"
        ostr = f"{o * 1e3:.3f}" if o else "n/a"
        row = f"| {name} | {t * 1e3:.3f} | {ostr} | {ratio} |"
        if gpu:
            row += f" {mib(torch.cuda.max_memory_allocated())} | {mib(peaks.get(name))} |"
        print(row)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
