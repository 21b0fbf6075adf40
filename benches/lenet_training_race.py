#!/usr/bin/env python3
"""Full LeNet/MNIST training, splitinv against PyTorch CPU, same machine, same run.

Both train the same net with the authors' recipe (Adam with amsgrad, eps 1e-3,
lr 1e-3, batch 32, lr halved every 20 epochs, inputs (x-0.5)/0.5, seeded
shuffling) on the 60k MNIST training images, test on the 10k test images after
every epoch, on the same number of threads:

    python3 benches/lenet_training_race.py --data ../shared/data --epochs 20 --threads 2

Prints, for each: wall time of the whole run (data loading included), the
first epoch at which test accuracy reached 99%, the wall time at that point,
and the final accuracy. Needs `cargo build --release` first, and torch.
"""
import argparse
import gzip
import json
import os
import struct
import subprocess
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from compare_pytorch import lenet


def idx(path):
    with gzip.open(path) as f:
        b = f.read()
    nd = b[3]
    dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return torch.frombuffer(bytearray(b[4 + 4 * nd:]), dtype=torch.uint8).reshape(dims)


def pytorch_run(data, epochs, seed):
    t0 = time.perf_counter()
    d = os.path.join(data, "mnist")
    xtr = (idx(f"{d}/train-images-idx3-ubyte.gz").float() / 255 - 0.5) / 0.5
    ytr = idx(f"{d}/train-labels-idx1-ubyte.gz").long()
    xte = (idx(f"{d}/t10k-images-idx3-ubyte.gz").float() / 255 - 0.5) / 0.5
    yte = idx(f"{d}/t10k-labels-idx1-ubyte.gz").long()
    xtr, xte = xtr[:, None], xte[:, None]
    torch.manual_seed(seed)
    net = lenet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-3, amsgrad=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, 20, 0.5)
    history = []
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 32):
            b = perm[i:i + 32]
            opt.zero_grad()
            F.cross_entropy(net(xtr[b]), ytr[b]).backward()
            opt.step()
        sched.step()
        net.eval()
        with torch.no_grad():
            correct = sum((net(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
                          for i in range(0, len(xte), 1000))
        history.append((epoch + 1, correct / len(xte), time.perf_counter() - t0))
    return time.perf_counter() - t0, history


def splitinv_run(data, epochs, seed, threads):
    out = os.path.join(tempfile.mkdtemp(), "lenet.safetensors")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["target/release/splitinv", "--device", "cpu", "--threads", str(threads), "--data", data,
         "train", "--model", "lenet", "--dataset", "mnist", "--epochs", str(epochs),
         "--seed", str(seed), "--json", "--out", out],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    history = []
    summary = None
    for line in proc.stdout:
        # Per-epoch lines arrive as they finish; stamp them on arrival.
        if line.startswith("epoch"):
            parts = line.split()
            e = int(parts[1].split("/")[0])
            acc = float(line.split("test acc")[1].split("%")[0]) / 100
            history.append((e, acc, time.perf_counter() - t0))
        elif line.startswith("{"):
            summary = json.loads(line)
    proc.wait()
    if proc.returncode != 0 or summary is None:
        raise SystemExit(f"splitinv train failed ({proc.returncode})")
    return time.perf_counter() - t0, history


def report(name, wall, history):
    first = next(((e, t) for e, a, t in history if a >= 0.99), None)
    reach = f"epoch {first[0]} at {first[1]:.0f} s" if first else "not reached"
    print(f"| {name} | {wall:.0f} | {reach} | {100 * history[-1][1]:.2f}% |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("SPLITINV_DATA", "../shared/data"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    s_wall, s_hist = splitinv_run(a.data, a.epochs, a.seed, a.threads)
    p_wall, p_hist = pytorch_run(a.data, a.epochs, a.seed)
    print(f"LeNet/MNIST, {a.epochs} epochs, {a.threads} threads, torch {torch.__version__}")
    print("| trainer | wall s | 99% test accuracy first reached | final test accuracy |")
    print("|---|---|---|---|")
    report("splitinv", s_wall, s_hist)
    report("PyTorch (CPU, eager)", p_wall, p_hist)


if __name__ == "__main__":
    main()
