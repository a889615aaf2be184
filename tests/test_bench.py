"""refdiff bench: command lines, the parsers of each script's JSON, the missing-checkout error, one quick run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refdiff import bench, cli
from refdiff.cli_models import BENCH_NAMES

REPO = Path(__file__).resolve().parent.parent


# --- hand-made payloads, shaped like each script's JSON (only the keys the parsers need, plus a few others) ---


def mlp_payload(with_torch=True):
    def cfg(width, batch, numpy_ms, numba_ms, torch_ms):
        backends = {"numpy": {"median_ms": numpy_ms, "min_ms": numpy_ms * 0.9},
                    "numba": {"median_ms": numba_ms, "min_ms": numba_ms * 0.9}}
        best = min(backends, key=lambda b: backends[b]["median_ms"])
        c = {"width": width, "batch": batch, "refdiff_backends": backends, "refdiff_best": best,
             "refdiff": backends[best]}
        if with_torch:
            c["torch"] = {"for-loop": {"median_ms": torch_ms * 2}, "fused": {"median_ms": torch_ms}}
            c["torch_best"] = "fused"
            c["ratio_median"] = torch_ms / backends[best]["median_ms"]
            c["ratio_min"] = 99.0  # a decoy: the table uses medians
        return c

    return {"benchmark": "mlp_step", "goal": {"ratio_at_least": 1.3, "definition": "..."},
            "runs": [{"openblas_coretype": None, "coretype_unset": False, "dtype": "float32", "goal_met": False,
                      "configs": [cfg(128, 256, 1.0, 2.0, 1.5), cfg(512, 4096, 80.0, 40.0, 44.0)]}]}


def cnn_payload(with_torch=True):
    p = {"benchmark": "cnn_step", "batch": 256, "dtype": "float32",
         "model": {"kind": "unet", "config": {"image_shape": [1, 8, 8], "channels": 32, "channel_mult": [1, 2]}},
         "refdiff": {"min_ms": 190.0, "median_ms": 200.0, "max_ms": 210.0}}
    if with_torch:
        p["torch"] = {"min_ms": 70.0, "median_ms": 80.0, "max_ms": 90.0}
        p["ratio_median"] = 2.5  # refdiff / torch in the script's own convention
    return p


def mixture_payload():
    return {"benchmark": "mixture_score", "dtype": "float32", "torch": "2.x", "rows": [
        {"N": 100000, "D": 2, "K": 8, "numpy": {"median_ms": 6.0, "min_ms": 5.0}, "numba": {"median_ms": 3.0, "min_ms": 1.0},
         "torch": {"median_ms": 12.0, "min_ms": 11.0}, "speedup_numba_vs_numpy": 2.0},
        {"N": 10000, "D": 64, "K": 128, "numpy": {"median_ms": 360.0}, "numba": {"median_ms": 12.0},
         "torch": {"median_ms": 6.0}},
    ], "crossover": []}


def fused_payload(ok=True):
    return {"benchmark": "fused_sampler", "sizes": {"n": 100000, "steps": 1000, "ref_steps": 100, "dtype": "float64"},
            "jax_whole_loop_s": 3.0, "check": {"max_abs_diff": 1e-14 if ok else 1.0, "tol": 1e-10, "ok": ok},
            "numba": {"min_ms": 900.0, "median_ms": 950.0}, "numpy_reference_measured": {"min_ms": 1400.0, "rows": 100},
            "numpy_reference_extrapolated_ms": 14000.0, "speedup_vs_reference": 14000.0 / 900.0,
            "speedup_vs_jax_whole_loop": 3000.0 / 900.0, "goal_met": True, "rows": 1001}


# --- names, folder, command lines ---------------------------------------------------------------------


def test_cli_names_match_the_module():
    assert tuple(BENCH_NAMES) == bench.BENCHMARKS
    assert set(bench.QUICK_ARGS) == set(bench.BENCHMARKS) == set(bench.PARSERS)


def test_scripts_found_in_this_checkout():
    folder = bench.find_benchmarks()
    assert folder == REPO / "benchmarks"


def test_missing_benchmarks_folder(tmp_path):
    pkg = tmp_path / "site-packages" / "refdiff"
    pkg.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="source checkout"):
        bench.find_benchmarks(pkg / "__init__.py")


def test_missing_benchmarks_folder_is_a_usage_error(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "refdiff" / "__init__.py"
    real = bench.find_benchmarks
    monkeypatch.setattr(bench, "find_benchmarks", lambda package_file=None: real(fake))
    assert cli.main(["bench", "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refdiff bench: error: the benchmark scripts live in the source checkout")
    assert "\n" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_benchmark_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--only", "ring_quality"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_build_command_quick_and_full(tmp_path):
    folder, out = tmp_path / "benchmarks", tmp_path / "r" / "mlp_step.json"
    cmd = bench.build_command("mlp_step", folder, out, quick=True, torch_python="/t/python", python="py")
    assert cmd == ["py", str(folder / "mlp_step.py"), "--quick", "--torch-python", "/t/python", "--json", str(out)]
    full = bench.build_command("mlp_step", folder, out, quick=False, torch_python=None, python="py")
    assert full == ["py", str(folder / "mlp_step.py"), "--torch-python", "none", "--json", str(out)]
    cnn = bench.build_command("cnn_step", folder, out, quick=True, python="py")
    assert cnn[2:] == ["--warmup", "1", "--repeat", "5", "--rounds", "1", "--json", str(out)]
    assert "--torch-python" in bench.build_command("cnn_step", folder, out, torch_python="/t/python")
    mix = bench.build_command("mixture_score", folder, out, quick=True, torch_python=None)
    assert mix[0] == sys.executable
    assert mix[2:] == ["--repeat", "5", "--no-torch-compile", "--torch-python", "", "--json", str(out)]
    fused = bench.build_command("fused_sampler", folder, out, quick=True, torch_python="/t/python")
    assert fused[-4:] == ["--torch-python", "/t/python", "--json", str(out)] and "--ref-steps" in fused
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.build_command("ring_quality", folder, out)


def test_quick_options_are_accepted_by_the_scripts():
    """Every option bench passes exists in the script's own parser (read from its source, nothing run)."""
    for name, opts in bench.QUICK_ARGS.items():
        source = (REPO / "benchmarks" / f"{name}.py").read_text()
        for opt in [o for o in opts if o.startswith("--")] + ["--json"]:
            assert f'"{opt}"' in source, (name, opt)
        if name in bench.TORCH_PEER:
            assert '"--torch-python"' in source


