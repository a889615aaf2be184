r"""Measure this machine's peaks (FMA flops, BLAS, memory bandwidth, exp throughput) and a kernel's floor.

Benchmarks report "achieved GFLOP/s, exps/s or GB/s against the machine's
measured peak" from these figures. Everything is measured, on this CPU, with
the thread pools pinned (``child_env``), best of a few repeats:

* **FMA peak** (fp32 and fp64, one thread and all threads): a Numba kernel
  (``prange`` over threads, outermost only) in which each thread sweeps a
  1024-lane array that stays in L1; each lane takes 8 dependent
  ``x = x * m + c`` per sweep, so one sweep is 1024 independent chains and
  LLVM's loop vectoriser takes the loop over lanes. ``fastmath={"contract"}``
  (the one flag that lets ``x * m + c`` become an FMA; no reassociation) is
  set on this kernel only. A flop is counted as in every FLOP/s figure: an
  FMA is 2. Two builds:

  - ``numba``: Numba's default code generation, what the project's kernels
    get. LLVM's tuning for this CPU prefers 256-bit vectors (``ymm``), so this
    is at most half the hardware's 512-bit rate;
  - ``numba_zmm``: the same kernel in a child process with
    ``NUMBA_CPU_FEATURES`` = host features + ``-prefer-256-bit`` (``zmm``):
    the hardware's FMA peak.

  The vector register the loop compiled to is read from the assembly and
  recorded, and the per-core rate is divided by the nominal clock
  (/proc/cpuinfo) into flops per cycle: 2 FMA ports x 16 fp32 lanes x 2 = 64
  for AVX-512 on a Sapphire Rapids core (32 with 256-bit vectors); above
  that the core runs faster than nominal (turbo).
* **BLAS** sgemm / dgemm (``numpy.matmul``, square n = 2048, ``2 n^3``
  flops; threadpoolctl limits the pool to 1 thread, then all): a second,
  "achievable" figure. Where ``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE``
  is set (some machines set them for old OpenBLAS builds), the products are
  timed again in a child process without them (``gemm_coretype_unset``):
  ``Haswell`` there confines OpenBLAS to 256-bit kernels on an AVX-512 CPU,
  which ran sgemm at 245 GFLOP/s on two threads where the CPU's own kernels
  ran 430-490, and a floor built on the slower figure would be too lenient.
* **Memory** (Numba, ``prange``, float64 arrays of 64 MiB each, far beyond
  cache): STREAM triad ``a = b + s * c`` counting 3 x 8 bytes per element,
  and copy ``a = b`` counting 2 x 8 (the STREAM convention: write-allocate
  traffic not counted).
* **exp throughput** (elements/s, in-cache inputs in [-30, 0]): the project's
  own vectorisable exps, imported (never copied):
  ``refdiff.kernels._numba_math._exp_weight`` (float64: the softmax weights
  of the lane kernels and the fused sampler) and ``_exp_weight32`` (float32:
  the mixture score's GEMM path), in the same two builds as the FMA
  kernel; and ``numpy.exp`` float32 / float64 (one thread: NumPy ufuncs do
  not thread) and Numba's ``math.exp`` (a scalar libm call), which count
  towards the exp peak as well.

``measure_peaks`` returns all of it plus a ``"peak"`` section: the figures a
floor divides by (the best measured, whichever build or library got it: for
exp the project's exps, NumPy's and Numba's ``math.exp`` alike, so that no
measured implementation beats its floor; ``source`` names the winner).
``mixture_score_floor`` turns those into the minimum time of an isotropic
mixture score evaluation; ``achieved`` sets a measured time against it.
``load_or_measure_peaks`` reuses a recent JSON (re-measuring in a child
process otherwise), so another benchmark can call it cheaply::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import machine_peak
    peaks = machine_peak.load_or_measure_peaks()
    floor = machine_peak.mixture_score_floor(N, D, K, peaks, dtype_bytes=4)
    report = machine_peak.achieved(floor, seconds)  # report["floor_fraction"] >= GOAL_FRACTION

Importing this module imports neither NumPy nor Numba (as ``_common``); the
Numba kernels are built on first use. The FMA and memory kernels are cached
(``cache=True``); the exp kernels are not, since Numba's cache would not see
an edit of the imported exp.

Usage::

    .venv/bin/python benchmarks/machine_peak.py [--threads 2] [--quick] [--no-zmm] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CORETYPE_VARS, REPO, blas_info, child_env, machine_info, recorded_env, summary_ms, time_calls, write_json  # noqa: E402

DEFAULT_JSON = REPO / "benchmarks" / "results" / "machine_peak.json"

#: The mixture-score kernel should reach this fraction of its floor at D <= 4.
GOAL_FRACTION = 0.4

FMA_LANES = 1024  # lanes per thread: 4 KiB (fp32) / 8 KiB (fp64), in L1
FMA_PER_SWEEP = 8  # dependent FMAs per lane per sweep (written out in the kernel)
EXP_LANES = 2048  # elements per thread per exp sweep: 2 x 16 KiB float64, in L1
STREAM_MIB = 64  # MiB per array of the triad / copy (3 arrays)


# --------------------------------------------------------------------------- Numba kernels (built on first use)


@functools.cache
def _kernels():
    """The FMA, triad and copy kernels (cached on disk by Numba)."""
    from numba import njit, prange

    @njit(inline="always", fastmath={"contract"}, nogil=True)
    def eight_fmas(x, m, c):
        """x after 8 dependent multiply-adds (contracted to FMAs)."""
        for _ in range(8):
            x = x * m + c
        return x

    @njit(parallel=True, fastmath={"contract"}, cache=True, nogil=True)
    def fma_sweeps(acc, m, c, sweeps):
        """acc (T, L): thread t runs ``sweeps`` sweeps of 8 dependent FMAs on each of its L lanes."""
        T, L = acc.shape
        for t in prange(T):
            a = acc[t]
            for _ in range(sweeps):
                for j in range(L):
                    a[j] = eight_fmas(a[j], m, c)

    @njit(fastmath={"contract"}, nogil=True)  # not cached: Numba gives no assembly for cached code
    def fma_lanes(a, m, c):
        """One thread's sweep, unthreaded: its assembly shows the vector register the loop got."""
        for j in range(a.shape[0]):
            a[j] = eight_fmas(a[j], m, c)

    @njit(parallel=True, cache=True, nogil=True)
    def triad(a, b, c, s):
        for i in prange(a.shape[0]):
            a[i] = b[i] + s * c[i]

    @njit(parallel=True, cache=True, nogil=True)
    def copy(a, b):
        for i in prange(a.shape[0]):
            a[i] = b[i]

    @njit(parallel=True, cache=True, nogil=True)
    def fill(a, v):
        for i in prange(a.shape[0]):
            a[i] = v

    return {"fma_sweeps": fma_sweeps, "fma_lanes": fma_lanes, "triad": triad, "copy": copy, "fill": fill}


