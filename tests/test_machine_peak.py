"""benchmarks/machine_peak.py: the floor arithmetic by hand, the peak selection, the JSON cache, one quick measurement."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
import machine_peak  # noqa: E402
from _common import CORETYPE_VARS, child_env, cpu_flags, cpu_model  # noqa: E402

HAVE_NUMBA = importlib.util.find_spec("numba") is not None

# Hand-made rates (the "peak" section's shape).
RATES = {
    "flops_per_s": {"float32": 1e11, "float64": 5e10},
    "exp_per_s": {"float64": 1e9},
    "bytes_per_s": 1e10,
}


def test_import_is_light():
    """Other benchmarks import the module into light processes: no NumPy, no Numba at module level."""
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); import machine_peak; "
        "heavy = [m for m in ('numpy', 'numba', 'llvmlite') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr


def test_floor_exp_bound():
    """The docstring's example: N = 1000, D = 2, K = 8, float32."""
    f = machine_peak.mixture_score_floor(1000, 2, 8, RATES, dtype_bytes=4)
    assert f["flops"] == 1000 * 8 * (6 * 2 + 2) == 112_000
    assert f["exps"] == 8000
    assert f["bytes"] == 2 * 1000 * 2 * 4 == 16_000
    assert f["flops_s"] == pytest.approx(1.12e-6)
    assert f["exp_s"] == pytest.approx(8e-6)
    assert f["bytes_s"] == pytest.approx(1.6e-6)
    assert f["bound"] == "exp" and f["floor_s"] == pytest.approx(8e-6)
    assert f["dtype"] == "float32" and f["exp_dtype"] == "float64"


def test_floor_flops_bound_float64():
    """N = 1000, D = 64, K = 128, float64: 49 408 000 flops at 5e10/s (the float64 rate) = 988.16 us."""
    f = machine_peak.mixture_score_floor(1000, 64, 128, RATES, dtype_bytes=8)
    assert f["flops"] == 128_000 * 386
    assert f["flops_s"] == pytest.approx(9.8816e-4)
    assert f["exp_s"] == pytest.approx(1.28e-4)
    assert f["bytes"] == 1_024_000 and f["bytes_s"] == pytest.approx(1.024e-4)
    assert f["bound"] == "flops" and f["floor_s"] == pytest.approx(9.8816e-4)
    assert f["rates"]["flops_per_s"] == 5e10


def test_floor_bytes_bound_and_full_payload():
    """N = 1000, D = 100, K = 1, float32: 800 000 bytes at 1e10 B/s = 80 us; a whole payload works as ``peaks``."""
    payload = {"benchmark": "machine_peak", "peak": RATES, "peak_numba_default": {**RATES, "bytes_per_s": 1.0}}
    f = machine_peak.mixture_score_floor(1000, 100, 1, payload)
    assert f["flops_s"] == pytest.approx(6.02e-6) and f["exp_s"] == pytest.approx(1e-6)
    assert f["bound"] == "bytes" and f["floor_s"] == pytest.approx(8e-5)
    g = machine_peak.mixture_score_floor(1000, 100, 1, payload["peak_numba_default"])
    assert g["floor_s"] == pytest.approx(800_000.0)  # one section alone: its own bandwidth


def test_floor_rejects_what_was_not_measured():
    with pytest.raises(ValueError, match="float32 exp"):
        machine_peak.mixture_score_floor(10, 2, 3, RATES, exp_dtype_bytes=4)
    with pytest.raises(ValueError, match="dtype_bytes"):
        machine_peak.mixture_score_floor(10, 2, 3, RATES, dtype_bytes=2)


def test_achieved_against_the_floor():
    f = machine_peak.mixture_score_floor(1000, 2, 8, RATES)  # floor 8 us, exp-bound
    a = machine_peak.achieved(f, 1.6e-5)
    assert a["floor_fraction"] == pytest.approx(0.5) and a["goal_met"] and a["bound"] == "exp"
    assert a["gflops"] == pytest.approx(7.0)  # 112 000 flops in 16 us
    assert a["flops_fraction"] == pytest.approx(0.07)
    assert a["exp_fraction"] == pytest.approx(0.5)
    assert a["gbs"] == pytest.approx(1.0) and a["bytes_fraction"] == pytest.approx(0.1)
    assert machine_peak.achieved(f, 1.9e-5)["goal_met"]  # 0.42
    assert not machine_peak.achieved(f, 2.1e-5)["goal_met"]  # 0.38
    assert machine_peak.GOAL_FRACTION == 0.4


