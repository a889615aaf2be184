r"""Tests for refdiff.scheduler_config: diffusers scheduler configs read as refdiff schedules.

Expected betas are written here from diffusers' formulas as plain Python loops
(no linspace, no refdiff schedule function); expected timesteps are the
examples of Lin et al. 2024, Table 2, and hand-worked cases of diffusers'
``set_timesteps``.
"""

import json
import math

import numpy as np
import pytest

from refdiff.scheduler_config import (
    PREDICTION_TYPES,
    betas_from_config,
    check_schedule,
    diffusers_timesteps,
    schedule_from_config,
    schedule_report,
    schedule_warnings,
)
from refdiff.schedules import DiscreteSchedule

RTOL = 1e-12

SD = {  # Stable Diffusion 1.x scheduler_config.json (diffusers 0.6)
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}


def cfg(**kw):
    base = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
            "beta_start": 0.0001, "beta_end": 0.02, "timestep_spacing": "trailing", "clip_sample": False}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def names(pairs):
    return {p[0] for p in pairs}


def failed(checks):
    return {name for name, passed, _ in checks if not passed}


# ---------------------------------------------------------------- independent references
def ref_linear(T, bs, be):
    return [bs + (be - bs) * i / (T - 1) for i in range(T)] if T > 1 else [bs]


def ref_scaled_linear(T, bs, be):
    a, b = math.sqrt(bs), math.sqrt(be)
    return [(a + (b - a) * i / (T - 1)) ** 2 for i in range(T)]


def ref_cosine(T):
    """diffusers' betas_for_alpha_bar(T, max_beta=0.999), as its Python loop."""
    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]


def ref_sigmoid(T, bs, be):
    return [bs + (be - bs) / (1 + math.exp(-(-6 + 12 * i / (T - 1)))) for i in range(T)]


def ref_rescale(betas_d):
    """Lin et al. 2024, Algorithm 1, step by step on diffusers' 0-based betas (float64)."""
    ab, sq = 1.0, []
    for b in betas_d:
        ab *= 1 - b
        sq.append(math.sqrt(ab))
    s0, sT = sq[0], sq[-1]
    sq = [(s - sT) * s0 / (s0 - sT) for s in sq]
    ab = [s * s for s in sq]
    return [1 - ab[0]] + [1 - ab[i] / ab[i - 1] for i in range(1, len(ab))]


# ---------------------------------------------------------------- betas
@pytest.mark.parametrize("T", [1, 2, 10, 1000])
def test_linear_betas_follow_diffusers_linspace(T):
    b, info = betas_from_config(cfg(num_train_timesteps=T, beta_start=0.0001, beta_end=0.02))
    assert b.dtype == np.float64 and b.shape == (T + 1,) and b[0] == 0.0
    np.testing.assert_allclose(b[1:], ref_linear(T, 0.0001, 0.02), rtol=RTOL)
    assert info["T"] == T and info["beta_schedule"] == "linear"


@pytest.mark.parametrize("T", [2, 37, 1000])
def test_scaled_linear_is_linear_in_sqrt_beta(T):
    b, _ = betas_from_config(cfg(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085,
                                 beta_end=0.012))
    np.testing.assert_allclose(b[1:], ref_scaled_linear(T, 0.00085, 0.012), rtol=RTOL)
    assert b[1] == pytest.approx(0.00085, rel=RTOL) and b[-1] == pytest.approx(0.012, rel=RTOL)


@pytest.mark.parametrize("T", [1, 10, 1000, 4000])
def test_squaredcos_cap_v2_is_the_capped_cosine(T):
    b, _ = betas_from_config(cfg(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", beta_start=...,
                                 beta_end=...))
    # diffusers' loop computes 1 - ratio with cancellation (~1e-16 / beta_1 relative error)
    np.testing.assert_allclose(b[1:], ref_cosine(T), rtol=1e-9)
    assert b[-1] == 0.999  # the cap, PITFALLS 4