def _exp_kernel(exp):
    """A threaded kernel applying the inlined scalar function ``exp`` to (T, L) inputs, once per entry of ``shifts``.

    Sweep s computes ``exp(x + shifts[s])`` (``shifts`` in x's dtype), so the
    compiler cannot merge the sweeps.
    """
    from numba import njit, prange

    @njit(parallel=True, nogil=True)
    def exp_sweeps(x, out, shifts):
        T, L = x.shape
        for t in prange(T):
            for s in range(shifts.shape[0]):
                shift = shifts[s]
                for j in range(L):
                    out[t, j] = exp(x[t, j] + shift)

    return exp_sweeps


#: The project's vectorisable exps: name -> (module, dtype it takes).
PROJECT_EXPS = {"_exp_weight": ("refdiff.kernels._numba_math", "float64"), "_exp_weight32": ("refdiff.kernels._numba_math", "float32")}


def _project_exps(names=tuple(PROJECT_EXPS)) -> dict:
    """name -> (Numba scalar exp or None, import error or None) for the project's own exps."""
    found = {}
    for name in names:
        module = PROJECT_EXPS[name][0]
        try:
            mod = __import__(module, fromlist=[name])
            found[name] = (getattr(mod, name), None)
        except Exception as exc:  # a module under edit elsewhere must not stop the other figures
            found[name] = (None, f"{type(exc).__name__}: {exc}")
    return found


# --------------------------------------------------------------------------- measurements


def _best(fn, warmup, repeat, max_seconds=None):
    """Best (minimum) seconds of ``repeat`` calls after ``warmup``, and the summary."""
    times = time_calls(fn, warmup, repeat, max_seconds=max_seconds, min_repeat=min(repeat, 3))
    return min(times), summary_ms(times)


def _thread_counts(threads):
    return sorted({1, threads})


