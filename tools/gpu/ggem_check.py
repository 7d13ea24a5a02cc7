#!/usr/bin/env python3
"""GPU check of the GGeM kernels (kernels/cuda/ggem.cu): correctness against a
float64 reference, then timing against a device-to-device copy and the same
pooling in PyTorch.

Runs on a machine with an NVIDIA GPU, its driver, PyTorch with CUDA, and nvcc
or NVRTC; it needs no Rust and no network. tools/gpu-check.sh runs it. The
kernels are compiled to a cubin for the GPU at hand, loaded through the CUDA
driver API (ctypes on libcuda) into PyTorch's context and launched on
PyTorch's stream with the launch configuration of kernels/src/ggem.rs, which
this file ports and checks against tools/gpu/ggem_launches.json first.

    python3 tools/gpu/ggem_check.py [--out DIR] [--compiler auto|nvcc|nvrtc]
    python3 tools/gpu/ggem_check.py --check-launches          # no GPU needed
    python3 tools/gpu/ggem_check.py --compile-only sm_90      # no GPU needed

Exit status: 0 when every check passes, 1 when a check fails, 2 when the
environment cannot run the checks.
"""

import argparse
import ctypes
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "kernels" / "cuda" / "ggem.cu"
LAUNCHES = ROOT / "tools" / "gpu" / "ggem_launches.json"

EPS = 1e-6
KERNELS = ("ggem_f16", "ggem_f32")

# Mirrors kernels/src/ggem.rs.
VEC = 8
MAX_THREADS = 256
BLOCKS_PER_SM = 4
MAX_GRID_YZ = 65535

# Mirrors kernels/src/tolerance.rs: (relative, absolute).
TOLERANCE = {
    "f32": ("Close", 1e-4, 1e-12),
    "f16": ("Approximate", 1e-3, 2.0**-24),
}


class EnvironmentProblem(Exception):
    """The machine cannot run the check (exit status 2)."""


class CheckFailure(Exception):
    """A correctness check or a CUDA call failed (exit status 1)."""


# --------------------------------------------------------------------------
# Launch configuration (port of kernels/src/ggem.rs::launch_config)


def ceil_div(a, b):
    return -(-a // b)


def launch_config(b, n, c, g, sm_count):
    if min(b, n, c, g) <= 0:
        raise ValueError(f"expected non-zero sizes but got B={b} N={n} C={c} G={g}")
    if c % g != 0:
        raise ValueError(f"expected C divisible by G but C = {c} and G = {g}")
    if (c // g) % VEC != 0:
        raise ValueError(f"expected a group size that is a multiple of {VEC} but C / G = {c // g}")
    if b > MAX_GRID_YZ:
        raise ValueError(f"expected at most {MAX_GRID_YZ} for B but got {b}")
    vecs = c // VEC
    tiles = ceil_div(vecs, MAX_THREADS)
    vec_tile = ceil_div(vecs, tiles)
    walkers = max(MAX_THREADS // vec_tile, 1)
    per_split = b * tiles
    target = max(sm_count, 1) * BLOCKS_PER_SM
    wanted = ceil_div(target, per_split)
    most = min(ceil_div(n, walkers), MAX_GRID_YZ)
    rows_per_split = ceil_div(n, min(max(wanted, 1), most))
    splits = ceil_div(n, rows_per_split)
    if splits > 1:
        workspace_len, counters_len = b * splits * 2 * c, per_split
    else:
        workspace_len, counters_len = 0, 0
    return {
        "grid": [tiles, splits, b],
        "block": [vec_tile * walkers, 1, 1],
        "vec_tile": vec_tile,
        "row_walkers": walkers,
        "rows_per_split": rows_per_split,
        "workspace_len": workspace_len,
        "counters_len": counters_len,
    }


def check_launches():
    """Checks the port above against the table the Rust tests keep current."""
    doc = json.loads(LAUNCHES.read_text())
    bad = []
    for case in doc["cases"]:
        got = launch_config(case["b"], case["n"], case["c"], case["g"], case["sm_count"])
        want = {k: case[k] for k in got}
        if got != want:
            bad.append(f"  {case}: the port gives {got}")
    if bad:
        raise EnvironmentProblem(
            f"launch_config port disagrees with {LAUNCHES.relative_to(ROOT)}:\n" + "\n".join(bad)
        )
    return len(doc["cases"])


# --------------------------------------------------------------------------
# Compilation


def find_nvrtc():
    names = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    dirs = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]) / "lib64")
    dirs.append(Path("/usr/local/cuda/lib64"))
    for site in sys.path:
        dirs += [Path(p) for p in glob.glob(os.path.join(site, "nvidia", "*", "lib"))]
    for name in names:
        for d in dirs:
            if (d / name).exists():
                try:
                    # libnvrtc opens libnvrtc-builtins by soname at compile
                    # time; load it first from the same directory so that
                    # works without LD_LIBRARY_PATH.
                    for builtins in sorted(d.glob("libnvrtc-builtins.so.*")):
                        if ".alt." not in builtins.name:
                            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
                    return ctypes.CDLL(str(d / name))
                except OSError:
                    pass
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    raise EnvironmentProblem(
        f"NVRTC not found (tried {names} in {[str(d) for d in dirs]} and the loader path)"
    )


