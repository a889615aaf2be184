"""The command line, run as a subprocess: happy paths and bad arguments."""

import json
import subprocess
import sys

import pytest
from old_checkpoints import drop_data_record


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "refdiff", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_verify():
    out = run("--help")
    assert out.returncode == 0
    assert "verify" in out.stdout


def test_version():
    from refdiff import __version__

    out = run("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_verify_subset_with_json(tmp_path):
    path = tmp_path / "report.json"
    out = run("verify", "--only", "2", "3", "--json", str(path))
    assert out.returncode == 0, out.stderr
    assert "2.1" in out.stdout and "3.1" in out.stdout and "passed, 0 failed" in out.stdout
    report = json.loads(path.read_text())
    assert {c["id"] for c in report["checks"]} >= {"2.1", "2.2", "3.1"}
    assert all(c["passed"] for c in report["checks"])
    assert not list(tmp_path.glob(".refdiff-*"))  # no temporary file left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (("verify", "--only", "99"), "unknown entries"),
        (("verify", "--json", "/nonexistent-folder/x.json"), "does not exist"),
        (("verify", "--bogus"), "unrecognized arguments"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_without_traceback(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_no_command_prints_help_and_exits_2():
    out = run()
    assert out.returncode == 2 and "usage" in out.stdout


# --- train / sample / likelihood ------------------------------------------------------


def test_cli_names_match_the_library():
    from refdiff import cli_models
    from refdiff.data import DATASETS_2D, IMAGE_DATASETS
    from refdiff.samplers import DIFFUSION_SAMPLERS
    from refdiff.targets import TARGETS

    assert set(cli_models.DATA_NAMES) == set(DATASETS_2D) | set(IMAGE_DATASETS)
    assert set(cli_models.IMAGE_DATA_NAMES) == set(IMAGE_DATASETS)
    assert set(cli_models.TARGET_NAMES) == set(TARGETS)
    assert set(cli_models.SAMPLER_NAMES) == set(DIFFUSION_SAMPLERS)


@pytest.fixture(scope="module")
def ring_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "ring.npz"
    out = run("train", "--data", "ring8", "--steps", "60", "--out", str(path), "--width", "16", "--depth", "2",
              "--checkpoint-every", "30", "--n-data", "2000", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert "seed 3" in out.stdout and f"wrote {path}" in out.stdout
    return path


def test_train_resume_continues_from_the_stored_step(ring_checkpoint, tmp_path):
    import shutil

    from refdiff.nn import load_checkpoint

    copy = tmp_path / "ring.npz"
    shutil.copy(ring_checkpoint, copy)
    out = run("train", "--data", "ring8", "--steps", "80", "--out", str(copy), "--width", "16", "--depth", "2",
              "--checkpoint-every", "30", "--n-data", "2000", "--seed", "3", "--resume")
    assert out.returncode == 0, out.stderr
    assert "from step 60" in out.stdout
    assert load_checkpoint(copy).step == 80


def test_sample_from_a_checkpoint_and_from_a_target(ring_checkpoint, tmp_path):
    import numpy as np

    x_path = tmp_path / "x.npy"
    out = run("sample", "--checkpoint", str(ring_checkpoint), "--sampler", "dpm_solver_pp", "--steps", "10",
              "--n", "50", "--out", str(x_path), "--seed", "5")
    assert out.returncode == 0, out.stderr
    x = np.load(x_path)
    assert x.shape == (50, 2) and np.all(np.isfinite(x)) and "seed 5" in out.stdout
    spec = tmp_path / "mix.json"
    spec.write_text(json.dumps({"weights": [0.5, 0.5], "means": [[-2.0, 0.0], [2.0, 0.0]], "covs": [0.1, 0.1]}))
    y_path = tmp_path / "y.npy"
    out = run("sample", "--target", str(spec), "--sampler", "ode_heun", "--steps", "30", "--n", "400",
              "--out", str(y_path))
    assert out.returncode == 0, out.stderr
    y = np.load(y_path)
    assert y.shape == (400, 2) and abs(np.mean(y[:, 0] > 0) - 0.5) < 0.1
    assert "largest mode-weight error" in out.stdout
    assert not list(tmp_path.glob(".refdiff-*"))


def test_likelihood_of_a_checkpoint(ring_checkpoint, tmp_path):
    import numpy as np

    data = tmp_path / "pts.npy"
    np.save(data, np.random.default_rng(0).standard_normal((5, 2)))
    ll = tmp_path / "ll.npy"
    out = run("likelihood", "--checkpoint", str(ring_checkpoint), "--data", str(data), "--rtol", "1e-3", "--out", str(ll))
    assert out.returncode == 0, out.stderr
    assert "mean log-likelihood" in out.stdout and np.load(ll).shape == (5,)


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "--data", "nosuch", "--steps", "5", "--out", "x.npz"), "invalid choice"),
        (("train", "--data", "ring8", "--steps", "0", "--out", "x.npz"), "--steps must be >= 1"),
        (("train", "--data", "ring8", "--steps", "5", "--out", "/nonexistent-folder/x.npz"), "does not exist"),
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--objective", "ncsn", "--process", "vp"),
         "ncsn trains a VE"),
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--conditional"), "image data"),
        (("sample", "--target", "nope", "--sampler", "ddim", "--out", "x.npy"), "--target must be one of"),
        (("sample", "--target", "ring8", "--sampler", "ode_heun", "--clip-x0", "-1", "1", "--out", "x.npy"),
         "applies to the ddpm and ddim"),
        (("sample", "--checkpoint", "missing.npz", "--sampler", "ddim", "--out", "x.npy"), "does not exist"),
        (("sample", "--sampler", "ddim", "--out", "x.npy"), "one of the arguments --target --checkpoint is required"),
        (("likelihood", "--checkpoint", "missing.npz", "--data", "x.npy"), "does not exist"),
        # 0 is falsy: `args.batch or default` trained at the default batch
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--batch", "0"), "--batch must be >= 1"),
        # a negative seed reached NumPy and ended in a traceback, exit 1
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--seed", "-1"), "--seed: must be >= 0"),
        (("sample", "--target", "ring8", "--sampler", "ddim", "--steps", "5", "--n", "4", "--out", "x.npy", "--seed",
          "-3"), "--seed: must be >= 0"),
        # guidance and labels apply to class-conditional checkpoints only (they were ignored)
        (("sample", "--target", "ring8", "--sampler", "ddim", "--out", "x.npy", "--guidance", "2"), "--guidance needs"),
        (("sample", "--target", "ring8", "--sampler", "ddim", "--out", "x.npy", "--label", "2"), "--label needs"),
        # library argument names reached the user (batch_size, lr, rtol) instead of the option typed
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--n-data", "500"),
         "--batch (default 512) is larger than the training data (500 examples of ring8)"),
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--n-data", "50", "--batch", "60"),
         "--batch 60 is larger than the training data (50 examples"),
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--lr", "nan"),
         "argument --lr: must be a finite number > 0, got nan"),
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--lr", "-1"), "argument --lr: must be"),
        (("likelihood", "--checkpoint", "missing.npz", "--data", "x.npy", "--rtol", "-1"),
         "argument --rtol: must be a finite number > 0, got -1"),
        (("likelihood", "--checkpoint", "missing.npz", "--data", "x.npy", "--rtol", "nan"), "argument --rtol: must be"),
        # options the chosen data set ignored: 2-D data trains an MLP, images a U-Net, digits is a fixed set
        (("train", "--data", "ring8", "--steps", "5", "--out", "x.npz", "--channels", "8"),
         "--channels sets the U-Net of image data; ring8 is 2-D data"),
        (("train", "--data", "glyphs", "--steps", "5", "--out", "x.npz", "--width", "8"),
         "--width sets the MLP of 2-D data; glyphs is image data"),
        (("train", "--data", "digits", "--steps", "5", "--out", "x.npz", "--depth", "2"), "--depth sets the MLP"),
        (("train", "--data", "digits", "--steps", "5", "--out", "x.npz", "--n-data", "100"),
         "--n-data does not apply to digits"),
        (("sample", "--target", "ring8", "--sampler", "ddim", "--out", "x.npy", "--no-ema"),
         "--no-ema applies to a --checkpoint"),
    ],
)
def test_model_commands_reject_bad_arguments(args, message, tmp_path):
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