def test_skips():
    assert bench.skip_reason("fused_sampler", numba_available=False).startswith("numba is not installed")
    assert bench.skip_reason("mixture_score", numba_available=False)
    assert bench.skip_reason("mlp_step", numba_available=False) is None
    assert bench.skip_reason("fused_sampler", numba_available=True) is None
    assert bench.find_torch_python("none")[0] is None
    python, version, reason = bench.find_torch_python("/no/such/python")
    assert python is None and version is None and "/no/such/python" in reason


# --- parsers ----------------------------------------------------------------------------------------------


def test_parse_mlp_step():
    rows = bench.parse_result("mlp_step", mlp_payload())
    assert [r["size"] for r in rows] == ["W128 N256 float32", "W512 N4096 float32"]
    a, b = rows
    assert a["backend"] == "numpy" and a["refdiff_ms"] == 1.0 and a["reference_ms"] == 1.0
    assert a["peer"] == "torch (fused Adam)" and a["peer_ms"] == 1.5
    assert a["vs_peer"] == pytest.approx(1.5) and a["vs_reference"] == pytest.approx(1.0)
    assert a["goal"] == "vs peer >= 1.3" and a["met"] is True
    assert b["backend"] == "numba" and b["vs_reference"] == pytest.approx(2.0)
    assert b["vs_peer"] == pytest.approx(1.1) and b["met"] is False
    no_torch = bench.parse_result("mlp_step", mlp_payload(with_torch=False))
    assert all(r["peer"] is None and r["vs_peer"] is None and r["met"] is None for r in no_torch)


def test_parse_mlp_step_two_coretype_runs():
    p = mlp_payload()
    p["runs"].append({**p["runs"][0], "openblas_coretype": None, "coretype_unset": True})
    p["runs"][0]["openblas_coretype"] = "Haswell"
    sizes = [r["size"] for r in bench.parse_result("mlp_step", p)]
    assert sizes[0].endswith("coretype set") and sizes[-1].endswith("coretype unset") and len(sizes) == 4


def test_parse_cnn_step():
    (row,) = bench.parse_result("cnn_step", cnn_payload())
    assert row["size"] == "U-Net 1x8x8 ch 32x1,2 B256"
    assert row["refdiff_ms"] == 200.0 and row["peer_ms"] == 80.0
    assert row["vs_peer"] == pytest.approx(0.4)  # torch / refdiff, not the script's refdiff / torch
    assert row["met"] is False and row["goal"] == "vs peer >= 0.5 (within 2x)"  # 200 ms vs 80 ms: 2.5x
    assert row["backend"] == "numpy" and row["reference_ms"] == 200.0  # an older JSON: the NumPy-only U-Net
    (alone,) = bench.parse_result("cnn_step", cnn_payload(with_torch=False))
    assert alone["peer"] is None and alone["met"] is None
    (auto,) = bench.parse_result("cnn_step", dict(cnn_payload(), backend="auto"))
    assert auto["backend"] == "auto" and auto["reference_ms"] is None  # the NumPy-only step was not timed


def test_parse_mixture_score():
    a, b = bench.parse_result("mixture_score", mixture_payload())
    assert a["size"] == "N=100000 D=2 K=8 float32" and a["backend"] == "numba"
    assert a["refdiff_ms"] == 3.0 and a["reference_ms"] == 6.0 and a["peer_ms"] == 12.0  # medians, not minima
    assert a["vs_reference"] == pytest.approx(2.0) and a["vs_peer"] == pytest.approx(4.0)
    # the goal is the recorded JAX jit time, not the torch peer: 3.0 ms > 1.78 ms
    assert a["goal"] == "<= JAX jit 1.78 ms (recorded)" and a["met"] is False
    assert b["vs_reference"] == pytest.approx(30.0) and b["vs_peer"] == pytest.approx(0.5) and b["met"] is False
    p = mixture_payload()
    del p["rows"][0]["torch"]
    p["rows"][0]["numba"]["median_ms"] = 1.5
    fast = bench.parse_result("mixture_score", p)[0]
    assert fast["peer"] is None and fast["met"] is True
    p["rows"][0]["N"] = 7  # a size with no recorded goal
    assert bench.parse_result("mixture_score", p)[0]["met"] is None


def test_parse_mixture_score_measured_jax_is_the_goal():
    p = mixture_payload()
    p["rows"][0]["jax"] = {"median_ms": 3.5, "min_ms": 3.4}  # slower than numba's 3.0 ms; the recorded 1.78 is not used
    p["rows"][1]["jax"] = {"median_ms": 8.0}
    a, b = bench.parse_result("mixture_score", p)
    assert a["goal"] == "<= JAX jit 3.5 ms (measured)" and a["met"] is True
    assert a["peer"] == "torch" and a["peer_ms"] == 12.0  # the peer column stays torch
    assert b["goal"] == "<= JAX jit 8 ms (measured)" and b["met"] is False


def test_parse_mixture_score_floor_joins_the_goal_at_small_d():
    p = mixture_payload()
    p["rows"][0]["jax"] = {"median_ms": 3.5}  # numba 3.0 ms beats it
    p["rows"][0]["floor"] = {"achieved": {"goal": 0.4, "floor_fraction": 0.35, "goal_met": False}}
    p["rows"][1]["floor"] = {"achieved": {"goal": 0.4, "floor_fraction": 0.1, "goal_met": False}}  # D = 16: no floor goal
    a, b = bench.parse_result("mixture_score", p)
    assert a["goal"] == "<= JAX jit 3.5 ms (measured); >= 40% of the machine floor (at 35%)" and a["met"] is False
    p["rows"][0]["floor"]["achieved"].update(floor_fraction=0.5, goal_met=True)
    assert bench.parse_result("mixture_score", p)[0]["met"] is True
    assert "floor" not in b["goal"]