def test_peak_rates_takes_the_best_and_says_where():
    def numba_figs(f32, f64, weight, weight32):
        return {"fma": {"float32": {"gflops_all": f32}, "float64": {"gflops_all": f64}},
                "exp": {"float64": {"_exp_weight": {"per_s_all": weight}, "numpy": {"per_s_per_core": 1e8}},
                        "float32": {"_exp_weight32": {"per_s_all": weight32}, "numpy": {"per_s_per_core": 1e8}}}}  # fmt: skip

    figures = {
        "numba": numba_figs(100.0, 50.0, 2e9, 5e9),
        "numba_zmm": numba_figs(200.0, 90.0, 3e9, 4e9),
        "gemm": {"float32": {"gflops_all": 150.0}, "float64": {"gflops_all": 95.0}},
        "memory": {"triad_gbs": 30.0, "copy_gbs": 40.0},
    }
    p = machine_peak.peak_rates(figures)
    assert p["flops_per_s"] == {"float32": 200e9, "float64": 95e9}
    assert p["source"]["flops_float32"] == "numba_zmm FMA kernel" and p["source"]["flops_float64"] == "BLAS dgemm"
    assert p["exp_per_s"] == {"float32": 5e9, "float64": 3e9}  # the project's exps beat NumPy's here
    assert p["source"]["exp_float32"] == "numba _exp_weight32"
    assert p["bytes_per_s"] == 30e9
    d = machine_peak.peak_rates(figures, default_build_only=True)
    assert d["flops_per_s"] == {"float32": 100e9, "float64": 50e9} and d["exp_per_s"] == {"float32": 5e9, "float64": 2e9}
    figures["numba_zmm"] = {"error": "no llvmlite"}
    assert machine_peak.peak_rates(figures)["flops_per_s"]["float32"] == 150e9
    # the BLAS timed without OPENBLAS_CORETYPE (its own kernels for this CPU) counts too, and is named
    figures["gemm_coretype_unset"] = {"float32": {"gflops_all": 400.0}, "float64": {"gflops_all": 60.0}}
    p = machine_peak.peak_rates(figures)
    assert p["flops_per_s"] == {"float32": 400e9, "float64": 95e9}
    assert p["source"]["flops_float32"] == "BLAS sgemm, OPENBLAS_CORETYPE unset"
    assert machine_peak.peak_rates(figures, default_build_only=True)["flops_per_s"]["float32"] == 100e9


def test_exp_peak_counts_every_measured_exp():
    """A floor must not be beatable by an exp this machine measured: NumPy's sets the peak when it is the fastest."""
    figures = {
        "numba": {"exp": {"float64": {"_exp_weight": {"per_s_all": 2e9},
                                      "numba_math_exp": {"per_s_per_core": 2.5e8},
                                      "numpy": {"per_s_per_core": 4e9}},
                          "float32": {"_exp_weight32": {"error": "ImportError: under edit"},
                                      "numpy": {"per_s_per_core": 3e9}}}},
        "numba_zmm": {"exp": {"float64": {"_exp_weight": {"per_s_all": 3e9}, "numpy": {"per_s_per_core": 3.9e9}}}},
        "memory": {"triad_gbs": 30.0},
    }  # fmt: skip
    p = machine_peak.peak_rates(figures)
    assert p["exp_per_s"] == {"float64": 4e9, "float32": 3e9}
    assert p["source"]["exp_float64"] == "numpy.exp (1 thread)"  # which implementation set it is recorded
    assert p["source"]["exp_float32"] == "numpy.exp (1 thread)"  # the project's exp failed to import: not counted
    numpy_s = 1000 * 8 / 4e9  # NumPy's exps of a score at N = 1000, K = 8
    floor = machine_peak.mixture_score_floor(1000, 2, 8, {**p, "flops_per_s": {"float32": 1e12}})
    assert floor["exp_s"] == pytest.approx(numpy_s)  # NumPy's exp alone does not run below the floor
    figures["numba"]["exp"]["float64"]["numba_math_exp"]["per_s_per_core"] = 5e9  # a faster libm: it counts too
    assert machine_peak.peak_rates(figures)["source"]["exp_float64"] == "numba math.exp (1 thread)"
    d = machine_peak.peak_rates(figures, default_build_only=True)  # Numba's default build: no library's exp
    assert d["exp_per_s"] == {"float64": 5e9} and "exp_float32" not in d["source"]