RING_ARGS = ("--data", "ring8", "--width", "16", "--depth", "2", "--checkpoint-every", "30", "--n-data", "2000",
             "--seed", "3")


def _with(args, **changes):
    """RING_ARGS with some options' values replaced (name without the dashes)."""
    out = list(args)
    for name, value in changes.items():
        out[out.index("--" + name.replace("_", "-")) + 1] = value
    return tuple(out)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(data="moons"), "--data ring8 (now moons)"),
        (dict(n_data="1000"), "--n-data 2000 (now 1000)"),
        (dict(seed="4"), "--seed 3 (now 4)"),
        (dict(data="moons", width="17"), "--data ring8 (now moons), --width 16 (now 17)"),
    ],
)
def test_train_resume_refuses_other_data(ring_checkpoint, tmp_path, changes, message):
    # a resume on other data (moons, another size or seed) trained on silently and exited 0
    import shutil

    copy = tmp_path / "ring.npz"
    shutil.copy(ring_checkpoint, copy)
    before = copy.read_bytes()
    out = run("train", "--steps", "80", "--out", str(copy), "--resume", *_with(RING_ARGS, **changes))
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "--resume:" in out.stderr and "Traceback" not in out.stderr
    assert "trained" not in out.stdout and copy.read_bytes() == before


