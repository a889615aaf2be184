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


def _failed(checks):
    return {c.id for c in checks if not c.passed}


def _with_edit(fn, old, new):
    """``fn`` recompiled from its source with ``old`` replaced by ``new`` (a mutation of the code under test)."""
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(fn))
    assert src.count(old) == 1, f"{fn.__name__} no longer contains {old!r}; update this mutation"
    scope = {}
    exec(compile(src.replace(old, new), inspect.getsourcefile(fn), "exec"), fn.__globals__, scope)
    return scope[fn.__name__]


def test_ddpm_sampler_variance_error_is_caught(monkeypatch):
    """``var = 4.0 * var`` inside the DDPM sampler fails entry 6, for both variance choices."""
    import refdiff.samplers as samplers
    from refdiff.samplers import ancestral

    line = "        x_next = per_example(coef_x0, x) * x0"
    monkeypatch.setattr(samplers, "ddpm", _with_edit(ancestral.ddpm, line, "        var = 4.0 * var\n" + line))
    assert {"6.3", "6.4"} <= _failed(verify.entry_6())


def test_mala_that_depends_on_the_normaliser_is_caught(monkeypatch):
    """An accept/reject test that sees p + 1 instead of p (so Z no longer cancels) fails entry 11."""
    import refdiff.samplers as samplers

    real = samplers.mala

    def mala(score, log_prob, x_init, **kw):
        return real(score, lambda y: np.logaddexp(log_prob(y), 0.0), x_init, **kw)

    monkeypatch.setattr(samplers, "mala", mala)
    assert "11.1" in _failed(verify.entry_11())


def test_guidance_scale_law_is_checked_away_from_gamma_1(monkeypatch):
    """gamma squared inside both guidances (invisible at gamma = 1) fails entry 14's scale-law checks."""
    from refdiff import guidance, verify_sampling

    real = guidance._check_gamma
    monkeypatch.setattr(guidance, "_check_gamma", lambda gamma: real(gamma) ** 2)
    assert {"14.7", "14.8"} <= _failed(verify_sampling._guidance_scale_law(*verify_sampling._labelled_ring()))


def test_classifier_is_checked_independently_of_the_conditionals(monkeypatch):
    """Swapped class conditionals keep 14.1-14.3 (gradient = conditional - unconditional score) green,
    but not the classifier's Bayes check; a wrong mixture score fails the finite-difference check."""
    from refdiff import verify_sampling
    from refdiff.analytic import GaussianMixture

    lm, process, x, t = verify_sampling._labelled_ring()
    lm._conditionals = {0: lm._conditionals[1], 1: lm._conditionals[0]}
    assert "14.5" in _failed(verify_sampling._classifier_checks(lm, process, x, t))

    lm, process, x, t = verify_sampling._labelled_ring()
    real = GaussianMixture.score
    monkeypatch.setattr(GaussianMixture, "score", lambda self, *a, **kw: 1.001 * real(self, *a, **kw))
    assert "14.6" in _failed(verify_sampling._classifier_checks(lm, process, x, t))


def test_json_report_is_strict_json(monkeypatch, tmp_path, capsys):
    """A NaN error is written as null (strict parsers reject a bare NaN); the printed table keeps 'nan'."""
    import json

    from refdiff import cli

    checks = [verify.Check("1.1", "finite", 1e-13, 1e-12, "s"), verify.Check("1.2", "not a number", float("nan"), 1e-12, "s")]
    monkeypatch.setattr(verify, "run", lambda only=None, progress=None: checks)
    path = tmp_path / "report.json"
    assert cli.main(["verify", "--json", str(path)]) == 1
    assert "nan" in capsys.readouterr().out

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    report = json.loads(path.read_text(), parse_constant=reject)
    rows = {c["id"]: c for c in report["checks"]}
    assert rows["1.1"]["error"] == 1e-13 and rows["1.1"]["passed"] is True
    assert rows["1.2"]["error"] is None and rows["1.2"]["passed"] is False