def test_load_or_measure_reuses_a_fresh_json_only(tmp_path, monkeypatch):
    for k in CORETYPE_VARS:  # set below, where the test asks for it
        monkeypatch.delenv(k, raising=False)
    path = tmp_path / "machine_peak.json"
    payload = {"benchmark": "machine_peak", "quick": False, "measured_at": time.time() - 10, "threads": 2,
               "machine": {"cpu_model": cpu_model()}, "peak": RATES}  # fmt: skip
    path.write_text(json.dumps(payload))
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(dict(payload, measured_at=time.time(), fresh=True)))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(machine_peak.subprocess, "run", fake_run)
    assert machine_peak.load_or_measure_peaks(path, max_age_s=60, threads=2) == payload and not calls
    assert machine_peak.load_or_measure_peaks(path, max_age_s=5, threads=2)["fresh"]  # too old: measured again
    assert calls[-1][-4:] == ["--threads", "2", "--json", str(path)]
    for stale in ({"quick": True}, {"threads": 1}, {"machine": {"cpu_model": "another CPU"}}):
        path.write_text(json.dumps(dict(payload, **stale)))
        n = len(calls)
        assert machine_peak.load_or_measure_peaks(path, max_age_s=60, threads=2)["fresh"] and len(calls) == n + 1
    # with OPENBLAS_CORETYPE set here, a JSON without the BLAS measured without it would give too lenient a floor
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    for stale in ({}, {"gemm_coretype_unset": {"error": "exit status 1"}}):
        path.write_text(json.dumps(dict(payload, **stale)))
        n = len(calls)
        assert machine_peak.load_or_measure_peaks(path, max_age_s=60, threads=2)["fresh"] and len(calls) == n + 1
    path.write_text(json.dumps(dict(payload, gemm_coretype_unset={"float32": {"gflops_all": 400.0}})))
    n = len(calls)
    assert "fresh" not in machine_peak.load_or_measure_peaks(path, max_age_s=60, threads=2) and len(calls) == n


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (pip install 'refdiff[fast]')")
def test_quick_measurement():
    """measure_peaks(quick=True) in a pinned worker process (about 1-3 s): positive finite figures, fp32 FMA >= fp64."""
    cmd = [sys.executable, str(BENCH / "machine_peak.py"), "--worker", "all", "--quick", "--threads", "2"]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=child_env(2), capture_output=True, text=True, cwd=REPO, timeout=120)
    elapsed = time.perf_counter() - t0
    assert run.returncode == 0, run.stderr[-2000:]
    p = json.loads(run.stdout)
    assert p["quick"] is True and p["threads"] >= 1 and "numba_zmm" not in p
    assert ("gemm_coretype_unset" in p) == any(k in os.environ for k in CORETYPE_VARS)

    def finite_positive(x):
        return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

    fma = p["fma"]
    for dtype in ("float32", "float64"):
        assert finite_positive(fma[dtype]["gflops_per_core"]) and finite_positive(fma[dtype]["gflops_all"])
        assert finite_positive(p["gemm"][dtype]["gflops_all"])
        if "avx2" in cpu_flags():  # the loop over lanes compiled to vector FMAs (xmm: scalar or 128-bit only)
            assert fma[dtype]["vector_register"] in ("zmm", "ymm"), fma[dtype]
    assert fma["float32"]["gflops_per_core"] >= fma["float64"]["gflops_per_core"]
    if "gemm_coretype_unset" in p:  # the child ran and measured
        assert "error" not in p["gemm_coretype_unset"], p["gemm_coretype_unset"]
        assert finite_positive(p["gemm_coretype_unset"]["float32"]["gflops_all"])
    assert finite_positive(p["memory"]["triad_gbs"]) and finite_positive(p["memory"]["copy_gbs"])
    weight = p["exp"]["float64"]["_exp_weight"]
    assert "error" not in weight, weight
    assert finite_positive(weight["per_s_all"]) and weight["timing_1t"]["max_rel_err"] < 1e-14
    assert finite_positive(p["exp"]["float64"]["numpy"]["per_s_per_core"])
    assert all(finite_positive(v) for v in p["peak"]["flops_per_s"].values())
    assert finite_positive(p["peak"]["exp_per_s"]["float64"]) and finite_positive(p["peak"]["bytes_per_s"])
    f = machine_peak.mixture_score_floor(100_000, 2, 8, p)
    assert f["floor_s"] > 0 and f["bound"] in ("flops", "exp", "bytes")
    print(f"quick measurement: {elapsed:.1f} s")


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (pip install 'refdiff[fast]')")
def test_project_exp_rate_is_a_rate_and_leaves_the_thread_count():
    """The exp rate a benchmark measures beside its timings: positive, finite, of the order the float32 exp runs
    at (more than 1e7 and less than 1e12 exps a second on any CPU), and Numba's thread count as it was."""
    import numba

    before = numba.get_num_threads()
    rate = machine_peak.project_exp_rate(1, "float32")
    assert math.isfinite(rate) and 1e7 < rate < 1e12
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="no float16 exp"):
        machine_peak.project_exp_rate(1, "float16")  # no project exp of that dtype