def test_train_resume_names_the_options_of_other_settings(ring_checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "ring.npz"
    shutil.copy(ring_checkpoint, copy)
    out = run("train", "--steps", "80", "--out", str(copy), "--resume", *RING_ARGS, "--batch", "64", "--lr", "1e-3",
              "--process", "ve")
    assert out.returncode == 2, out.stdout + out.stderr
    for text in ("--batch 512 (now 64)", "--lr 0.002 (now 0.001)", "--process vp (now ve)"):
        assert text in out.stderr, text
    assert "batch_size" not in out.stderr
    out = run("train", "--steps", "50", "--out", str(copy), "--resume", *RING_ARGS)
    assert out.returncode == 2 and "already at step 60, past --steps 50" in out.stderr


def test_train_resume_of_a_checkpoint_without_a_data_record_warns(ring_checkpoint, tmp_path):
    import shutil

    from refdiff.nn import load_checkpoint

    copy = tmp_path / "ring.npz"
    shutil.copy(ring_checkpoint, copy)
    drop_data_record(copy)
    out = run("train", "--steps", "70", "--out", str(copy), "--resume", *RING_ARGS)
    assert out.returncode == 0, out.stderr
    assert "does not record its training data" in out.stderr and "UserWarning" not in out.stderr
    assert "from step 60" in out.stdout
    assert load_checkpoint(copy).train["data"]["source"] == {"data": "ring8", "n_data": 2000, "seed": 3,
                                                            "conditional": False}


@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory):
    """A class-conditional MLP checkpoint of one training step (in-process: a U-Net run takes seconds)."""
    import numpy as np

    from refdiff.nn import MLP
    from refdiff.objectives import EpsObjective
    from refdiff.sde import VPSDE
    from refdiff.train import train

    obj = EpsObjective(VPSDE())
    net = MLP(2, width=8, depth=1, time_scale=obj.time_scale, n_classes=3)
    gen = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("cond") / "cond.npz"
    train(net, gen.standard_normal((20, 2)), obj, labels=gen.integers(0, 3, 20), steps=1, batch_size=4,
          checkpoint=path, progress=False)
    return path