@pytest.mark.parametrize("T", [2, 50, 1000])
def test_sigmoid_betas(T):
    b, _ = betas_from_config(cfg(num_train_timesteps=T, beta_schedule="sigmoid"))
    np.testing.assert_allclose(b[1:], ref_sigmoid(T, 0.0001, 0.02), rtol=RTOL)


def test_trained_betas_override_beta_schedule():
    tb = [0.001, 0.01, 0.1, 0.5]
    b, info = betas_from_config(cfg(num_train_timesteps=..., beta_schedule="nonsense", trained_betas=tb))
    np.testing.assert_array_equal(b, [0.0, *tb])
    assert info["T"] == 4 and info["beta_schedule"] == "trained_betas"


def test_float64_betas_are_diffusers_float32_betas_before_rounding():
    """diffusers stores float32 (PITFALLS 3); refdiff keeps float64: they differ by one float32 rounding."""
    b, _ = betas_from_config(cfg(beta_schedule="linear"))
    b32 = np.linspace(0.0001, 0.02, 1000, dtype=np.float32)
    np.testing.assert_allclose(b[1:], b32, rtol=np.finfo(np.float32).eps)
    assert np.any(b[1:] != b32.astype(np.float64))  # float32 really is rounded
    rel = schedule_report(cfg())["summary"]["float32_alpha_bar_rel_diff"]
    assert 0 < rel < 1e-4


def test_index_mapping_alpha_bar_t_is_alphas_cumprod_t_minus_1():
    sched, _ = schedule_from_config(SD)
    betas_d = ref_scaled_linear(1000, 0.00085, 0.012)
    cumprod, ab = 1.0, []
    for b in betas_d:  # diffusers: alphas_cumprod = cumprod(1 - betas), 0-based
        cumprod *= 1 - b
        ab.append(cumprod)
    assert isinstance(sched, DiscreteSchedule) and sched.T == 1000 and sched.alpha_bar[0] == 1.0
    np.testing.assert_allclose(sched.alpha_bar[1:], ab, rtol=1e-11)
    # Lin et al. 2024: Stable Diffusion's sqrt(alpha_bar_T) = 0.068
    assert math.sqrt(sched.alpha_bar[-1]) == pytest.approx(0.0683, abs=1e-4)


# ---------------------------------------------------------------- zero terminal SNR
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_rescale_betas_zero_snr_is_lin_et_al_algorithm_1(schedule):
    base, _ = betas_from_config(cfg(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012))
    b, info = betas_from_config(cfg(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012,
                                    rescale_betas_zero_snr=True))
    assert info["rescale_betas_zero_snr"] is True
    expected = ref_rescale(list(base[1:]))
    np.testing.assert_allclose(b[1:-1], expected[:-1], rtol=1e-9)
    assert b[-1] == 1.0 and expected[-1] == 1.0
    sched = DiscreteSchedule(b)
    assert sched.alpha_bar[-1] == 0.0 and sched.log_snr[-1] == -np.inf
    assert sched.alpha_bar[1] == pytest.approx(1 - base[1], rel=1e-12)  # t = 1 is kept
    checks = check_schedule(sched, info, 50)
    assert not failed(checks) and "zero_terminal_snr" in names(checks)


def test_terminal_snr_warnings():
    assert "terminal_snr" in names(schedule_warnings(*betas_from_config(SD)))
    for quiet in (cfg(beta_schedule="squaredcos_cap_v2"), cfg(rescale_betas_zero_snr=True,
                                                                 prediction_type="v_prediction")):
        assert "terminal_snr" not in names(schedule_warnings(*betas_from_config(quiet)))
    eps = cfg(rescale_betas_zero_snr=True)  # prediction_type defaults to epsilon
    assert "zero_snr_epsilon" in names(schedule_warnings(*betas_from_config(eps)))


