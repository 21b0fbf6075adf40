#!/usr/bin/env python3
"""Static look at the machine code of our CUDA kernels, without a GPU.

Compiles a kernel file the way splitinv does (NVRTC, the common header
first), assembles it for a real architecture, disassembles it with
cuobjdump and, for each kernel, finds the main loop (the backward branch
whose body holds the most FFMA / HMMA) and counts its instructions by
opcode. That is a static count of one loop body: every path through it
counted once, nothing about latency, occupancy or memory. It says where the
issue slots of a K step go (multiply-adds against index arithmetic), which
is what a GPU lease then confirms or not.

Needs the NVRTC library (`.ci/run` installs it into target/ci-venv) and
cuobjdump, which pip also has:

    target/ci-venv/bin/pip install nvidia-cuda-cuobjdump
    python3 benches/gpu/sass_loop.py conv.cu sm_90 [--kernels DIR] [--only NAME]

(--kernels DIR compiles another copy of kernels/, e.g. an older commit's
from `git worktree`, to compare.)
"""
import argparse
import collections
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_one(patterns, what):
    for p in patterns:
        hits = sorted(glob.glob(p))
        if hits:
            return hits[-1]
    sys.exit(f"sass_loop: {what} not found (looked in {patterns})")


def compile_cubin(kernels_dir, file, arch):
    lib_path = os.environ.get("NVRTC_LIB") or find_one(
        [os.path.join(ROOT, "target/ci-venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.1*")],
        "libnvrtc (run .ci/run once, or set NVRTC_LIB)",
    )
    lib = ctypes.CDLL(lib_path)
    src = open(os.path.join(kernels_dir, "common.cuh")).read()
    src += f'\n#line 1 "{file}"\n' + open(os.path.join(kernels_dir, file)).read()
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), file.encode(), 0, None, None):
        sys.exit("sass_loop: nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc:
        sys.exit(f"sass_loop: {file} does not compile for {arch}:\n{log.value.decode()}")
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    cubin = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, cubin)
    return cubin.raw


def disassemble(cubin):
    tool = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump") or find_one(
        [os.path.join(ROOT, "target/ci-venv/lib/python3*/site-packages/nvidia/cu*/bin/cuobjdump")],
        "cuobjdump (pip install nvidia-cuda-cuobjdump, or set CUOBJDUMP)",
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"sass_loop: cuobjdump failed:\n{out.stderr}")
    return out.stdout


def kernels(sass):
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name = part.split("\n", 1)[0].strip()
        ins = []
        for line in part.splitlines():
            m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
            if m:
                body = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
                ins.append((int(m.group(1), 16), body.split()[0] if body else "", body))
        yield name, ins


def main_loop(ins):
    best = None
    for addr, op, body in ins:
        m = re.search(r"0x([0-9a-f]+)", body) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) < addr:
            start = int(m.group(1), 16)
            ops = [o for a, o, _ in ins if start <= a <= addr]
            score = sum(o.startswith(("FFMA", "HMMA")) for o in ops)
            if best is None or score > best[0]:
                best = (score, ops)
    return best[1] if best else []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="kernel file under kernels/, e.g. conv.cu")
    ap.add_argument("arch", nargs="?", default="sm_90")
    ap.add_argument("--kernels", default=os.path.join(ROOT, "kernels"), help="the kernels/ folder to compile")
    ap.add_argument("--only", help="only kernels whose name contains this")
    a = ap.parse_args()
    sass = disassemble(compile_cubin(a.kernels, a.file, a.arch))
    print(f"| kernel | loop instructions | FFMA | HMMA | LDS | LDG | other | top other opcodes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, ins in sorted(kernels(sass)):
        if a.only and a.only not in name:
            continue
        ops = main_loop(ins)
        if not ops:
            continue
        c = collections.Counter(o.split(".")[0] for o in ops)
        main_ops = {k: c.pop(k, 0) for k in ("FFMA", "HMMA", "LDS", "LDG")}
        other = sum(c.values())
        top = ", ".join(f"{k} {v}" for k, v in c.most_common(5))
        print(f"| {name} | {len(ops)} | {main_ops['FFMA']} | {main_ops['HMMA']} | {main_ops['LDS']} | "
              f"{main_ops['LDG']} | {other} | {top} |")


if __name__ == "__main__":
    main()