def test_parse_mixture_score_floor_of_the_same_run_comes_first():
    """A row with the floor at the exp rate measured beside its timing is judged by that one."""
    p = mixture_payload()
    p["rows"][0]["jax"] = {"median_ms": 3.5}
    p["rows"][0]["floor"] = {"achieved": {"goal": 0.4, "floor_fraction": 0.3, "goal_met": False}}
    p["rows"][0]["floor_same_run"] = {"achieved": {"goal": 0.4, "floor_fraction": 0.45, "goal_met": True}}
    a = bench.parse_result("mixture_score", p)[0]
    assert a["goal"] == "<= JAX jit 3.5 ms (measured); >= 40% of the machine floor (at 45%, exp rate of the same run)"
    assert a["met"] is True
    p["rows"][0]["floor_same_run"]["achieved"].update(floor_fraction=0.38, goal_met=False)
    assert bench.parse_result("mixture_score", p)[0]["met"] is False


def test_parse_mixture_score_coretype_unset_gets_its_own_rows():
    """A second refdiff run without OPENBLAS_CORETYPE: a second row per size, its own times and floor share."""
    p = dict(mixture_payload(), openblas_coretype="Haswell")
    p["rows"][0]["jax"] = {"median_ms": 2.0}
    p["rows"][0]["floor"] = {"achieved": {"goal": 0.4, "floor_fraction": 0.5, "goal_met": True}}
    p["rows"][0]["numpy_coretype_unset"] = {"median_ms": 5.0}
    p["rows"][0]["numba_coretype_unset"] = {"median_ms": 1.0}
    p["rows"][0]["floor_coretype_unset"] = {"achieved": {"goal": 0.4, "floor_fraction": 0.3, "goal_met": False}}
    rows = bench.parse_result("mixture_score", p)
    assert [r["size"] for r in rows] == ["N=100000 D=2 K=8 float32 coretype set", "N=100000 D=2 K=8 float32 coretype unset",
                                         "N=10000 D=64 K=128 float32"]
    kept, unset = rows[:2]
    assert kept["refdiff_ms"] == 3.0 and kept["met"] is False  # 3.0 ms > JAX's 2.0
    assert unset["refdiff_ms"] == 1.0 and unset["reference_ms"] == 5.0 and unset["vs_peer"] == pytest.approx(12.0)
    assert unset["goal"] == "<= JAX jit 2 ms (measured); >= 40% of the machine floor (at 30%)"
    assert unset["met"] is False  # faster than JAX, short of its floor share
    p["rows"][0]["floor_coretype_unset"]["achieved"].update(floor_fraction=0.45, goal_met=True)
    assert bench.parse_result("mixture_score", p)[1]["met"] is True
    p["openblas_coretype"] = None  # --coretype both where nothing was set: the first run is not "set"
    assert bench.parse_result("mixture_score", p)[0]["size"] == "N=100000 D=2 K=8 float32 as is"


def test_parse_fused_sampler():
    (row,) = bench.parse_result("fused_sampler", fused_payload())
    assert row["size"] == "n=100000 steps=1000 float64" and row["backend"] == "numba"
    assert row["refdiff_ms"] == 900.0 and row["reference_ms"] == 14000.0 and row["peer_ms"] == 3000.0
    assert row["vs_peer"] == pytest.approx(3000 / 900) and row["met"] is True and row["goal"] == "vs peer >= 3"
    assert row["peer"] == "JAX jit (recorded)"  # an older JSON without jax_whole_loop_source
    (bad,) = bench.parse_result("fused_sampler", fused_payload(ok=False))
    assert bad["refdiff_ms"] is None and "check failed" in bad["note"]
    p = fused_payload()
    p.update(jax_whole_loop_s=2.5, jax_whole_loop_source="measured", speedup_vs_jax_whole_loop=2500.0 / 900.0,
             goal_met=False)
    (measured,) = bench.parse_result("fused_sampler", p)
    assert measured["peer"] == "JAX jit (measured)" and measured["peer_ms"] == 2500.0
    assert measured["vs_peer"] == pytest.approx(2500 / 900) and measured["met"] is False


def test_parse_wrong_shape_names_the_key():
    with pytest.raises(ValueError, match="cnn_step.*refdiff"):
        bench.parse_result("cnn_step", {k: v for k, v in cnn_payload().items() if k != "refdiff"})
    with pytest.raises(ValueError, match="mlp_step"):
        bench.parse_result("mlp_step", mixture_payload())


def test_format_table():
    results = [
        {"name": "mixture_score", "status": "ok", "reason": None, "rows": bench.parse_result("mixture_score", mixture_payload())},
        {"name": "cnn_step", "status": "ok", "reason": None, "peer_reason": "torch is not importable",
         "rows": bench.parse_result("cnn_step", cnn_payload(with_torch=False))},
        {"name": "fused_sampler", "status": "skipped", "reason": "numba is not installed", "rows": []},
    ]
    text = bench.format_table(results)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["benchmark", "size", "refdiff"]
    assert any("4.00x" in ln and "met" in ln for ln in lines)
    assert any("0.50x" in ln and "NOT met" in ln for ln in lines)
    assert any(ln.startswith("cnn_step") and "skipped (torch is not importable)" in ln and "n/a" in ln for ln in lines)
    assert any(ln.startswith("fused_sampler") and "skipped (numba is not installed)" in ln for ln in lines)


def fused_ddpm_section(status="ok"):
    sec = {"what": "DDPM 1000 steps vs diffusers DDPMScheduler loop", "status": status,
           "schedule": {"T": 1000, "steps": 1000, "spacing": "leading"},
           "refdiff": {"numba": {"min_ms": 800.0, "median_ms": 850.0, "max_ms": 900.0}, "nfe": 1000, "dtype": "float64"}}
    if status == "ok":
        sec["diffusers"] = {"times": {"min_ms": 20000.0, "median_ms": 21000.0, "max_ms": 25000.0}}
        sec.update(speedup_vs_diffusers=25.0, speedup_vs_diffusers_median=21000.0 / 850.0, reason=None)
    else:
        sec["reason"] = "no --torch-python"
    return sec