def test_report_is_strict_json_at_zero_snr():
    r = schedule_report(cfg(rescale_betas_zero_snr=True, prediction_type="v_prediction"))
    text = json.dumps(r, allow_nan=False)
    s = json.loads(text)["summary"]
    assert s["zero_terminal_snr"] is True and s["log_snr_T"] is None and s["alpha_bar_T"] == 0.0
    assert r["passed"] and not r["warnings"]


# ---------------------------------------------------------------- timesteps
def test_timesteps_lin_et_al_table_2():
    """T = 1000, 10 steps: the three spacings of Lin et al. 2024, Table 2 (0-based)."""
    assert diffusers_timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert diffusers_timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert diffusers_timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


def test_timesteps_leading_offset_and_round_half_to_even():
    assert diffusers_timesteps(1000, 50, "leading", steps_offset=1).tolist() == list(range(981, 0, -20))
    # np.round: 499.5 -> 500 (half to even), i.e. refdiff t = 501
    assert diffusers_timesteps(1000, 3, "linspace").tolist() == [999, 500, 0]
    r = schedule_report(cfg(timestep_spacing="linspace"), steps=3)
    assert r["timesteps"]["refdiff_t"] == [1000, 501, 1]


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 50, 999])
def test_report_maps_timesteps_to_refdiff_t(spacing, n):
    r = schedule_report(cfg(timestep_spacing=spacing), steps=n)
    d, t = r["timesteps"]["diffusers"], r["timesteps"]["refdiff_t"]
    assert t == [i + 1 for i in d] and len(d) == n and d == sorted(d, reverse=True)
    assert r["passed"]
    # leading never reaches t = T here (999 steps: 0..998); linspace needs 2 steps to reach it
    assert (max(t) == 1000) == (spacing == "trailing" or (spacing == "linspace" and n > 1))
    warned = "leading_spacing" in names(schedule_warnings(*betas_from_config(cfg(timestep_spacing=spacing)), n))
    assert warned == (spacing == "leading")


def test_leading_with_offset_past_the_end_fails():
    """1000 of 1000 steps with steps_offset=1 reaches index 1000 (diffusers #10003, PITFALLS 11)."""
    b, info = betas_from_config(cfg(timestep_spacing="leading", steps_offset=1))
    assert failed(check_schedule(b, info, 1000)) == {"timesteps"}
    assert not failed(check_schedule(b, info, 999))


def test_trailing_float_overshoot_fails():
    """np.arange(1000, 0, -1000 / 61) has 62 entries; the last rounds to 0, giving timestep -1."""
    ts = diffusers_timesteps(1000, 61, "trailing")
    assert ts.shape == (62,) and ts[-1] == -1
    checks = check_schedule(*betas_from_config(cfg()), 61)
    assert failed(checks) == {"timesteps"}
    assert "62 timesteps" in dict((n, m) for n, _, m in checks)["timesteps"]


# ---------------------------------------------------------------- other settings
@pytest.mark.parametrize("ptype, name", sorted(PREDICTION_TYPES.items()))
def test_prediction_type_maps_to_refdiff_names(ptype, name):
    assert betas_from_config(cfg(prediction_type=ptype))[1]["prediction"] == name


def test_legacy_predict_epsilon():
    info = betas_from_config(cfg(predict_epsilon=False))[1]
    assert info["prediction_type"] == "sample" and info["prediction"] == "x0"


def test_defaults_by_class_and_keys_reported():
    info = betas_from_config(SD)[1]
    assert info["defaulted"] == {"prediction_type": "epsilon", "timestep_spacing": "leading"}
    assert info["ignored_keys"] == ["skip_prk_steps"] and info["unknown_keys"] == []
    info = betas_from_config(cfg(_class_name="EulerDiscreteScheduler", timestep_spacing=..., clip_sample=...,
                                 frobnicate=1))[1]
    assert info["timestep_spacing"] == "linspace" and info["clip_sample"] is False
    assert info["unknown_keys"] == ["frobnicate"] and any("EulerDiscreteScheduler" in n for n in info["notes"])
    assert "unknown_keys" in names(schedule_warnings(*betas_from_config(cfg(frobnicate=1))))