@pytest.mark.parametrize("gamma", ["-1", "nan", "inf"])
def test_sample_refuses_a_bad_guidance_scale_in_one_line(conditional_checkpoint, tmp_path, gamma):
    # a traceback from refdiff.guidance and exit 1
    out = run("sample", "--checkpoint", str(conditional_checkpoint), "--sampler", "ddim", "--steps", "5", "--n", "8",
              "--label", "1", "--guidance", gamma, "--out", str(tmp_path / "x.npy"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"argument --guidance: must be a finite number >= 0, got {gamma}" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "x.npy").exists()


def test_sample_guided_by_a_conditional_checkpoint(conditional_checkpoint, tmp_path):
    import numpy as np

    out = run("sample", "--checkpoint", str(conditional_checkpoint), "--sampler", "ddim", "--steps", "5", "--n", "8",
              "--label", "1", "--guidance", "0", "--out", str(tmp_path / "x.npy"))
    assert out.returncode == 0, out.stderr
    assert np.load(tmp_path / "x.npy").shape == (8, 2)


def test_sample_refuses_a_process_other_than_the_checkpoints(ring_checkpoint, tmp_path):
    # the checkpoint fixes its process: --process ve gave output identical to no --process
    base = ("sample", "--checkpoint", str(ring_checkpoint), "--sampler", "ddim", "--steps", "5", "--n", "8")
    out = run(*base, "--process", "ve", "--out", str(tmp_path / "x.npy"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--process ve conflicts with" in out.stderr and "trained on vp" in out.stderr
    assert not (tmp_path / "x.npy").exists()
    out = run(*base, "--process", "vp", "--out", str(tmp_path / "x.npy"))  # naming its own process is allowed
    assert out.returncode == 0, out.stderr


def test_likelihood_names_the_data_file_with_nan(ring_checkpoint, tmp_path):
    # the library's "x0 must be finite" reached the user
    import numpy as np

    data = tmp_path / "pts.npy"
    np.save(data, np.array([[0.0, np.nan], [1.0, 2.0], [np.inf, 0.0]]))
    out = run("likelihood", "--checkpoint", str(ring_checkpoint), "--data", str(data))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"--data {data} holds 2 non-finite value(s)" in out.stderr and "x0" not in out.stderr


def test_sample_refuses_a_label_for_an_unconditional_checkpoint(ring_checkpoint, tmp_path):
    out = run("sample", "--checkpoint", str(ring_checkpoint), "--sampler", "ddim", "--label", "2",
              "--out", str(tmp_path / "x.npy"))
    assert out.returncode == 2 and "unconditional" in out.stderr


def test_sample_refuses_a_foreign_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a checkpoint")
    out = run("sample", "--checkpoint", str(bad), "--sampler", "ddim", "--out", str(tmp_path / "x.npy"))
    assert out.returncode == 2 and "not a readable refdiff checkpoint" in out.stderr


def test_demo_writes_its_figures_and_table(tmp_path):
    pytest.importorskip("matplotlib")
    out = run("demo", "--out", str(tmp_path / "demo"), "--steps", "50", "--n", "200", "--seed", "4")
    assert out.returncode == 0, out.stderr
    for name in ("forward_process", "score_field", "loss", "samples", "trajectories", "error_vs_nfe", "score_error"):
        assert (tmp_path / "demo" / f"{name}.png").stat().st_size > 1000
    assert "seed 4" in out.stdout and "euler_maruyama" in out.stdout and "dpm_solver_pp" in out.stdout


def test_demo_bad_arguments(tmp_path):
    out = run("demo", "--out", "/nonexistent-folder/sub/demo")
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = run("demo", "--steps", "0", cwd=tmp_path)
    assert out.returncode == 2 and "--steps must be >= 1" in out.stderr


# --- schedule --------------------------------------------------------------------------------

SD_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False, "my_key": 1,
}


def test_schedule_from_a_diffusers_config(tmp_path):
    config, report = tmp_path / "scheduler_config.json", tmp_path / "report.json"
    config.write_text(json.dumps(SD_SCHEDULER))
    out = run("schedule", "--from-config", str(config), "--steps", "10", "--json", str(report))
    assert out.returncode == 0, out.stdout + out.stderr
    for text in ("scaled_linear", "T = 1000", "refdiff \"eps\"", "diffusers (0-based)  901 801",
                 "refdiff t (1-based)  902 802", "warn  terminal_snr", "warn  leading_spacing", "my_key", "0 failed",
                 f"wrote {report}"):
        assert text in out.stdout, text
    r = json.loads(report.read_text())
    assert r["passed"] and r["summary"]["T"] == 1000 and r["info"]["prediction"] == "eps"
    assert r["timesteps"]["diffusers"] == list(range(901, 0, -100))
    assert r["timesteps"]["refdiff_t"] == [t + 1 for t in r["timesteps"]["diffusers"]]
    assert not list(tmp_path.glob(".refdiff-*"))


def test_schedule_failing_check_exits_1(tmp_path):
    config = tmp_path / "zero_snr.json"
    config.write_text(json.dumps({**SD_SCHEDULER, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                  "prediction_type": "v_prediction"}))
    out = run("schedule", "--from-config", str(config), "--steps", "61")  # trailing overshoots to -1
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL  timesteps" in out.stdout and "log-SNR_T = -inf" in out.stdout


@pytest.mark.parametrize(
    "content, args, message",
    [
        (None, ("--steps", "10"), "does not exist"),
        ("{not json", (), "not JSON"),
        (json.dumps({k: v for k, v in SD_SCHEDULER.items() if k != "beta_schedule"}), (),
         "missing required key 'beta_schedule'"),
        (json.dumps({**SD_SCHEDULER, "prediction_type": "eps"}), (), "prediction_type must be one of"),
        (json.dumps(SD_SCHEDULER), ("--steps", "0"), "--steps must lie in 1..T=1000"),
        (json.dumps(SD_SCHEDULER), ("--json", "/nonexistent-folder/r.json"), "does not exist"),
    ],
)
def test_schedule_bad_arguments_exit_2(tmp_path, content, args, message):
    config = tmp_path / "scheduler_config.json"
    if content is not None:
        config.write_text(content)
    out = run("schedule", "--from-config", str(config), *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_schedule_needs_from_config():
    out = run("schedule")
    assert out.returncode == 2 and "--from-config" in out.stderr


def test_sample_backend_choice(tmp_path):
    import importlib.util

    import numpy as np

    ref, twin = tmp_path / "ref.npy", tmp_path / "twin.npy"
    base = ("sample", "--target", "ring8", "--sampler", "ode_euler", "--steps", "20", "--n", "64")
    out = run(*base, "--backend", "numpy", "--out", str(ref))
    assert out.returncode == 0, out.stderr
    out = run(*base, "--backend", "numba", "--out", str(twin))
    if importlib.util.find_spec("numba") is None:
        assert out.returncode == 2 and "refdiff[fast]" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        np.testing.assert_allclose(np.load(twin), np.load(ref), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "args, message",
    [
        (("likelihood", "--checkpoint", "{ck}", "--data", "{npz}"), "is an .npz archive"),
        (("likelihood", "--checkpoint", "{npy}", "--data", "{npy}"), "not a readable refdiff checkpoint"),
        (("likelihood", "--checkpoint", "{ck}", "--data", "{txt}"), "is not a .npy array"),
        (("sample", "--checkpoint", "{ck}", "--sampler", "ddim", "--clip-x0", "1", "-1", "--out", "{out}"), "LO < HI"),
    ],
)
def test_wrong_kinds_of_file_and_range_give_one_line(ring_checkpoint, tmp_path, args, message):
    import numpy as np

    files = {"ck": str(ring_checkpoint), "npz": str(tmp_path / "a.npz"), "npy": str(tmp_path / "a.npy"),
             "txt": str(tmp_path / "a.txt"), "out": str(tmp_path / "x.npy")}
    np.savez(files["npz"], x=np.zeros((3, 2)))
    np.save(files["npy"], np.zeros((3, 2)))
    (tmp_path / "a.txt").write_text("1 2\n3 4\n")
    out = run(*(a.format(**files) for a in args))
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr and "pickle" not in out.stderr


def test_help_shows_defaults():
    out = run("train", "--help")
    assert "Adam learning rate (default: 0.002)" in out.stdout and "(default: 0)" in out.stdout
    # a help text that states its default is not given a second one
    assert "(default: 1.0)" not in run("sample", "--help").stdout and "(default: vp)" not in out.stdout


def test_every_sampler_runs_from_the_command_line(tmp_path):
    """Each sampler name the CLI offers runs on an analytic target (adaptive ones without --steps)."""
    from refdiff import cli_models

    for name in cli_models.SAMPLER_NAMES:
        steps = () if name in ("ode_rk45", "sde_adaptive") else ("--steps", "3")
        out = run("sample", "--target", "ring8", "--sampler", name, *steps, "--n", "4", "--out", str(tmp_path / "s.npy"))
        assert out.returncode == 0, (name, out.stderr)
    out = run("sample", "--target", "ring8", "--sampler", "ode_rk45", "--steps", "3", "--out", str(tmp_path / "s.npy"))
    assert out.returncode == 2 and "chooses its own step sizes" in out.stderr