def test_parse_fused_sampler_ddpm_row():
    p = dict(fused_payload(), ddpm_vs_diffusers=fused_ddpm_section())
    em, ddpm = bench.parse_result("fused_sampler", p)
    assert em["size"] == "n=100000 steps=1000 float64" and em["peer_ms"] == 3000.0  # the first row is unchanged
    assert ddpm["size"] == "DDPM n=100000 steps=1000 float64" and ddpm["backend"] == "numba"
    assert ddpm["refdiff_ms"] == 800.0 and ddpm["peer_ms"] == 20000.0 and ddpm["reference_ms"] is None
    assert ddpm["peer"] == "diffusers DDPMScheduler (torch eager)" and ddpm["vs_peer"] == pytest.approx(25.0)
    assert ddpm["goal"] == "vs peer >= 1" and ddpm["met"] is True
    p["ddpm_vs_diffusers"]["diffusers"]["times"]["min_ms"] = 400.0  # diffusers faster: not met
    assert bench.parse_result("fused_sampler", p)[1]["met"] is False
    for section in (fused_ddpm_section("skipped"), fused_ddpm_section("failed")):  # no row: the script says why
        assert len(bench.parse_result("fused_sampler", dict(fused_payload(), ddpm_vs_diffusers=section))) == 1
    rows = bench.parse_result("fused_sampler", dict(fused_payload(), ddpm_vs_diffusers=fused_ddpm_section()))
    text = bench.format_table([{"name": "fused_sampler", "status": "ok", "reason": None, "rows": rows}])
    assert any("DDPM n=100000" in ln and "25.00x" in ln for ln in text.splitlines())


# --- benchmark scripts: plots, achieved throughput, the DDPM table diffusers runs -------------------------

BENCH_DIR = REPO / "benchmarks"