def cuda_include_dirs():
    """Directories that may hold cuda_fp16.h, most specific first."""
    dirs = []
    if os.environ.get("EDGEVIT_CUDA_INCLUDE"):
        dirs.append(Path(os.environ["EDGEVIT_CUDA_INCLUDE"]))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]) / "include")
    dirs.append(Path("/usr/local/cuda/include"))
    for site in sys.path:
        dirs += [Path(p) for p in glob.glob(os.path.join(site, "nvidia", "*", "include"))]
    return [d for d in dirs if (d / "cuda_fp16.h").is_file()]


def compile_nvrtc(arch):
    """Compiles SOURCE to a cubin for sm_<arch> with NVRTC."""
    lib = find_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    includes = cuda_include_dirs()
    if not includes:
        raise EnvironmentProblem("cuda_fp16.h not found: set EDGEVIT_CUDA_INCLUDE or CUDA_HOME")
    source = SOURCE.read_bytes()
    prog = ctypes.c_void_p()
    check_nvrtc(
        lib,
        lib.nvrtcCreateProgram(ctypes.byref(prog), source, b"ggem.cu", 0, None, None),
        "nvrtcCreateProgram",
    )
    try:
        opts = [f"--gpu-architecture=sm_{arch}".encode(), b"--ptxas-options=-v"]
        opts += [f"--include-path={d}".encode() for d in includes[:1]]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace")
        if rc != 0:
            raise CheckFailure(
                f"NVRTC {major.value}.{minor.value} failed to compile ggem.cu for sm_{arch}:\n{log}"
            )
        check_nvrtc(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        check_nvrtc(lib, lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin.raw, f"NVRTC {major.value}.{minor.value}", log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def check_nvrtc(lib, rc, call):
    if rc != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise EnvironmentProblem(f"{call} failed: {lib.nvrtcGetErrorString(rc).decode()}")


def compile_nvcc(arch, workdir):
    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    )
    if nvcc is None:
        raise EnvironmentProblem("nvcc not found on PATH or in /usr/local/cuda/bin")
    out = Path(workdir) / f"ggem.sm_{arch}.cubin"
    cmd = [nvcc, "--cubin", f"-arch=sm_{arch}", "-O3", "--ptxas-options=-v", "-o", str(out), str(SOURCE)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise CheckFailure(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return out.read_bytes(), f"nvcc ({version[-1] if version else '?'})", res.stdout + res.stderr


def have_nvcc():
    return bool(shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"))


def compile_kernels(arch, compiler, workdir):
    """Returns (cubin, compiler description, compiler log). `auto` prefers nvcc."""
    if compiler == "nvcc" or (compiler == "auto" and have_nvcc()):
        return compile_nvcc(arch, workdir)
    return compile_nvrtc(arch)


# --------------------------------------------------------------------------
# CUDA driver API through ctypes


class Driver:
    CU_FUNC_ATTRIBUTE_NUM_REGS = 4
    CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES = 3
    CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1

    def __init__(self, device_index):
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise EnvironmentProblem(f"libcuda.so.1 cannot be loaded: {e}") from e
        lib = self.lib
        vp, u, i = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
        lib.cuInit.argtypes = [u]
        lib.cuDeviceGet.argtypes = [ctypes.POINTER(i), i]
        lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(vp), i]
        lib.cuCtxSetCurrent.argtypes = [vp]
        lib.cuModuleLoadData.argtypes = [ctypes.POINTER(vp), ctypes.c_char_p]
        lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_char_p]
        lib.cuFuncGetAttribute.argtypes = [ctypes.POINTER(i), i, vp]
        lib.cuOccupancyMaxActiveBlocksPerMultiprocessor.argtypes = [ctypes.POINTER(i), vp, i, ctypes.c_size_t]
        lib.cuLaunchKernel.argtypes = [vp, u, u, u, u, u, u, u, vp, ctypes.POINTER(vp), ctypes.POINTER(vp)]
        lib.cuStreamSynchronize.argtypes = [vp]
        lib.cuGetErrorName.argtypes = [i, ctypes.POINTER(ctypes.c_char_p)]
        self.check(lib.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        self.check(lib.cuDeviceGet(ctypes.byref(dev), device_index), "cuDeviceGet")
        # PyTorch's runtime works in the primary context: share it.
        self.ctx = ctypes.c_void_p()
        self.check(
            lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), dev.value), "cuDevicePrimaryCtxRetain"
        )
        self.check(lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def check(self, rc, call):
        if rc != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(rc, ctypes.byref(name))
            raise CheckFailure(f"{call} failed: {name.value.decode() if name.value else rc}")

    def load(self, cubin, names):
        module = ctypes.c_void_p()
        self.check(self.lib.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
        self.module = module  # kept alive with the driver
        funcs = {}
        for name in names:
            f = ctypes.c_void_p()
            self.check(
                self.lib.cuModuleGetFunction(ctypes.byref(f), module, name.encode()),
                f"cuModuleGetFunction({name})",
            )
            funcs[name] = f
        return funcs

    def attribute(self, func, attr):
        v = ctypes.c_int()
        self.check(self.lib.cuFuncGetAttribute(ctypes.byref(v), attr, func), "cuFuncGetAttribute")
        return v.value

    def occupancy(self, func, threads):
        v = ctypes.c_int()
        self.check(
            self.lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(v), func, threads, 0),
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
        )
        return v.value

    def launch(self, func, grid, block, args, stream):
        holders = []
        for kind, value in args:
            holders.append({"p": ctypes.c_void_p, "i": ctypes.c_int, "f": ctypes.c_float}[kind](value))
        params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        self.check(
            self.lib.cuLaunchKernel(func, *grid, *block, 0, ctypes.c_void_p(stream), params, None),
            "cuLaunchKernel",
        )

    def sync(self, stream):
        self.check(
            self.lib.cuStreamSynchronize(ctypes.c_void_p(stream)),
            "cuStreamSynchronize (a kernel fault shows here)",
        )


# --------------------------------------------------------------------------
# The check


class Ggem:
    """One problem size on the GPU: inputs, exponents, output and buffers."""

    def __init__(self, torch, driver, funcs, sm_count, b, n, c, g, dtype, p=None):
        self.torch, self.driver, self.funcs = torch, driver, funcs
        self.b, self.n, self.c, self.g = b, n, c, g
        self.dtype = dtype
        self.name = "f16" if dtype == torch.float16 else "f32"
        self.launch_cfg = launch_config(b, n, c, g, sm_count)
        dev = "cuda"
        if p is None:
            p = 1.0 + 7.0 * torch.rand(g, dtype=torch.float32)
        self.p = p.to(dev, torch.float32).contiguous()
        self.inv_p = (1.0 / self.p).contiguous()
        # Output and workspace sit between guard zones that must stay NaN.
        self.guard = 256
        self.y_full = torch.empty(b * c + 2 * self.guard, dtype=dtype, device=dev)
        self.y = self.y_full[self.guard : self.guard + b * c].view(b, c)
        ws = self.launch_cfg["workspace_len"]
        self.ws_full = torch.full((ws + 2 * self.guard,), float("nan"), dtype=torch.float32, device=dev)
        self.counters = torch.zeros(max(self.launch_cfg["counters_len"], 1), dtype=torch.int32, device=dev)

    def args(self, x, y=None):
        y = self.y if y is None else y
        lc = self.launch_cfg
        ws = self.ws_full[self.guard :].data_ptr() if lc["workspace_len"] else 0
        counters = self.counters.data_ptr() if lc["counters_len"] else 0
        return [
            ("p", x.data_ptr()),
            ("p", y.data_ptr()),
            ("p", self.p.data_ptr()),
            ("p", self.inv_p.data_ptr()),
            ("i", self.b),
            ("i", self.n),
            ("i", self.c),
            ("i", self.g),
            ("f", EPS),
            ("i", lc["vec_tile"]),
            ("i", lc["rows_per_split"]),
            ("p", ws),
            ("p", counters),
        ]

    def launch(self, x, stream, y=None):
        assert x.is_contiguous() and x.dtype == self.dtype and x.shape == (self.b, self.n, self.c)
        assert x.data_ptr() % 16 == 0
        lc = self.launch_cfg
        self.driver.launch(self.funcs[f"ggem_{self.name}"], lc["grid"], lc["block"], self.args(x, y), stream)

    def reference(self, x):
        """float64 GGeM with the kernels' f32 eps and p, in the log domain."""
        torch = self.torch
        eps = float(torch.tensor(EPS, dtype=torch.float32))
        p = self.p.double().repeat_interleave(self.c // self.g)
        t = p * torch.log2(x.double().clamp_min(eps))
        m = t.amax(dim=1)
        s = torch.exp2(t - m[:, None, :]).sum(dim=1)
        return torch.exp2((m + torch.log2(s) - math.log2(self.n)) / p)

    def peer(self, x):
        """The same pooling as PyTorch eager ops, fp32 arithmetic like the kernel."""
        pc = self.p.repeat_interleave(self.c // self.g)
        return x.float().clamp_min(EPS).pow(pc).mean(dim=1).pow(1.0 / pc).to(x.dtype)


def check_case(torch, ggem, x, stream, label):
    """Runs the kernel twice on poisoned outputs and compares with float64."""
    nan = float("nan")
    outs = []
    for _ in range(2):
        ggem.y_full.fill_(nan)
        torch.cuda.synchronize()
        ggem.launch(x, stream)
        ggem.driver.sync(stream)
        outs.append(ggem.y.clone())
    y = outs[0]
    problems = []
    g = ggem.guard
    if not (torch.isnan(ggem.y_full[:g]).all() and torch.isnan(ggem.y_full[-g:]).all()):
        problems.append("wrote outside y")
    if ggem.launch_cfg["workspace_len"] and not (
        torch.isnan(ggem.ws_full[:g]).all() and torch.isnan(ggem.ws_full[-g:]).all()
    ):
        problems.append("wrote outside the workspace")
    if int(ggem.counters.abs().sum()) != 0:
        problems.append(f"counters not reset: {ggem.counters.tolist()[:8]}...")
    n_nan = int(torch.isnan(y).sum())
    n_inf = int(torch.isinf(y).sum())
    if n_nan or n_inf:
        problems.append(f"{n_nan} NaN and {n_inf} inf in y")
    if not torch.equal(
        outs[0].view(torch.int16 if ggem.dtype == torch.float16 else torch.int32),
        outs[1].view(torch.int16 if ggem.dtype == torch.float16 else torch.int32),
    ):
        problems.append("a relaunch gave different bits")

    ref = ggem.reference(x)
    got = y.double()
    tier, rel, abs_ = TOLERANCE[ggem.name]
    err = (got - ref).abs()
    score = err / (abs_ + rel * ref.abs())
    score = torch.where(torch.isfinite(got), score, torch.full_like(score, math.inf))
    worst = int(score.argmax())
    worst_score = float(score.flatten()[worst])
    # Relative error where it is meaningful: fp16 outputs below 2^-14 are
    # subnormal and judged by the absolute part of the tier.
    normal = ref.abs() >= (2.0**-14 if ggem.dtype == torch.float16 else 0.0)
    max_rel = float((err / ref.abs())[normal].max()) if bool(normal.any()) else 0.0
    norm_rel = float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref))
    failed = int((score > 1).sum())
    if failed:
        bi, ci = divmod(worst, ggem.c)
        problems.append(
            f"shape [{ggem.b}, {ggem.c}]: {failed} of {ref.numel()} outside {tier} "
            f"(rel {rel:g}, abs {abs_:g}); "
            f"worst element {worst} [{bi}, {ci}]: actual {float(got.flatten()[worst]):.9g}, "
            f"expected {float(ref.flatten()[worst]):.9g}"
        )
    status = "ok" if not problems else "FAIL"
    lc = ggem.launch_cfg
    print(
        f"  {status:4} {label:34} {ggem.name}  grid {lc['grid']} block {lc['block'][0]:3}  "
        f"max rel {max_rel:.2e}  norm rel {norm_rel:.2e}  worst/allowed {worst_score:.2f}"
    )
    for p in problems:
        print(f"       {p}")
    return {
        "case": label,
        "dtype": ggem.name,
        "ok": not problems,
        "problems": problems,
        "max_rel": max_rel,
        "norm_rel": norm_rel,
        "worst_over_allowed": worst_score,
        "launch": lc,
    }


def make_inputs(torch, kind, b, n, c, dtype):
    """Fresh random inputs, never zeros."""
    if kind == "normal":
        # Patch tokens after a LayerNorm: roughly N(0, 1) with some scale.
        x = torch.randn(b, n, c, device="cuda") * 1.5 + 0.3
        return x.to(dtype).contiguous()
    if kind == "extreme":
        x = torch.randn(b, n, c, device="cuda") * 2.0
        lane = torch.arange(c, device="cuda") % 8
        big = torch.empty(b, n, c, device="cuda").uniform_(30000.0, 60000.0)
        tiny = torch.empty(b, n, c, device="cuda").uniform_(-1.0, 5e-7)
        neg = -torch.empty(b, n, c, device="cuda").uniform_(0.0, 100.0)
        small = torch.empty(b, n, c, device="cuda").uniform_(1e-3, 1e-1)
        x = torch.where(lane == 0, big, x)  # up to 60000
        x = torch.where(lane == 1, tiny, x)  # every token below eps
        x = torch.where(lane == 2, neg, x)  # negatives only: pools to eps
        spike = neg.clone()
        spike[:, n // 2, :] = 60000.0
        x = torch.where(lane == 3, spike, x)  # one huge token among negatives
        x = torch.where(lane == 4, small, x)
        return x.to(dtype).contiguous()
    if kind == "fp32-range":
        # Beyond fp16: up to 1e38, where x^p overflows even fp64 for p > 8.
        mant = torch.empty(b, n, c, device="cuda").uniform_(1.0, 10.0)
        expo = torch.randint(-10, 38, (b, n, c), device="cuda").float()
        x = mant * torch.pow(10.0, expo)
        x = torch.where(torch.rand(b, n, c, device="cuda") < 0.2, -x, x)
        return x.to(dtype).contiguous()
    raise ValueError(kind)


def median_time_us(torch, fn, iters, per_replay):
    """Median GPU time of fn() in microseconds, divided by per_replay.

    fn is captured in a CUDA graph (launch gaps out of the numbers) and each
    replay timed with events; without graphs, each call is timed alone.
    """
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    graph = None
    try:
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()  # warm-up outside the graph
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - fall back, but say why
        print(f"  (graph capture failed, timing single calls: {e})")
        graph = None
        torch.cuda.synchronize()
    times = []
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        for i in range(iters + 10):
            start.record(stream)
            if graph is not None:
                graph.replay()
            else:
                fn()
            end.record(stream)
            end.synchronize()
            if i >= 10:
                times.append(start.elapsed_time(end) * 1000.0 / per_replay)
    return statistics.median(times), graph is not None


def time_case(torch, driver, funcs, sm_count, l2_bytes, b, n, c, g, dtype, iters):
    """Times the kernel, a copy of the same bytes and the PyTorch peer."""
    ggem = Ggem(torch, driver, funcs, sm_count, b, n, c, g, dtype)
    elem = 2 if dtype == torch.float16 else 4
    in_bytes = b * n * c * elem
    # Enough input sets that a round of launches does not fit in L2.
    sets = max(1, min(16, ceil_div(3 * l2_bytes, in_bytes)))
    xs = [make_inputs(torch, "normal", b, n, c, dtype) for _ in range(sets)]
    dsts = [torch.empty_like(x) for x in xs]
    ys = [torch.empty(b, c, dtype=dtype, device="cuda") for _ in range(sets)]

    def run_kernel():
        s = torch.cuda.current_stream().cuda_stream
        for x, y in zip(xs, ys):
            ggem.launch(x, s, y)

    def run_copy():
        for x, d in zip(xs, dsts):
            d.copy_(x)

    def run_peer():
        for x, y in zip(xs, ys):
            y.copy_(ggem.peer(x))

    t_kernel, graphed = median_time_us(torch, run_kernel, iters, sets)
    t_copy, _ = median_time_us(torch, run_copy, iters, sets)
    t_peer, _ = median_time_us(torch, run_peer, iters, sets)
    moved = in_bytes + b * c * elem
    gbps = moved / t_kernel / 1e3
    copy_gbps = 2 * in_bytes / t_copy / 1e3
    return {
        "shape": [b, n, c],
        "groups": g,
        "dtype": ggem.name,
        "launch": ggem.launch_cfg,
        "input_sets": sets,
        "graphed": graphed,
        "kernel_us": t_kernel,
        "kernel_gbps": gbps,
        "copy_us": t_copy,
        "copy_gbps": copy_gbps,
        "peer_us": t_peer,
        "vs_copy": gbps / copy_gbps,
        "vs_peer": t_peer / t_kernel,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write ggem_results.json here")
    ap.add_argument("--compiler", choices=["auto", "nvcc", "nvrtc"], default="auto")
    ap.add_argument("--iters", type=int, default=200, help="timed replays per measurement (>= 100)")
    ap.add_argument("--check-launches", action="store_true", help="only check the launch_config port")
    ap.add_argument("--compile-only", metavar="sm_XX", help="only compile for this architecture")
    args = ap.parse_args()

    try:
        n_launch = check_launches()
        print(f"launch_config port matches {LAUNCHES.relative_to(ROOT)} ({n_launch} cases)")
        if args.check_launches:
            return 0
        if args.compile_only:
            arch = int(args.compile_only.removeprefix("sm_"))
            with tempfile.TemporaryDirectory() as tmp:
                cubin, compiler, log = compile_kernels(arch, args.compiler, tmp)
            print(f"{compiler}: {len(cubin)} bytes of cubin for sm_{arch}")
            print(log.strip())
            return 0
        return run_checks(args)
    except EnvironmentProblem as e:
        print(f"ggem_check: cannot run: {e}", file=sys.stderr)
        return 2
    except CheckFailure as e:
        print(f"ggem_check: FAILED: {e}", file=sys.stderr)
        return 1


def run_checks(args):
    if args.iters < 100:
        raise EnvironmentProblem("--iters must be at least 100")
    try:
        import torch
    except ImportError as e:
        raise EnvironmentProblem(f"PyTorch is not importable: {e}") from e
    if not torch.cuda.is_available():
        raise EnvironmentProblem(f"torch {torch.__version__} sees no CUDA device")
    seed = int(time.time())
    torch.manual_seed(seed)
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    arch = props.major * 10 + props.minor
    sm_count = props.multi_processor_count
    l2_bytes = getattr(props, "L2_cache_size", 50 << 20)
    print(
        f"device: {props.name}, sm_{arch}, {sm_count} SMs, L2 {l2_bytes >> 20} MiB, "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), seed {seed}"
    )

    torch.zeros(1, device="cuda")  # let PyTorch create its context first
    driver = Driver(dev)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cubin, compiler, log = compile_kernels(arch, args.compiler, tmp)
        print(f"compiled with {compiler} in {time.perf_counter() - t0:.1f} s")
        if compiler.startswith("nvcc"):
            # The runtime compiles with NVRTC where no prebuilt PTX exists:
            # check that path too, without depending on it.
            try:
                _, nvrtc, _ = compile_nvrtc(arch)
                print(f"  {nvrtc} also compiles it for sm_{arch}")
            except (EnvironmentProblem, CheckFailure) as e:
                print(f"  (NVRTC compile not checked: {str(e).splitlines()[0]})")
    funcs = driver.load(cubin, KERNELS)
    for name, f in funcs.items():
        regs = driver.attribute(f, Driver.CU_FUNC_ATTRIBUTE_NUM_REGS)
        local = driver.attribute(f, Driver.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)
        smem = driver.attribute(f, Driver.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
        occ = driver.occupancy(f, MAX_THREADS)
        print(
            f"  {name}: {regs} registers, {local} B local (spills), {smem} B shared, "
            f"{occ} blocks of {MAX_THREADS} per SM"
        )

    results = {
        "device": props.name,
        "arch": arch,
        "sm_count": sm_count,
        "compiler": compiler,
        "seed": seed,
        "checks": [],
        "timings": [],
    }

    print("\ncorrectness (float64 reference, poisoned outputs, two launches each):")
    stream_obj = torch.cuda.Stream()
    stream = stream_obj.cuda_stream

    def p_range(g):
        return torch.linspace(1.0, 8.0, g)

    cases = [
        # (label, kind, B, N, C, G, p or None for random in [1, 8))
        ("ViT-Ti [1,196,192] G=3", "normal", 1, 196, 192, 3, None),
        ("ViT-S [1,197,384] G=6", "normal", 1, 197, 384, 6, None),
        ("ViT-B [64,196,768] G=12", "normal", 64, 196, 768, 12, None),
        ("extremes [2,197,384] G=48 p 1..8", "extreme", 2, 197, 384, 48, "range"),
        ("extremes [64,196,768] G=96 p 1..8", "extreme", 64, 196, 768, 96, "range"),
        ("wide [3,50,4104] G=513", "extreme", 3, 50, 4104, 513, None),
        ("single token [1,1,8] G=1", "normal", 1, 1, 8, 1, None),
        ("tiny [5,7,16] G=2", "extreme", 5, 7, 16, 2, "range"),
        ("long [1,4096,64] G=8", "extreme", 1, 4096, 64, 8, "range"),
        ("GeM [2,100,2048] G=1 p=8", "extreme", 2, 100, 2048, 1, "eight"),
    ]
    with torch.cuda.stream(stream_obj):
        for label, kind, b, n, c, g, p in cases:
            for dtype in (torch.float16, torch.float32):
                if p == "range":
                    pv = p_range(g)
                elif p == "eight":
                    pv = torch.full((g,), 8.0)
                else:
                    pv = None
                ggem = Ggem(torch, driver, funcs, sm_count, b, n, c, g, dtype, pv)
                x = make_inputs(torch, kind, b, n, c, dtype)
                results["checks"].append(check_case(torch, ggem, x, stream, label))
        # fp32 beyond the fp16 range.
        ggem = Ggem(torch, driver, funcs, sm_count, 2, 197, 384, 48, torch.float32, p_range(48))
        x = make_inputs(torch, "fp32-range", 2, 197, 384, torch.float32)
        results["checks"].append(check_case(torch, ggem, x, stream, "fp32 range [2,197,384] up to 1e38"))
    torch.cuda.synchronize()
    failed = [c for c in results["checks"] if not c["ok"]]

    print(f"\ntiming (median of {args.iters} CUDA-event-timed graph replays after warm-up):")
    for b, n, c, g in [(1, 196, 192, 3), (1, 197, 384, 6), (64, 196, 768, 12), (256, 196, 768, 12)]:
        for dtype in (torch.float16, torch.float32):
            r = time_case(torch, driver, funcs, sm_count, l2_bytes, b, n, c, g, dtype, args.iters)
            results["timings"].append(r)
            print(
                f"  {str(r['shape']):15} {r['dtype']}  {r['kernel_us']:8.2f} us  "
                f"{r['kernel_gbps']:7.0f} GB/s  "
                f"copy {r['copy_gbps']:6.0f} GB/s  torch {r['peer_us']:8.2f} us"
            )

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ggem_results.json").write_text(json.dumps(results, indent=1))

    print("\n| shape | dtype | grid | block | kernel us | GB/s | copy GB/s | of copy | torch us | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["timings"]:
        lc = r["launch"]
        print(
            f"| {r['shape']} | {r['dtype']} | {lc['grid']} | {lc['block'][0]} | {r['kernel_us']:.2f} | "
            f"{r['kernel_gbps']:.0f} | {r['copy_gbps']:.0f} | {100 * r['vs_copy']:.0f}% | "
            f"{r['peer_us']:.2f} | {r['vs_peer']:.1f}x |"
        )
    ok = len(results["checks"]) - len(failed)
    print(
        f"\ncorrectness: {ok} of {len(results['checks'])} checks passed"
        + ("" if not failed else "; FAILED: " + ", ".join(f"{c['case']} {c['dtype']}" for c in failed))
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