@functools.cache
def _nominal_ghz():
    """The nominal clock from /proc/cpuinfo ("cpu MHz"; under a hypervisor the TSC rate), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":", 1)[1]) / 1e3
    except (OSError, ValueError):
        pass
    return None


def _vector_register(asm: str) -> str:
    """The widest register an FMA in ``asm`` uses: zmm (512-bit), ymm (256), xmm (128 or scalar), or none."""
    for reg in ("zmm", "ymm", "xmm"):
        if any(line.strip().startswith("vfmadd") and f"%{reg}" in line for line in asm.splitlines()):
            return reg
    return "none"


def measure_fma(threads, quick=False) -> dict:
    """FMA GFLOP/s, fp32 and fp64, on 1 thread and ``threads`` threads (Numba's current code generation)."""
    import numba
    import numpy as np

    k = _kernels()
    target = 0.005 if quick else 0.02  # seconds per timed call: short calls, many repeats (a shared machine)
    out = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        m, c = dtype(0.999999), dtype(1e-6)  # |x| stays bounded: no overflow, no subnormals
        lanes = np.ones(FMA_LANES, dtype)
        k["fma_lanes"](lanes, m, c)
        reg = _vector_register(k["fma_lanes"].inspect_asm(k["fma_lanes"].signatures[-1]))
        row = {"vector_register": reg}
        for T in _thread_counts(threads):
            numba.set_num_threads(T)
            acc = np.ones((T, FMA_LANES), dtype)
            k["fma_sweeps"](acc, m, c, 1)  # compile / load the cache
            t0 = time.perf_counter()
            k["fma_sweeps"](acc, m, c, 100)
            per_sweep = max((time.perf_counter() - t0) / 100, 1e-9)
            sweeps = max(10, int(target / per_sweep))
            best, summ = _best(lambda: k["fma_sweeps"](acc, m, c, sweeps), 1, 5 if quick else 15)
            flops = 2.0 * FMA_PER_SWEEP * FMA_LANES * T * sweeps
            if not np.all(np.isfinite(acc)):
                raise RuntimeError("FMA kernel overflowed")
            row[f"gflops_{T}t"] = flops / best / 1e9
            row[f"timing_{T}t"] = dict(summ, sweeps=sweeps)
        numba.set_num_threads(threads)
        row["gflops_per_core"] = row["gflops_1t"]
        row["gflops_all"] = max(row[f"gflops_{T}t"] for T in _thread_counts(threads))
        ghz = _nominal_ghz()
        if ghz:
            row["flops_per_cycle_at_nominal"] = row["gflops_per_core"] / ghz
        out[name] = row
    return out


def _exp_rate(kernel, T, dtype, rng, quick=False):
    """``(exps per second, timing summary)`` of ``kernel`` (:func:`_exp_kernel`) on T threads (Numba's thread count
    set to T by the caller) over (T, EXP_LANES) entries of ``dtype`` in [-30, 0]: the best of 15 calls (5 quick)
    of some 20 ms (5 quick) each; the summary holds the largest error relative to NumPy's float64 exp."""
    import numpy as np

    x = rng.uniform(-30.0, 0.0, (T, EXP_LANES)).astype(dtype)
    y = np.empty_like(x)

    def shifts(k):
        return (-1e-6 * np.arange(k)).astype(dtype)

    kernel(x, y, shifts(1))
    t0 = time.perf_counter()
    kernel(x, y, shifts(20))
    per = max((time.perf_counter() - t0) / 20, 1e-9)
    sh = shifts(max(5, int((0.005 if quick else 0.02) / per)))
    best, summ = _best(lambda: kernel(x, y, sh), 1, 5 if quick else 15)
    want = np.exp((x + sh[-1]).astype(np.float64))
    err = float(np.max(np.abs(y - want) / want))
    return T * EXP_LANES * sh.shape[0] / best, dict(summ, sweeps=int(sh.shape[0]), max_rel_err=err)


@functools.cache
def _project_exp_kernel(dtype_name):
    """:func:`_exp_kernel` of the project's exp for a dtype name ("float32" or "float64"); ValueError for another,
    ImportError where the project's module does not import."""
    names = [n for n, (_, dt) in PROJECT_EXPS.items() if dt == dtype_name]
    if not names:
        raise ValueError(f"the project has no {dtype_name} exp (it has {sorted(dt for _, dt in PROJECT_EXPS.values())})")
    name = names[0]
    fn, error = _project_exps((name,))[name]
    if fn is None:
        raise ImportError(error)
    return _exp_kernel(fn)


def project_exp_rate(threads, dtype_name="float32") -> float:
    """The project's exp throughput (exps per second) on ``threads`` threads now, as :func:`measure_exp` measures
    it (some 0.3 s, plus a compile on the first call). A benchmark measures it beside its own timings, so
    that a floor it forms shares the machine's state with them (on a shared VM the rate moved by a third
    from one day to the next)."""
    import numba
    import numpy as np

    kernel = _project_exp_kernel(dtype_name)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return _exp_rate(kernel, threads, np.dtype(dtype_name).type, np.random.default_rng(0))[0]
    finally:
        numba.set_num_threads(before)


def measure_exp(threads, quick=False) -> dict:
    """exp elements/s: the project's Numba exps (1 and ``threads`` threads), NumPy and Numba's math.exp (1 thread)."""
    import math as _math

    import numba
    import numpy as np
    from numba import njit

    rng = np.random.default_rng(0)
    out = {"float64": {}, "float32": {}}

    def rate(kernel, T, dtype):
        return _exp_rate(kernel, T, dtype, rng, quick)

    exps = _project_exps()
    for name, (fn, error) in exps.items():
        dtype = PROJECT_EXPS[name][1]
        if fn is None:
            out[dtype][name] = {"error": error}
            continue
        kernel = _exp_kernel(fn)
        row = {}
        for T in _thread_counts(threads):
            numba.set_num_threads(T)
            row[f"per_s_{T}t"], row[f"timing_{T}t"] = rate(kernel, T, np.dtype(dtype).type)
        numba.set_num_threads(threads)
        row["per_s_per_core"] = row["per_s_1t"]
        row["per_s_all"] = max(row[f"per_s_{T}t"] for T in _thread_counts(threads))
        out[dtype][name] = row

    if not quick:
        @njit(inline="always")
        def libm(v):
            return _math.exp(v)

        kernel = _exp_kernel(libm)
        numba.set_num_threads(1)
        for dtype in (np.float64, np.float32):
            r, summ = rate(kernel, 1, dtype)
            out[np.dtype(dtype).name]["numba_math_exp"] = {"per_s_per_core": r, "timing_1t": summ, "note": "scalar libm call"}
        numba.set_num_threads(threads)

    n = 1 << 14 if quick else 1 << 16  # 128 / 512 KiB of float64: in L2
    for dtype in (np.float64, np.float32):
        x = rng.uniform(-30.0, 0.0, n).astype(dtype)
        y = np.empty_like(x)
        best, summ = _best(lambda: np.exp(x, out=y), 3, 20 if quick else 100, max_seconds=0.2 if quick else 1.0)
        out[np.dtype(dtype).name]["numpy"] = {"per_s_per_core": n / best, "timing_1t": summ, "elements": n}
    return out


def measure_memory(threads, quick=False) -> dict:
    """STREAM triad and copy GB/s (Numba, prange) on 1 and ``threads`` threads."""
    import numba
    import numpy as np

    k = _kernels()
    mib = 16 if quick else STREAM_MIB
    n = mib * (1 << 20) // 8
    a, b, c = (np.empty(n) for _ in range(3))
    for arr, v in ((a, 0.0), (b, 1.0), (c, 2.0)):
        k["fill"](arr, v)  # first touch by the threads that will use the pages
    out = {"array_mib": mib, "arrays": 3, "note": "bytes: triad 3 x 8 per element, copy 2 x 8 (no write-allocate)"}
    if quick:
        out["note"] += "; quick: arrays may fit in the last-level cache"
    for T in _thread_counts(threads):
        numba.set_num_threads(T)
        best, summ = _best(lambda: k["triad"](a, b, c, 3.0), 1, 3 if quick else 10)
        out[f"triad_gbs_{T}t"], out[f"triad_timing_{T}t"] = 3 * 8 * n / best / 1e9, summ
        best, summ = _best(lambda: k["copy"](a, b), 1, 3 if quick else 10)
        out[f"copy_gbs_{T}t"], out[f"copy_timing_{T}t"] = 2 * 8 * n / best / 1e9, summ
    numba.set_num_threads(threads)
    if not (a[0] == 1.0 and a[-1] == 1.0):
        raise RuntimeError("copy kernel wrote the wrong values")
    out["triad_gbs"] = max(out[f"triad_gbs_{T}t"] for T in _thread_counts(threads))
    out["copy_gbs"] = max(out[f"copy_gbs_{T}t"] for T in _thread_counts(threads))
    return out


def measure_gemm(threads, quick=False) -> dict:
    """numpy.matmul sgemm / dgemm GFLOP/s (2 n^3 flops) on 1 and ``threads`` BLAS threads."""
    import numpy as np

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    n = 256 if quick else 2048
    rng = np.random.default_rng(0)
    out = {"n": n, "blas": blas_info()}
    counts = _thread_counts(threads) if threadpool_limits else [None]
    for dtype in (np.float32, np.float64):
        A, B = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
        C = np.empty((n, n), dtype)
        row = {}
        for T in counts:
            if T:
                with threadpool_limits(limits=T, user_api="blas"):
                    best, summ = _best(lambda: np.matmul(A, B, out=C), 1, 3 if quick else 5)
            else:
                best, summ = _best(lambda: np.matmul(A, B, out=C), 1, 3 if quick else 5)
            key = f"{T}t" if T else "pool"
            row[f"gflops_{key}"], row[f"timing_{key}"] = 2.0 * n**3 / best / 1e9, summ
        row["gflops_all"] = max(v for k, v in row.items() if k.startswith("gflops_"))
        out[np.dtype(dtype).name] = row
    return out


def _run_child_worker(worker, threads, env, timeout, extra=()):
    """This script's ``--worker`` in a child process under ``env``: its JSON, or ``{"error": ...}`` when it fails."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--threads", str(threads), *extra]
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if run.returncode:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit status {run.returncode}"}
    try:
        return json.loads(run.stdout)
    except ValueError:
        return {"error": f"no JSON on the worker's output: {run.stdout.strip()[-200:]!r}"}


def measure_gemm_coretype_unset(threads, quick=False, timeout=300):
    """:func:`measure_gemm` in a child process without :data:`CORETYPE_VARS`; None where none of them is set.

    OpenBLAS reads them once, when it loads, so this process cannot drop them itself.
    ``{"error": ...}`` where the child fails.
    """
    if not any(k in os.environ for k in CORETYPE_VARS):
        return None
    res = _run_child_worker("gemm", threads, child_env(threads, unset_coretype=True), timeout, ["--quick"] if quick else [])
    return res if "error" in res else dict(res, unset=[k for k in CORETYPE_VARS if k in os.environ])


def measure_numba(threads, quick=False) -> dict:
    """The figures that depend on Numba's code generation: FMA and the exps (:func:`measure_exp`)."""
    return {"fma": measure_fma(threads, quick), "exp": measure_exp(threads, quick)}


def _zmm_env() -> dict:
    """The environment of a child whose Numba vectorises to 512-bit registers (host features, -prefer-256-bit)."""
    from llvmlite import binding as ll

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["NUMBA_CPU_FEATURES"] = ll.get_host_cpu_features().flatten() + ",-prefer-256-bit"
    return env


def measure_numba_zmm(threads, timeout=300) -> dict:
    """:func:`measure_numba` in a child process with 512-bit vectors preferred; {"error": ...} if that fails."""
    try:
        env = _zmm_env()
    except Exception as exc:
        return {"error": f"host CPU features: {type(exc).__name__}: {exc}"}
    res = _run_child_worker("numba", threads, env, timeout)
    if "error" not in res:
        res["NUMBA_CPU_FEATURES_tail"] = "...,-prefer-256-bit"
    return res


def _exp_source(build, exp) -> str:
    """How :func:`peak_rates` names the exp that set a peak: ``"numba_zmm _exp_weight"``, ``"numpy.exp (1 thread)"``..."""
    where = "" if build == "numba" else f", {build} process"  # the process that timed it (the table's label)
    if exp == "numpy":
        return f"numpy.exp (1 thread{where})"
    if exp == "numba_math_exp":
        return f"{build} math.exp (1 thread)"
    return f"{build} {exp}"


def peak_rates(figures: dict, default_build_only: bool = False) -> dict:
    """The ``"peak"`` section: the best measured rate of each kind, with where it came from (``source``).

    ``flops_per_s[dtype]``: max of the FMA kernel (either build, all threads)
    and the BLAS gemm (as the environment has it, and without
    ``OPENBLAS_CORETYPE`` where that was measured); ``exp_per_s[dtype]``: max of every exp of that dtype
    measured, so that no measured implementation runs faster than a floor
    built on it: the project's vectorised exps (either build, all threads),
    Numba's ``math.exp`` and ``numpy.exp`` (one thread: NumPy ufuncs do not
    thread); ``bytes_per_s``: the triad.
    ``default_build_only``: Numba's default build only, no library (no BLAS,
    no NumPy exp; the ``"peak_numba_default"`` section: what a kernel
    compiled like the project's can reach).
    """
    flops, exps, src = {}, {}, {}
    builds = [("numba", figures.get("numba", {}))]
    if not default_build_only and "error" not in figures.get("numba_zmm", {"error": None}):
        builds.append(("numba_zmm", figures["numba_zmm"]))
    for dtype in ("float32", "float64"):
        cands = [(b["fma"][dtype]["gflops_all"] * 1e9, f"{name} FMA kernel") for name, b in builds if "fma" in b]
        for key, where in (("gemm", ""), ("gemm_coretype_unset", ", OPENBLAS_CORETYPE unset")):
            if not default_build_only and dtype in figures.get(key, {}):
                name = f"BLAS {'s' if dtype == 'float32' else 'd'}gemm{where}"
                cands.append((figures[key][dtype]["gflops_all"] * 1e9, name))
        if cands:
            flops[dtype], src[f"flops_{dtype}"] = max(cands)
    for dtype in ("float32", "float64"):
        cands = []
        for name, b in builds:
            for exp, row in b.get("exp", {}).get(dtype, {}).items():
                if "error" in row or (default_build_only and exp == "numpy"):
                    continue
                rate = row.get("per_s_all", row.get("per_s_per_core"))  # one thread where only that was measured
                if rate is not None:
                    cands.append((rate, _exp_source(name, exp)))
        if cands:
            exps[dtype], src[f"exp_{dtype}"] = max(cands)
    mem = figures.get("memory", {})
    out = {"flops_per_s": flops, "exp_per_s": exps, "source": src}
    if "triad_gbs" in mem:
        out["bytes_per_s"], src["bytes"] = mem["triad_gbs"] * 1e9, "STREAM triad"
    return out


def measure_peaks(threads=None, quick=False, zmm=None) -> dict:
    """Measure this machine's peaks in this process (Numba and BLAS pools limited to ``threads``).

    ``threads`` defaults to Numba's current thread count (``NUMBA_NUM_THREADS``
    when pinned); it is capped at that count. ``quick`` uses small sizes and
    few repeats (a smoke test: the memory arrays may sit in cache, no
    comparison exps): its figures are not the
    machine's. ``zmm`` (default: not ``quick``) also measures the Numba
    figures in a child process with 512-bit vectors preferred. Returns a dict
    with ``fma``, ``exp`` (this process's Numba build), ``numba_zmm``,
    ``gemm`` (and ``gemm_coretype_unset``, :func:`measure_gemm_coretype_unset`),
    ``memory``, ``peak`` and ``peak_numba_default``
    (:func:`peak_rates`).
    """
    import numba

    avail = numba.config.NUMBA_NUM_THREADS
    threads = avail if threads is None else max(1, min(int(threads), avail))
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        figures = {"threads": threads, "quick": bool(quick), "nominal_ghz": _nominal_ghz()}
        figures["numba"] = measure_numba(threads, quick)
        figures["memory"] = measure_memory(threads, quick)
        figures["gemm"] = measure_gemm(threads, quick)
        native = measure_gemm_coretype_unset(threads, quick)
        if native is not None:
            figures["gemm_coretype_unset"] = native
        if zmm is None:
            zmm = not quick
        if zmm:
            figures["numba_zmm"] = measure_numba_zmm(threads)
    finally:
        numba.set_num_threads(previous)
    figures["fma"], figures["exp"] = figures["numba"]["fma"], figures["numba"]["exp"]
    figures["peak"] = peak_rates(figures)
    figures["peak_numba_default"] = peak_rates(figures, default_build_only=True)
    figures["measure_seconds"] = time.perf_counter() - t0
    return figures


# --------------------------------------------------------------------------- floors


def _rates(peaks: dict) -> dict:
    return peaks["peak"] if "peak" in peaks else peaks


def _dtype_name(nbytes: int) -> str:
    if nbytes not in (4, 8):
        raise ValueError(f"dtype_bytes must be 4 or 8, not {nbytes}")
    return f"float{8 * nbytes}"


def mixture_score_floor(N, D, K, peaks, dtype_bytes=4, exp_dtype_bytes=8) -> dict:
    r"""The minimum time of one isotropic mixture score evaluation (N points, D dims, K components) on this machine.

    Work, counted per (particle, component) pair, D the dimension:

    * logit: per dimension the difference :math:`z=x-\gamma\mu_k` (1 flop)
      and its square accumulated (an FMA: 2) -> ``3 D``;
    * score accumulation :math:`\sum_k (r_k/c_k)(\gamma\mu_k-x)`: per dimension
      about 3 (difference or its reuse, weight product, accumulate) -> ``3 D``;
    * logit scale and normaliser, softmax subtract / normalise: ``2``;

    so ``flops = N K (6 D + 2)`` in the data's dtype (``dtype_bytes``: 4 for
    float32, 8 for float64), against ``peaks["peak"]["flops_per_s"][dtype]``
    (FMA counted as 2 flops). ``exps = N K`` (one softmax weight per pair) in
    the logits' dtype (``exp_dtype_bytes``: 4 when the softmax may run in
    float32, as for float32 data, which is the stricter floor where the
    float32 exp is faster) against ``peaks["peak"]["exp_per_s"]``.
    ``bytes = 2 N D dtype_bytes`` (read x, write the score; the O(K D)
    mixture constants are left out) against ``peaks["peak"]["bytes_per_s"]``.

    Each bound is work / rate; the floor is the largest, and ``bound`` names
    it ("flops", "exp" or "bytes"). ``peaks`` is :func:`measure_peaks`' dict
    (or its JSON; its ``"peak"`` section is used) or one such section alone
    (e.g. ``peaks["peak_numba_default"]``: the floor of Numba's default
    256-bit build). Example: N = 1000, D = 2,
    K = 8, float32, 1e11 flop/s, 1e9 exp/s, 1e10 B/s: 112 000 flops ->
    1.12 us, 8000 exps -> 8 us, 16 000 bytes -> 1.6 us: floor 8 us, exp-bound.
    """
    rates = _rates(peaks)
    dtype, exp_dtype = _dtype_name(dtype_bytes), _dtype_name(exp_dtype_bytes)
    if exp_dtype not in rates["exp_per_s"]:
        raise ValueError(f"no {exp_dtype} exp throughput measured (have {sorted(rates['exp_per_s'])})")
    pairs = N * K
    flops = pairs * (6 * D + 2)
    exps = pairs
    nbytes = 2 * N * D * dtype_bytes
    bounds = {
        "flops": flops / rates["flops_per_s"][dtype],
        "exp": exps / rates["exp_per_s"][exp_dtype],
        "bytes": nbytes / rates["bytes_per_s"],
    }
    bound = max(bounds, key=bounds.get)
    return {
        "N": N, "D": D, "K": K, "dtype": dtype, "exp_dtype": exp_dtype,
        "flops": flops, "exps": exps, "bytes": nbytes,
        "flops_s": bounds["flops"], "exp_s": bounds["exp"], "bytes_s": bounds["bytes"],
        "floor_s": bounds[bound], "bound": bound,
        "rates": {"flops_per_s": rates["flops_per_s"][dtype], "exp_per_s": rates["exp_per_s"][exp_dtype],
                  "bytes_per_s": rates["bytes_per_s"]},
    }  # fmt: skip


def achieved(floor: dict, seconds: float, goal: float = GOAL_FRACTION) -> dict:
    """A measured time against a floor: achieved GFLOP/s, Gexp/s and GB/s, each as a fraction of its peak.

    ``floor_fraction = floor_s / seconds`` (1.0: at the machine's floor);
    ``goal_met`` is ``floor_fraction >= goal``.
    """
    r = floor["rates"]
    frac = floor["floor_s"] / seconds
    return {
        "seconds": seconds,
        "gflops": floor["flops"] / seconds / 1e9, "flops_fraction": floor["flops"] / seconds / r["flops_per_s"],
        "gexp_per_s": floor["exps"] / seconds / 1e9, "exp_fraction": floor["exps"] / seconds / r["exp_per_s"],
        "gbs": floor["bytes"] / seconds / 1e9, "bytes_fraction": floor["bytes"] / seconds / r["bytes_per_s"],
        "bound": floor["bound"], "floor_fraction": frac, "goal": goal, "goal_met": frac >= goal,
    }  # fmt: skip


# --------------------------------------------------------------------------- cache, table, main


def load_or_measure_peaks(path=DEFAULT_JSON, max_age_s=7 * 86400, threads=2, python=None) -> dict:
    """This script's JSON from ``path`` if it is recent enough, else measure afresh (a child process) and return that.

    A cached result is reused when it is a full (not quick) run, at most
    ``max_age_s`` old, for ``threads`` threads, on this CPU model, and (where
    :data:`CORETYPE_VARS` are set here) holds the BLAS figures measured
    without them (:func:`measure_gemm_coretype_unset`); otherwise
    ``python benchmarks/machine_peak.py --threads threads --json path`` runs
    (some tens of seconds) and its JSON is returned. The dict it returns can
    be passed to :func:`mixture_score_floor` as ``peaks``.
    """
    from _common import cpu_model

    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        fresh = (
            payload.get("benchmark") == "machine_peak"
            and not payload.get("quick")
            and time.time() - float(payload.get("measured_at", 0)) <= max_age_s
            and int(payload.get("threads", -1)) == int(threads)
            and payload.get("machine", {}).get("cpu_model") == cpu_model()
            and "peak" in payload
            and (not any(k in os.environ for k in CORETYPE_VARS)
                 or "error" not in payload.get("gemm_coretype_unset", {"error": "not measured"}))
        )
        if fresh:
            return payload
    except (OSError, ValueError, TypeError):
        pass
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--json", str(path)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if run.returncode:
        raise RuntimeError(f"machine_peak.py failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    return json.loads(path.read_text())


def _fmt(x, scale=1.0, digits=1):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x / scale:.{digits}f}"


def table(p: dict) -> str:
    """A readable summary of :func:`measure_peaks`' dict."""
    T = p["threads"]
    zmm = p.get("numba_zmm", {})
    lines = [f"machine peaks, {T} thread(s){' (QUICK: not the machine figures)' if p.get('quick') else ''}; "
             f"nominal clock {_fmt(p.get('nominal_ghz'), 1, 2)} GHz"]  # fmt: skip
    load, cpus = p.get("machine", {}).get("load_average"), p.get("machine", {}).get("cpus") or 1
    if load and load[0] > 0.5 * cpus:
        lines.append(f"note: load average {load[0]:.2f} on {cpus} CPUs before measuring: the figures may be low")
    lines.append(f"{'FMA (GFLOP/s)':<34} {'1 thread':>10} {f'{T} threads':>10}  notes")
    for build, figs in (("numba", p["fma"]), ("numba_zmm", zmm.get("fma"))):
        if not figs:
            continue
        for dtype, row in figs.items():
            note = f"{row['vector_register']}, {_fmt(row.get('flops_per_cycle_at_nominal'))} flop/cycle/core at nominal"
            lines.append(f"  {build + ' ' + dtype:<32} {_fmt(row['gflops_1t']):>10} {_fmt(row.get(f'gflops_{T}t')):>10}  {note}")
    if "error" in zmm:
        lines.append(f"  numba_zmm: not measured ({zmm['error']})")
    for key, note in (("gemm", ""), ("gemm_coretype_unset", "OPENBLAS_CORETYPE unset")):
        g = p.get(key)
        if g is None:
            continue
        if "error" in g:
            lines.append(f"  BLAS gemm, {note}: not measured ({g['error']})")
            continue
        for dtype in ("float32", "float64"):
            row = g[dtype]
            lines.append(f"  {'BLAS ' + ('s' if dtype == 'float32' else 'd') + 'gemm n=' + str(g['n']):<32} "
                         f"{_fmt(row.get('gflops_1t', row.get('gflops_pool'))):>10} {_fmt(row.get(f'gflops_{T}t')):>10}  {note}".rstrip())  # fmt: skip
    m = p["memory"]
    lines.append(f"{'memory (GB/s), 3 x ' + str(m['array_mib']) + ' MiB':<34} {'1 thread':>10} {f'{T} threads':>10}")
    for kind in ("triad", "copy"):
        lines.append(f"  {kind:<32} {_fmt(m[f'{kind}_gbs_1t']):>10} {_fmt(m.get(f'{kind}_gbs_{T}t')):>10}")
    lines.append(f"{'exp (G elements/s)':<34} {'1 thread':>10} {f'{T} threads':>10}  max rel err")
    for build, figs in (("numba", p["exp"]), ("numba_zmm", zmm.get("exp"))):
        if not figs:
            continue
        for dtype in ("float64", "float32"):
            for name, row in figs.get(dtype, {}).items():
                # every exp here may set the peak (peak_rates); the child process's are labelled with its build
                label = f"{build if name.startswith('_exp') or build != 'numba' else ''} {name} {dtype}".strip()
                if "error" in row:
                    lines.append(f"  {label:<32} not measured: {row['error']}")
                    continue
                err = row.get("timing_1t", {}).get("max_rel_err")
                one = _fmt(row.get("per_s_1t", row.get("per_s_per_core")), 1e9, 2)
                all_ = _fmt(row.get(f"per_s_{T}t") if T > 1 else None, 1e9, 2)
                lines.append(f"  {label:<32} {one:>10} {all_:>10}  {'-' if err is None else f'{err:.1e}'}")
    for key, title in (("peak", "peaks used for floors (best measured)"),
                       ("peak_numba_default", "peaks of Numba's default build (no BLAS, no NumPy, no zmm)")):  # fmt: skip
        pk = p.get(key)
        if not pk:
            continue
        lines.append(f"{title}:")
        for dtype, v in pk["flops_per_s"].items():
            lines.append(f"  flops {dtype:<26} {_fmt(v, 1e9):>10} GFLOP/s  ({pk['source'][f'flops_{dtype}']})")
        for dtype, v in pk["exp_per_s"].items():
            lines.append(f"  exp {dtype:<28} {_fmt(v, 1e9, 2):>10} G/s      ({pk['source'][f'exp_{dtype}']})")
        if "bytes_per_s" in pk:
            lines.append(f"  {'bandwidth':<32} {_fmt(pk['bytes_per_s'], 1e9):>10} GB/s     ({pk['source']['bytes']})")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke test, not the machine's figures")
    ap.add_argument("--no-zmm", action="store_true", help="skip the 512-bit Numba build (a child process)")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    ap.add_argument("--worker", choices=("all", "numba", "gemm"))
    args = ap.parse_args(argv)
    if args.worker == "numba":
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
        print(json.dumps(measure_numba(numba.get_num_threads(), args.quick)))
        return 0
    if args.worker == "gemm":
        print(json.dumps(measure_gemm(args.threads, args.quick)))
        return 0
    if args.worker == "all":
        print(json.dumps(measure_peaks(args.threads, args.quick, zmm=not (args.quick or args.no_zmm))))
        return 0

    # Numba's OpenMP layer with OpenMP's own wait policy, as the mixture score's worker runs: on two shared cores
    # the workqueue layer held the two-thread FMA kernel to 205 GFLOP/s in runs where OpenMP reached 400
    env = child_env(args.threads, numba_layer="omp", omp_wait_policy=None)
    cmd = [sys.executable, __file__, "--worker", "all", "--threads", str(args.threads)]
    cmd += (["--quick"] if args.quick else []) + (["--no-zmm"] if args.no_zmm else [])
    info_before = machine_info()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if run.returncode:
        sys.stderr.write(run.stderr)
        return 2
    peaks = json.loads(run.stdout)
    payload = {
        "benchmark": "machine_peak",
        "measured_at": time.time(),
        "machine": info_before,
        "load_average_after": machine_info()["load_average"],
        "env": recorded_env(env),
        **peaks,
    }
    path = write_json(args.json, payload)
    print(table(payload))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