@pytest.fixture(scope="module")
def scripts():
    """The scripts' modules (their top level imports _common only: no NumPy, no matplotlib)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import _common
        import fused_sampler
        import mixture_score

        yield _common, mixture_score, fused_sampler
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_common_stays_light():
    """Workers under other interpreters import _common and the scripts: no NumPy or matplotlib at module level."""
    code = (f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import _common, fused_sampler, gpu, mixture_score; "
            "heavy = [m for m in ('numpy', 'matplotlib', 'refdiff') if m in sys.modules]; assert not heavy, heavy")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr


def test_peer_python_comes_from_the_environment(scripts, monkeypatch, tmp_path):
    common = scripts[0]
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv("REFDIFF_JAX_PYTHON", str(python))
    monkeypatch.setenv("REFDIFF_TORCH_PYTHON", str(tmp_path / "missing"))
    assert common.peer_python("jax") == str(python)
    assert common.peer_python("torch") is None  # names no file: the peer is skipped
    monkeypatch.delenv("REFDIFF_JAX_PYTHON")
    assert common.peer_python("jax") is None


def test_coretype_variants(scripts):
    """--coretype: auto adds a run without OPENBLAS_CORETYPE only where it is set; the others ask for theirs."""
    variants = scripts[0].coretype_variants
    assert variants("auto", {"OPENBLAS_CORETYPE": "Haswell"}) == ("Haswell", [False, True])
    assert variants("auto", {}) == (None, [False])
    assert variants("keep", {"OPENBLAS_CORETYPE": "Haswell"}) == ("Haswell", [False])
    assert variants("unset", {}) == (None, [True])
    assert variants("both", {}) == (None, [False, True])
    with pytest.raises(ValueError, match="coretype"):
        variants("never", {})


def test_child_env_pins_threads_and_picks_the_numba_layer(scripts):
    common = scripts[0]
    base = {"PYTHONPATH": "/x", "OMP_NUM_THREADS": "8", "HOME": "/h"}
    env = common.child_env(2, base=base)
    assert "PYTHONPATH" not in env and env["HOME"] == "/h"
    assert all(env[k] == "2" for k in common.THREAD_VARS)
    assert env["NUMBA_THREADING_LAYER"] == "workqueue" and "OMP_WAIT_POLICY" not in env
    omp = common.child_env(2, base=base, numba_layer="omp")
    assert omp["NUMBA_THREADING_LAYER"] == "omp" and omp["OMP_WAIT_POLICY"] == "PASSIVE"
    plain = common.child_env(2, base=base, numba_layer="omp", omp_wait_policy=None)  # OpenMP's own policy
    assert plain["NUMBA_THREADING_LAYER"] == "omp" and "OMP_WAIT_POLICY" not in plain
    mine = common.child_env(2, base=dict(base, NUMBA_THREADING_LAYER="tbb"), numba_layer="omp")
    assert mine["NUMBA_THREADING_LAYER"] == "tbb" and "OMP_WAIT_POLICY" not in mine  # the caller's choice stands


def stats(median, lo=None, hi=None):
    return {"min_ms": lo if lo is not None else median * 0.9, "median_ms": median,
            "max_ms": hi if hi is not None else median * 1.2, "samples": 5}


def test_bar_and_layout(scripts):
    common = scripts[0]
    assert common.plot_path("/r/fused_sampler.json") == Path("/r/fused_sampler.png")
    assert common.bar("numba", stats(2.0, 1.5, 3.0)) == ("numba", 2.0, 1.5, 3.0)
    assert common.bar("numba", stats(2000.0, 1500.0, 3000.0), scale=1e-3) == ("numba", 2.0, 1.5, 3.0)
    assert common.bar("numpy", value=400.0, scale=1e-3) == ("numpy", 0.4, None, None)
    assert common.bar("jax") is None
    groups = [{"label": "a", "bars": [common.bar("x", value=1.0), None, common.bar("y", value=2.0)]},
              {"label": "b", "bars": [common.bar("x", value=3.0), common.bar("y", value=4.0), common.bar("z", value=5.0)]}]
    bars, width = common.bar_layout(groups)
    assert width == pytest.approx(0.8 / 3)  # the widest group sets the width
    assert [(b[1], b[2], b[3]) for b in bars] == [(0, "x", 1.0), (0, "y", 2.0), (1, "x", 3.0), (1, "y", 4.0),
                                                  (1, "z", 5.0)]
    xs = [b[0] for b in bars]
    assert xs[:2] == pytest.approx([-width / 2, width / 2]) and xs[2:] == pytest.approx([1 - width, 1, 1 + width])


def test_plot_bar_groups_writes_a_png(scripts, tmp_path):
    pytest.importorskip("matplotlib")
    common = scripts[0]
    groups = [{"label": "N=10", "bars": [common.bar("numpy", stats(5.0)), common.bar("numba", stats(1.0))],
               "marker": 0.3, "note": "numba at 30% of floor"},
              {"label": "N=20", "bars": [common.bar("numba", stats(2.0))], "marker": None}]
    out = common.plot_bar_groups(tmp_path / "sub" / "p.png", groups, ylabel="ms", title="t", value_fmt=lambda v: f"{v:.2g}")
    assert out == tmp_path / "sub" / "p.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(scripts, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    common = scripts[0]
    assert common.plot_bar_groups(tmp_path / "p.png", [], ylabel="ms", title="t") is None
    assert "matplotlib is not installed" in capsys.readouterr().out and not (tmp_path / "p.png").exists()


def test_mixture_score_plot_groups(scripts):
    mixture = scripts[1]
    rows = [{"N": 100000, "D": 2, "K": 8, "numpy": stats(6.0), "numba": stats(1.0), "torch": stats(12.0),
             "jax": stats(1.8), "floor": {"floor_s": 0.4e-3, "achieved": {"floor_fraction": 0.4}}},
            {"N": 10000, "D": 64, "K": 128, "numpy": stats(300.0), "numba": stats(10.0), "torch_compile": stats(8.0)}]
    a, b = mixture.plot_groups(rows)
    assert [x[0] for x in a["bars"]] == ["numpy reference", "numba", "torch eager", "jax jit"]
    assert a["marker"] == pytest.approx(0.4) and a["note"] == "numba at 40% of floor" and a["label"] == "N=100000\nD=2 K=8"
    assert [x[0] for x in b["bars"]] == ["numpy reference", "numba", "torch.compile"]
    assert b["marker"] is None and b["note"] is None
    assert "--no-plot" in (BENCH_DIR / "mixture_score.py").read_text()


def fused_full_payload(jax_ok=True, ddpm_status="ok"):
    p = dict(fused_payload(), n_components=8, nfe=1001, numba=stats(900.0, 880.0, 950.0),
             jax={"status": "ok", "times": stats(3000.0, 2900.0, 3100.0)} if jax_ok else {"status": "skipped"},
             ddpm_vs_diffusers=fused_ddpm_section(ddpm_status))
    return p


def test_fused_sampler_achieved_rates(scripts):
    fused = scripts[2]
    r = fused.achieved_rates(100_000, 1001, 8, 0.5, exp_peak=2e9)
    assert r["exps"] == 100_000 * 1001 * 8 and r["particle_steps"] == 100_000 * 1001
    assert r["particle_steps_per_s"] == pytest.approx(2.002e8) and r["gexp_per_s"] == pytest.approx(1.6016)
    assert r["exp_fraction"] == pytest.approx(1.6016e9 / 2e9)
    assert "exp_fraction" not in fused.achieved_rates(10, 1, 8, 1.0)  # --no-floor: rates without the peak
    runs = fused.throughput(fused_full_payload(), exp_peak=2e9)
    assert list(runs) == ["numpy_reference", "numba", "jax", "ddpm_numba", "diffusers"]
    assert runs["numba"]["seconds"] == pytest.approx(0.88)  # minima
    assert runs["numpy_reference"]["seconds"] == pytest.approx(14.0)  # the extrapolated loop
    assert runs["ddpm_numba"]["exps"] == 100_000 * 1000 * 8 and runs["diffusers"]["seconds"] == pytest.approx(20.0)
    assert list(fused.throughput(fused_full_payload(jax_ok=False, ddpm_status="skipped"))) == [
        "numpy_reference", "numba", "ddpm_numba"]
    args = fused.parse_args(["--no-plot", "--no-floor", "--torch-python", ""])
    assert args.plot is False and args.floor is False and not args.torch_python


def test_fused_sampler_plot_groups(scripts):
    fused = scripts[2]
    em, ddpm = fused.plot_groups(dict(fused_full_payload(), speedup_vs_jax_whole_loop=3000 / 880))
    assert [b[0] for b in em["bars"]] == ["numpy loop (extrapolated)", "fused numba", "jax jit (fori_loop)"]
    assert em["bars"][0] == ("numpy loop (extrapolated)", 14.0, None, None)  # seconds
    assert em["bars"][1][1:] == pytest.approx((0.9, 0.88, 0.95))
    assert [b[0] for b in ddpm["bars"]] == ["fused numba", "diffusers DDPMScheduler (torch eager, f32)"]
    assert "25.00x vs diffusers" in ddpm["note"]
    no_peers = dict(fused_full_payload(jax_ok=False, ddpm_status="skipped"), speedup_vs_jax_whole_loop=3.3)
    groups = fused.plot_groups(no_peers)
    assert [b[0] for b in groups[0]["bars"]][-1] == "jax jit (recorded)"  # n=1e5, 1000 steps: the issue's figure
    assert [b[0] for b in groups[1]["bars"]] == ["fused numba"] and groups[1]["note"] is None


def test_fused_sampler_ddpm_table_is_diffusers_default(scripts):
    """The refdiff table of the DDPM section is diffusers' DDPMScheduler default: timesteps, alpha-bar, beta-tilde.

    diffusers' formulas (scheduling_ddpm.py, ``variance_type="fixed_small"``, ``timestep_spacing="leading"``)
    written out in NumPy, so the test runs without diffusers.
    """
    np = pytest.importorskip("numpy")
    fused = scripts[2]
    for steps in (1000, 200):
        schedule, table = fused.ddpm_schedule_table(steps)
        betas = np.linspace(1e-4, 0.02, 1000)
        ab = np.cumprod(1.0 - betas)
        ts = np.arange(0, steps)[::-1] * (1000 // steps)  # diffusers' "leading" timesteps
        assert table.n_rows == steps and np.array_equal(table.t.astype(int) - 1, ts)
        prev = ts - 1000 // steps
        ab_prev = np.where(prev >= 0, ab[np.maximum(prev, 0)], 1.0)
        beta_t = 1.0 - ab[ts] / ab_prev
        var = (1.0 - ab_prev) / (1.0 - ab[ts]) * beta_t  # fixed_small
        noisy = ts > 0
        assert np.array_equal(table.draw >= 0, noisy)
        np.testing.assert_allclose(table.c[noisy], np.sqrt(var[noisy]), rtol=1e-9)
        np.testing.assert_allclose(schedule.alpha_bar[1:], ab, rtol=1e-12)
        # the mean: x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) with eps = -sqrt(1 - ab) s, then the posterior mean
        c0 = np.sqrt(ab_prev) * beta_t / (1.0 - ab[ts])
        cx = np.sqrt(1.0 - beta_t) * (1.0 - ab_prev) / (1.0 - ab[ts])
        np.testing.assert_allclose(table.a, cx + c0 / np.sqrt(ab[ts]), rtol=1e-9)
        np.testing.assert_allclose(table.b, c0 * (1.0 - ab[ts]) / np.sqrt(ab[ts]), rtol=1e-9)


def test_compare_samples_names(scripts):
    np = pytest.importorskip("numpy")
    fused = scripts[2]
    rng = np.random.default_rng(0)
    modes = np.array([[4.0, 0.0], [-4.0, 0.0]])
    x = modes[rng.integers(0, 2, 4000)] + 0.3 * rng.standard_normal((4000, 2))
    y = modes[rng.integers(0, 2, 4000)] + 0.3 * rng.standard_normal((4000, 2))
    out = fused.compare_samples(x, y, modes, names=("refdiff", "diffusers"))
    assert out["ok"] and set(out["mode_weights"]) >= {"refdiff", "diffusers"} and out["n_diffusers"] == 4000
    assert "numba" in fused.compare_samples(x, y, modes)["mean"]  # the JAX section's keys stay
    assert not fused.compare_samples(x, y[y[:, 0] > 0], modes)["ok"]  # one mode lost


# --- one real run ----------------------------------------------------------------------------------------


@pytest.mark.slow  # 15-20 s with numba installed (it compiles and times the twin)
def test_bench_quick_subprocess(tmp_path):
    """The fastest benchmark end to end (about 15 s on 2 cores, PyTorch included when it is there)."""
    name = bench.BENCHMARKS[0]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "refdiff", "bench", "--only", name, "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    combined = json.loads((tmp_path / "bench.json").read_text())
    (res,) = combined["results"]
    assert res["name"] == name
    if res["status"] == "skipped":  # no Numba in this environment
        assert f"{name}  skipped" in out.stdout
        return
    assert res["status"] == "ok" and len(res["rows"]) == 3
    assert (tmp_path / f"{name}.json").exists() and (tmp_path / f"{name}.log").exists()
    assert all(r["refdiff_ms"] > 0 and r["vs_reference"] > 0 for r in res["rows"])
    assert "goals met" in out.stdout and name in out.stdout
    print(f"{name} --quick through refdiff bench: {time.perf_counter() - t0:.0f} s")


def test_cmd_bench_skips_and_fake_runs(tmp_path, monkeypatch, capsys):
    """The command around the scripts: a skipped benchmark, a missing peer, a failure; the scripts faked."""
    payloads = {"cnn_step": cnn_payload(with_torch=False), "mlp_step": mlp_payload(with_torch=False)}
    seen = {}

    def fake_run(name, cmd, log_path, cwd=None, timeout=None):
        seen[name] = cmd
        Path(log_path).write_text("fake\n")
        if name == "mlp_step":
            return 3, 0.1
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(payloads[name]))
        return 0, 0.1

    monkeypatch.setattr(bench, "run_one", fake_run)
    monkeypatch.setattr(bench, "have_numba", lambda: False)
    monkeypatch.setattr(bench, "find_torch_python", lambda requested=None: (None, None, "no torch here"))
    out = tmp_path / "out"
    assert cli.main(["bench", "--quick", "--out", str(out)]) == 1  # mlp_step "failed"
    text = capsys.readouterr().out
    assert set(seen) == {"cnn_step", "mlp_step"}  # the two Numba benchmarks never started
    assert "--quick" in seen["mlp_step"] and seen["mlp_step"][seen["mlp_step"].index("--torch-python") + 1] == "none"
    assert "fused_sampler  skipped (numba is not installed" in text
    assert "skipped (no torch here)" in text and "FAILED: mlp_step" in text
    combined = json.loads((out / "bench.json").read_text())
    status = {r["name"]: r["status"] for r in combined["results"]}
    assert status == {"mixture_score": "skipped", "fused_sampler": "skipped", "cnn_step": "ok", "mlp_step": "failed"}
    assert combined["quick"] is True and combined["torch"] is None


def test_cmd_bench_explicit_torch_python_must_work(tmp_path, capsys):
    assert cli.main(["bench", "--only", "cnn_step", "--torch-python", "/no/such/python", "--out", str(tmp_path)]) == 2
    assert "--torch-python /no/such/python" in capsys.readouterr().err


def test_mixture_peer_failing_its_check_is_left_out(scripts, monkeypatch, capsys):
    """A peer variant whose scores are off is dropped from that row (with its error), not the whole run."""
    import numpy as np

    mixture = scripts[1]
    want = np.ones((4, 2))

    def fake_worker(cmd, env, label):
        prefix = env["REFDIFF_BENCH_OUT"]
        np.save(prefix + ".torch.4_2_3.npy", want * (1 + 1e-7))
        np.save(prefix + ".torch_compile.4_2_3.npy", want * (1 + 1e-2))
        return {"rows": [{"torch": stats(5.0), "torch_compile": stats(4.0)}], "torch": "2.x", "torch_compile": {}}, None

    monkeypatch.setattr(mixture, "run_worker", fake_worker)
    args = type("Args", (), {"threads": 2, "repeat": 3, "sizes": ["4,2,3"], "torch_compile": True})()
    rows = [{"N": 4, "D": 2, "K": 3}]
    assert mixture.run_peer("torch", "python", args, {}, rows, lambda N, D, K: want) is not None
    assert rows[0]["torch"]["rel_err"] == pytest.approx(1e-7) and "torch_compile" not in rows[0]
    assert rows[0]["peer_check_failed"] == {"torch_compile": pytest.approx(1e-2)}
    assert "torch_compile score differs" in capsys.readouterr().err


# --- benchmarks/gpu.py: the GPU goals, run end to end on the host stand-in for CuPy ---------------------


@pytest.fixture
def gpu_script(scripts):
    import gpu

    return gpu


def gpu_quick(gpu_script, tmp_path, *peer_args):
    out = tmp_path / "gpu.json"
    argv = ["--quick", "--warmup", "0", "--repeat", "1", "--json", str(out), "--torch-python", "", "--jax-python", ""]
    assert gpu_script.main(argv + list(peer_args)) == 0
    return json.loads(out.read_text())


def test_gpu_script_runs_on_the_host_stand_in(gpu_script, cuda_host, tmp_path):
    """Every section of benchmarks/gpu.py at --quick sizes, the CuPy twins run by tests/cuda_host.py: each
    check passes, every row gets a floor, and the peers' goals say they were not measured."""
    d = gpu_quick(gpu_script, tmp_path)
    assert d["ceilings"]["copy"]["bytes_per_s"] > 0 and d["ceilings"]["fp32"]["flops_per_s"] > 0
    assert [(r["N"], r["D"], r["K"]) for r in d["mixture_score"]] == [(1000, 2, 8), (300, 16, 32), (100, 64, 128)]
    assert all(r["check"]["ok"] and r["floor_fraction"] > 0 and r["call_floor_fraction"] > 0 for r in d["mixture_score"])
    assert all(r[k]["samples"] == 1 and r[k]["median_ms"] > 0 for r in d["mixture_score"] for k in ("kernel", "general_kernel"))
    assert d["fused_sampler"]["check"]["ok"] and d["fused_sampler"]["cupy"]["median_ms"] > 0
    assert {p["status"] for p in d["peers"].values()} == {"skipped"}
    assert [g["met"] for g in d["goal_status"][-2:]] == [None, None]


