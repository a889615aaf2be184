"""refdiff.demo: the printed summary (the demo itself runs in tests/test_cli.py and the README test)."""

from refdiff.demo import format_summary


def test_summary_reports_the_error_at_the_largest_nfe():
    summary = {
        "samplers": [],
        "score_error": [{"t": 0.1, "rel_mse": 0.01}],
        "error_vs_nfe": {"Euler": [(10, 0.05), (20, 0.2), (100, 0.08), (50, 0.1)], "Heun": [(10, 0.3), (40, 0.02)]},
        "figures": {},
        "seconds": 1.0,
        "seed": 0,
    }
    line = next(s for s in format_summary(summary).splitlines() if s.startswith("PF-ODE error"))
    assert line == "PF-ODE error at the largest NFE tried: Euler 8.00e-02, Heun 2.00e-02"  # not the smallest error