def test_clip_sample_and_set_alpha_to_one_warn():
    ddim_default = cfg(clip_sample=...)  # DDIMScheduler's clip_sample defaults to true
    assert betas_from_config(ddim_default)[1]["defaulted"] == {"prediction_type": "epsilon", "steps_offset": 0,
                                                                 "clip_sample": True, "set_alpha_to_one": True}
    assert "clip_sample" in names(schedule_warnings(*betas_from_config(ddim_default)))
    assert "clip_sample" not in names(schedule_warnings(*betas_from_config(cfg())))
    w = dict(schedule_warnings(*betas_from_config(SD)))
    assert "0.0292" in w["set_alpha_to_one"]  # sqrt(1 - (1 - 0.00085))


def test_pndm_lcm_and_tcd_timesteps_are_not_claimed_as_diffusers_own():
    """PNDM repeats a step (skip_prk_steps) or adds Runge-Kutta ones; LCM and TCD pick among
    original_inference_steps steps and never read timestep_spacing, so no warning about its leading spacing."""
    info = betas_from_config(SD)[1]
    assert any("PNDMScheduler.set_timesteps differs" in n for n in info["notes"])
    for cls in ("LCMScheduler", "TCDScheduler"):
        lcm = cfg(_class_name=cls, timestep_spacing="leading", steps_offset=1, original_inference_steps=50)
        betas, info = betas_from_config(lcm)
        assert any(f"{cls}.set_timesteps ignores timestep_spacing" in n for n in info["notes"])
        assert "leading_spacing" not in names(schedule_warnings(betas, info, 4))
    assert "leading_spacing" in names(schedule_warnings(*betas_from_config(cfg(timestep_spacing="leading")), 4))


def test_set_alpha_to_one_takes_the_class_default():
    no_key = {k: v for k, v in SD.items() if k != "set_alpha_to_one"}  # PNDMScheduler: false by default
    info = betas_from_config(no_key)[1]
    assert info["set_alpha_to_one"] is False and info["defaulted"]["set_alpha_to_one"] is False
    assert "set_alpha_to_one" in names(schedule_warnings(*betas_from_config(no_key)))
    assert betas_from_config(cfg())[1]["set_alpha_to_one"] is True  # DDIMScheduler: true by default
    assert betas_from_config(cfg(_class_name="DDPMScheduler"))[1]["set_alpha_to_one"] is None  # no such option


def test_thresholding_replaces_clipping():
    betas, info = betas_from_config(cfg(clip_sample=True, thresholding=True))
    w = names(schedule_warnings(betas, info))
    assert "thresholding" in w and "clip_sample" not in w and "thresholding" not in info["ignored_keys"]


# ---------------------------------------------------------------- bad betas and bad configs
def test_bad_trained_betas_fail_the_checks_not_the_parse():
    for tb, bad in (([0.1, 1.5, 0.2], "betas"), ([0.1, 0.0, 0.2], "betas"), ([0.1, 1.0, 0.2], "betas"),
                    ([0.1, 1e-20, 0.2], "alpha_bar_decreasing")):
        b, info = betas_from_config(cfg(num_train_timesteps=3, trained_betas=tb))
        assert bad in failed(check_schedule(b, info, 2)), tb
        assert not schedule_report(cfg(num_train_timesteps=3, trained_betas=tb), steps=2)["passed"]
        if bad == "betas":
            with pytest.raises(ValueError):
                schedule_from_config(cfg(num_train_timesteps=3, trained_betas=tb))
    ok = cfg(num_train_timesteps=3, trained_betas=[0.1, 0.5, 1.0])  # 1 allowed at t = T
    assert not failed(check_schedule(*betas_from_config(ok), 2))