def test_gpu_script_goal_status(gpu_script):
    payload = {
        "mixture_score": [{"N": 10, "D": 2, "K": 8, "floor_fraction": 0.6, "bound": "bytes"},
                          {"N": 10, "D": 64, "K": 128, "floor_fraction": 0.4, "bound": "flops"},
                          {"N": 10, "D": 4, "K": 8}],  # failed its check: not timed
        "fused_sampler": {"n": 10, "cupy": {"median_ms": 10.0}},
        "peers": {"torch": {"status": "ok", "times": {"median_ms": 250.0}}, "jax": {"status": "ok", "times": {"median_ms": 15.0}}},
    }  # fmt: skip
    status = [(round(v, 3) if v is not None else None, met) for _, v, _, met in gpu_script.goals(payload)]
    assert status == [(0.6, True), (0.4, False), (None, None), (25.0, True), (1.5, False)]
    payload["peers"]["jax"]["status"] = "failed"  # a sample that failed its check gives no ratio
    assert gpu_script.goals(payload)[-1][1:] == (None, 2.0, None)


@pytest.mark.skipif(not os.path.isfile(os.environ.get("REFDIFF_TORCH_PYTHON", "")),
                    reason="REFDIFF_TORCH_PYTHON names no interpreter with PyTorch")
