"""The equation catalogue: every check passes, and a wrong formula makes it fail."""

import numpy as np
import pytest

from refdiff import verify


# entries 12-15 run samplers (seconds each); the default suite covers their pieces in test_samplers.py
_SAMPLING = {"12", "13", "14", "15"}


@pytest.mark.parametrize(
    "entry", [pytest.param(e, marks=pytest.mark.slow) if e in _SAMPLING else e for e in verify.ENTRIES]
)
def test_catalogue_entry_passes(entry):
    checks = verify.ENTRIES[entry]()
    assert checks, f"entry {entry} produced no checks"
    for c in checks:
        assert c.id.split(".")[0] == entry
        assert c.source and c.title
        assert c.passed, f"{c.id} {c.title}: error {c.error:.3g} > tolerance {c.tolerance:.3g}"


def test_run_selects_entries_and_rejects_unknown():
    checks = verify.run(["2", "4"])
    assert {c.id.split(".")[0] for c in checks} == {"2", "4"}
    with pytest.raises(ValueError, match="unknown catalogue entries"):
        verify.run(["16"])


def test_catalogue_covers_entries_1_to_15():
    assert list(verify.ENTRIES) == [str(i) for i in range(1, 16)]


def test_check_pass_logic():
    assert verify.Check("x", "t", 1e-13, 1e-12, "s").passed
    assert not verify.Check("x", "t", 2e-12, 1e-12, "s").passed
    assert not verify.Check("x", "t", float("nan"), 1e-12, "s").passed
    assert verify.Check("x", "t", 0.0, 1e-12, "s").as_dict()["passed"] is True


def test_wrong_posterior_is_caught(monkeypatch):
    """A posterior variance off by one part in 1e9 fails entry 3."""
    real = verify.posterior_coefs

    def wrong(process, s, t):
        c0, ct, v = real(process, s, t)
        return c0, ct, v * (1 + 1e-9)

    monkeypatch.setattr(verify, "posterior_coefs", wrong)
    assert not all(c.passed for c in verify.entry_3())


def test_missing_sqrt_in_eps_form_is_caught(monkeypatch):
    """The slide typo beta_t / (1 - alpha_bar_t) (no square root) in the eps-form mean fails entries 4 and 6."""
    from refdiff.schedules import DiscreteSchedule

    real = verify.posterior_mean_from_eps

    def typo(process, x_t, eps, t, s=None):
        if isinstance(process, DiscreteSchedule) and s is None:
            t = np.asarray(t)
            a, b = process.alphas[t][:, None], process.betas[t][:, None]
            return (x_t - b / (1 - process.alpha_bar[t][:, None]) * eps) / np.sqrt(a)
        return real(process, x_t, eps, t, s)

    monkeypatch.setattr(verify, "posterior_mean_from_eps", typo)
    assert not all(c.passed for c in verify.entry_6())


def test_wrong_subvp_variance_is_caught(monkeypatch):
    """sigma^2 = 1 - exp(-B) for sub-VP (the missing square) fails entry 7."""
    from refdiff.sde import SubVPSDE

    monkeypatch.setattr(SubVPSDE, "variance", lambda self, t: -np.expm1(-self.integral_beta(t)))
    assert not all(c.passed for c in verify.entry_7())
