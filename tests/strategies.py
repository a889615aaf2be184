"""Hypothesis strategies shared by the schedule, forward-process and conversion tests."""

from hypothesis import strategies as st

from refdiff import schedules as sch
from refdiff.schedules import DiscreteSchedule

NAMES = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2", "sigmoid")


@st.composite
def schedule_specs(draw, max_T=2000, zero_snr=None, variants=True):
    """(name, T, kwargs, rescale): every named schedule, random T and beta range, optional zero terminal SNR.

    ``variants=False`` keeps the default cosine clip and sigmoid range, so only ``rescale`` makes the
    terminal SNR zero (tests that need gamma_T > 0 away from rescaling use that).
    """
    name = draw(st.sampled_from(NAMES))
    rescale = draw(st.booleans()) if zero_snr is None else zero_snr
    T = draw(st.integers(2 if rescale else 1, max_T))
    if name in ("cosine", "squaredcos_cap_v2"):
        # max_beta=None already ends at beta_T = 1; rescaling that is tested on its own
        # (test_rescale_is_idempotent_on_zero_snr_schedules)
        choices = [0.999, 0.5] if rescale or not variants else [0.999, 0.5, None]
        kwargs = {"s": draw(st.floats(0.0, 0.1)), "max_beta": draw(st.sampled_from(choices))}
    else:
        kwargs = {"beta_start": draw(st.floats(1e-5, 2e-2)), "beta_end": draw(st.floats(1e-3, 0.3))}
        if name == "sigmoid" and variants:
            kwargs["low"] = draw(st.floats(-10.0, 0.0))
            kwargs["high"] = draw(st.floats(0.5, 10.0))
    return name, T, kwargs, rescale


def build(spec):
    name, T, kwargs, rescale = spec
    betas = sch.make_betas(name, T, **kwargs)
    if rescale:
        betas = sch.rescale_zero_terminal_snr(betas)
    return DiscreteSchedule(betas)