def test_gpu_script_torch_peer_on_cpu(gpu_script, cuda_host, tmp_path):
    """The PyTorch eager worker, on the CPU: it runs the table and its sample matches refdiff's in distribution."""
    d = gpu_quick(gpu_script, tmp_path, "--torch-python", os.environ["REFDIFF_TORCH_PYTHON"], "--peer-device", "cpu")
    torch = d["peers"]["torch"]
    assert torch["status"] == "ok" and torch["check"]["ok"] and torch["device"] == "cpu", torch


# --- the scripts' own rules: comparable goals, checks before timing, ratios, --repeat ----------------------


@pytest.fixture
def script(monkeypatch):
    """Import a benchmark script's module by name (benchmarks/ on sys.path for the test)."""
    import importlib

    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module


def run_fused_main(fused, monkeypatch, tmp_path, n, steps):
    """fused_sampler.main at ``n`` particles and ``steps`` steps, no peers, its timed worker faked: the payload."""
    worker = {"check": {"max_abs_diff": 0.0, "tol": 1e-10, "ok": True}, "numba": stats(20.0, 18.0, 25.0),
              "numpy_reference_measured": {**stats(100.0), "rows": 20}, "numpy_reference_extrapolated_ms": 105.0,
              "speedup_vs_reference": 105.0 / 18.0, "threading": "omp", "rows": steps + 1, "nfe": steps + 1}

    real_run = subprocess.run

    def fake_run(cmd, **kw):
        if "--worker" not in cmd:  # e.g. platform.processor() asking uname
            return real_run(cmd, **kw)
        return subprocess.CompletedProcess(cmd, 0, json.dumps(worker) + "\n", "")

    monkeypatch.setattr(fused.subprocess, "run", fake_run)
    out = tmp_path / f"fused_{n}_{steps}.json"
    argv = ["--n", str(n), "--steps", str(steps), "--jax-python", "", "--torch-python", "", "--no-floor", "--no-plot",
            "--json", str(out)]
    assert fused.main(argv) == 0
    return json.loads(out.read_text())


def test_fused_sampler_recorded_jax_time_only_at_its_size(script, monkeypatch, tmp_path, capsys):
    """Without JAX, the recorded time (n=1e5, 1000 steps) is no peer at another size: no speedup, no verdict."""
    fused = script("fused_sampler")
    small = run_fused_main(fused, monkeypatch, tmp_path, 2000, 20)
    assert small["goal_met"] is None and small["speedup_vs_jax_whole_loop"] is None
    assert small["jax_whole_loop_s"] is None and small["speedup_vs_jax_recorded"] is None
    assert "not comparable" in small["jax_goal_reason"] and "n=2000" in small["jax_goal_reason"]
    assert "goal >= 3x: not judged" in capsys.readouterr().out
    (row,) = bench.parse_result("fused_sampler", small)
    assert row["met"] is None and row["vs_peer"] is None and row["peer_ms"] is None
    assert row["goal"] == "vs peer >= 3: not comparable" and row["vs_reference"] == pytest.approx(105 / 18)
    text = bench.format_table([{"name": "fused_sampler", "status": "ok", "reason": None, "rows": [row]}])
    line = next(ln for ln in text.splitlines() if ln.startswith("fused_sampler"))
    assert "not comparable" in line and line.endswith("n/a")
    assert fused.plot_groups(small)[0]["note"] == "no jax time at this size"
    full = run_fused_main(fused, monkeypatch, tmp_path, 100_000, 1000)  # the recorded size: the goal is judged
    assert full["jax_whole_loop_source"] == "recorded" and full["jax_whole_loop_s"] == fused.JAX_WHOLE_LOOP_S
    assert full["speedup_vs_jax_whole_loop"] == pytest.approx(3000 / 18) and full["goal_met"] is True
    assert full["jax_goal_reason"] is None and bench.parse_result("fused_sampler", full)[0]["met"] is True