def test_betas_check_message_states_the_interval():
    """The passing betas check prints the whole interval: (0, 1), or (0, 1] when beta_T = 1."""
    messages = {name: msg for name, _, msg in check_schedule(*betas_from_config(SD), 50)}
    assert messages["betas"] == "1000 betas finite, in (0, 1): beta_1 = 0.00085, beta_T = 0.012"
    zero = cfg(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    messages = {name: msg for name, _, msg in check_schedule(*betas_from_config(zero), 50)}
    assert messages["betas"].startswith("1000 betas finite, in (0, 1]: beta_1 = ")
    assert messages["betas"].endswith(", beta_T = 1 (zero terminal SNR)")


@pytest.mark.parametrize(
    "config, message",
    [
        (cfg(num_train_timesteps=...), "missing required key 'num_train_timesteps'"),
        (cfg(beta_schedule=...), "missing required key 'beta_schedule'"),
        (cfg(beta_schedule=None), "missing required key 'beta_schedule'"),
        (cfg(beta_start=...), "missing required key 'beta_start'"),
        (cfg(beta_schedule="cosine"), "beta_schedule must be one of"),
        (cfg(beta_start=0), "beta_start must be a number in (0, 1)"),
        (cfg(beta_end="0.02"), "beta_end must be a number in (0, 1)"),
        (cfg(beta_end=1.0), "beta_end must be a number in (0, 1)"),
        (cfg(num_train_timesteps=1000.0), "num_train_timesteps must be an integer"),
        (cfg(num_train_timesteps=True), "num_train_timesteps must be an integer"),
        (cfg(num_train_timesteps=0), "num_train_timesteps must be an integer >= 1"),
        (cfg(prediction_type="eps"), "prediction_type must be one of"),
        (cfg(timestep_spacing="uniform"), "timestep_spacing must be one of"),
        (cfg(steps_offset=-1), "steps_offset must be an integer >= 0"),
        (cfg(rescale_betas_zero_snr="yes"), "rescale_betas_zero_snr must be true or false"),
        (cfg(clip_sample=2), "clip_sample must be true or false"),
        (cfg(clip_sample=True, clip_sample_range="2"), "clip_sample_range must be a positive number"),
        (cfg(clip_sample_range=0.0), "clip_sample_range must be a positive number"),
        (cfg(thresholding="yes"), "thresholding must be true or false"),
        (cfg(trained_betas=[0.1, 0.2]), "trained_betas has 2 entries"),
        (cfg(trained_betas="0.1"), "trained_betas must be a non-empty list"),
        (cfg(trained_betas=[]), "trained_betas must be a non-empty list"),
        (cfg(_class_name="MyScheduler", timestep_spacing=...), "no known default"),
        (cfg(num_train_timesteps=1, rescale_betas_zero_snr=True), "num_train_timesteps >= 2"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
         "has no discrete beta schedule"),
    ],
)
def test_bad_configs_raise_value_error_naming_the_key(config, message):
    with pytest.raises(ValueError) as exc:
        betas_from_config(config)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_not_a_dict_and_bad_steps():
    with pytest.raises(TypeError, match="JSON object"):
        betas_from_config([1, 2])
    for steps in (0, 1001, 2.0, True):
        with pytest.raises(ValueError, match="steps must be an integer in 1..T=1000"):
            schedule_report(cfg(), steps=steps)
    with pytest.raises(ValueError, match="spacing must be one of"):
        diffusers_timesteps(1000, 10, "uniform")


def test_refdiff_spacing_is_diffusers_plus_one_for_every_n():
    """refdiff.schedules.spaced_timesteps equals the diffusers copy here, shifted to 1-based t."""
    from refdiff.schedules import spaced_timesteps

    T = 1000
    for n in range(1, T + 1):
        d = np.sort(np.asarray(diffusers_timesteps(T, n, "linspace", 0)))
        np.testing.assert_array_equal(spaced_timesteps(T, n, "linspace"), d + 1, err_msg=f"n={n}")