def test_fused_sampler_gets_the_torch_python_of_refdiff_bench(tmp_path, monkeypatch):
    """refdiff bench --torch-python (a path, or none) reaches the fused sampler's diffusers row, as every script's."""
    folder, out = tmp_path / "benchmarks", tmp_path / "fused_sampler.json"
    cmd = bench.build_command("fused_sampler", folder, out, torch_python=None, python="py")
    assert cmd[cmd.index("--torch-python") + 1] == ""  # '' skips diffusers, never $REFDIFF_TORCH_PYTHON
    seen = []

    def fake_run(name, cmd, log_path, cwd=None, timeout=None):
        seen.append(cmd)
        Path(log_path).write_text("fake\n")
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(fused_payload()))
        return 0, 0.1

    def fake_find(requested=None):
        if requested and requested.lower() == "none":
            return None, None, "--torch-python none"
        return "/t/python", "2.x", None

    monkeypatch.setattr(bench, "run_one", fake_run)
    monkeypatch.setattr(bench, "have_numba", lambda: True)
    monkeypatch.setattr(bench, "find_torch_python", fake_find)
    for i, (given, forwarded) in enumerate((("none", ""), ("/t/python", "/t/python"))):
        assert cli.main(["bench", "--only", "fused_sampler", "--torch-python", given, "--out", str(tmp_path / f"{i}")]) == 0
        assert seen[-1][seen[-1].index("--torch-python") + 1] == forwarded


def fake_cnn_spawn(calls, grad_scale):
    """cnn_step.spawn stand-in: the ``--backend`` run's gradient is the NumPy one times ``grad_scale``."""
    import numpy as np

    def spawn(python, side, data_path, args, tmp, warmup, repeat, backend=None):
        backend = backend or args.backend
        calls.append((side, backend, repeat))
        grad = np.linspace(1.0, 2.0, 50) * (1.0 if backend == "numpy" else grad_scale)
        n = repeat or 0
        return {"loss": 0.5, "grad": grad, "times": [1e-3] * n, "cpu": [1e-3] * n, "versions": {}}

    return spawn


def test_cnn_step_checks_the_backend_against_numpy_before_timing(script, monkeypatch, tmp_path, capsys):
    """Without PyTorch the --backend step is still checked against backend="numpy", and not timed when it differs."""
    cnn = script("cnn_step")
    monkeypatch.setattr(cnn, "torch_available", lambda python: False)
    argv = ["--batch", "2", "--channels", "8", "--image", "4", "--backend", "numba", "--repeat", "3", "--rounds", "1"]
    calls = []
    monkeypatch.setattr(cnn, "spawn", fake_cnn_spawn(calls, 1.0 + 1e-3))  # 1e-3 relative: beyond float32's 1e-5
    bad = tmp_path / "bad.json"
    assert cnn.main(argv + ["--json", str(bad)]) == 2
    assert {(b, r) for _, b, r in calls} == {("numpy", None), ("numba", None)}  # the checks ran, nothing was timed
    d = json.loads(bad.read_text())
    ref = d["check"]["reference"]
    assert d["check"]["ok"] is False and ref["ok"] is False and ref["against"] == "numpy" and ref["backend"] == "numba"
    assert ref["grad_rel_error"] == pytest.approx(1e-3) and ref["tolerance"] == cnn.TWIN_RTOL["float32"]
    assert "refdiff" not in d and "numba differs from the NumPy reference" in d["check_failures"][0]
    assert "CORRECTNESS CHECK FAILED" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(cnn, "spawn", fake_cnn_spawn(calls, 1.0 + 1e-7))  # float32 rounding: within tolerance
    good = tmp_path / "good.json"
    assert cnn.main(argv + ["--json", str(good)]) == 0
    assert calls[:2] == [("refdiff", "numpy", None), ("refdiff", "numba", None)] and calls[2:] == [("refdiff", "numba", 3)]
    d = json.loads(good.read_text())
    assert d["check"]["ok"] is True and d["check"]["reference"]["ok"] is True and d["check"]["torch"] is None
    assert d["refdiff"]["runs"] == 3 and bench.parse_result("cnn_step", d)[0]["backend"] == "numba"


def test_mlp_step_ratio_min_is_fastest_sample_over_every_backend(script, monkeypatch):
    """ratio_min: fastest torch sample / fastest refdiff sample of any backend, not of the fastest by median."""
    mlp = script("mlp_step")
    samples = {"numpy": [2e-3, 2e-3, 2e-3], "numba": [0.5e-3, 3e-3, 3e-3]}  # numpy wins by median, numba by min

    def fake_worker(python, framework, spec, env):
        if framework == "torch":
            return {"variants": {v: {"times_s": [1e-3] * 3, "phases_ms": {}} for v in spec["variants"]},
                    "gemm_floor_s": [1e-4]}
        return {"times_s": samples[spec["backend"]], "phases_ms": {}, "gemm_floor_s": [1e-4], "versions": {},
                "n_params": 10}

    monkeypatch.setattr(mlp, "run_worker", fake_worker)
    args = type("Args", (), {"dtype": "float32", "seed": 0, "threads": 1, "warmup": 0, "repeat": 3, "max_seconds": 1.0,
                             "phase_repeat": 1, "rounds": 1, "refdiff_backend": ["numpy", "numba"]})()
    entry, _, _ = mlp.time_config(args, "torch-python", {}, 8, 4, ["fused"])
    assert entry["refdiff_best"] == "numpy" and entry["ratio_median"] == pytest.approx(0.5)
    assert entry["ratio_min"] == pytest.approx(1.0 / 0.5)  # numba's 0.5 ms sample, not numpy's 2 ms


def test_repeat_must_be_positive(script, capsys):
    """--repeat 0 is refused when the arguments are parsed, naming the option; summary_ms refuses no samples."""
    common = script("_common")
    for name, parse in (("fused_sampler", lambda m, a: m.parse_args(a)), ("cnn_step", lambda m, a: m.main(a)),
                        ("mlp_step", lambda m, a: m.main(a)), ("mixture_score", lambda m, a: m.main(a)),
                        ("gpu", lambda m, a: m.parse_args(a))):
        for bad in ("0", "-2", "x"):
            with pytest.raises(SystemExit) as exc:
                parse(script(name), ["--repeat", bad])
            assert exc.value.code == 2
            assert f"argument --repeat: must be a positive integer (1 or more), not '{bad}'" in capsys.readouterr().err
    assert script("fused_sampler").parse_args(["--repeat", "1"]).repeat == 1
    with pytest.raises(SystemExit) as exc:  # the import-time script parses on its own (it imports no helpers)
        script("import_time").main(["--repeat", "0"])
    assert exc.value.code == 2 and "--repeat must be a positive integer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="times is empty"):
        common.summary_ms([])
    assert common.summary_ms([2e-3])["min_ms"] == pytest.approx(2.0)
