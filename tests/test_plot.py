"""Every figure function draws, returns its figure and writes the file it was given."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from refdiff import plot  # noqa: E402
from refdiff.analytic import GaussianMixture  # noqa: E402
from refdiff.sde import VPSDE  # noqa: E402

TWO = GaussianMixture(np.array([0.5, 0.5]), np.array([[-2.0, 0.0], [2.0, 0.0]]), np.array([0.3, 0.3]))


@pytest.fixture(autouse=True)
def _close():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _check(fig, path):
    assert isinstance(fig, matplotlib.figure.Figure)
    assert path.exists() and path.stat().st_size > 100
    assert not list(path.parent.glob(".refdiff-*"))


def test_every_figure_writes_its_file(tmp_path):
    vp = VPSDE()
    x = TWO.sample(300, rng=0)
    cases = {
        "density.png": lambda p: plot.density_and_score(TWO, vp, 0.2, n_grid=30, n_arrows=7, path=p),
        "strip.png": lambda p: plot.forward_strip(x, vp, [0.0, 0.5], path=p),
        "paths.png": lambda p: plot.trajectories(np.cumsum(np.ones((5, 3, 2)), axis=0), TWO, path=p),
        "samples.png": lambda p: plot.samples_vs_truth({"a": x}, x, path=p),
        "grid.png": lambda p: plot.image_grid(np.zeros((6, 1, 8, 8)), rows=2, path=p),
        "nfe.png": lambda p: plot.error_vs_nfe({"Euler": [(10, 0.1), (20, 0.05)]}, path=p),
        "score.svg": lambda p: plot.score_error_over_t([{"t": 0.1, "rel_mse": 0.01}, {"t": 1.0, "rel_mse": 0.001}], path=p),
        "loss.png": lambda p: plot.loss_curve(np.linspace(1, 0.1, 50), path=p),
        "bench.png": lambda p: plot.benchmark_bars({"N=1e5": {"numpy": 3.0, "numba": 1.0}}, path=p),
    }
    for name, draw in cases.items():
        path = tmp_path / name
        _check(draw(path), path)
    assert (tmp_path / "score.svg").read_text().lstrip().startswith("<?xml")


def test_image_grid_places_images_row_by_row():
    imgs = np.stack([np.full((1, 2, 2), v) for v in (-1.0, 1.0, 0.0)])
    fig = plot.image_grid(imgs, rows=1)
    data = fig.axes[0].images[0].get_array()
    assert data.shape == (2, 8)  # 3 images of width 2 with 1-pixel gaps
    assert data[0, 3] == 1.0 and data[0, 6] == 0.0


@pytest.mark.parametrize(
    "shape, rows",
    [((2, 3, 8, 8), None), ((0, 1, 8, 8), None), ((2, 64), None), ((2, 1, 4, 4), 0), ((2, 1, 4, 4), 1.5)],
)
def test_image_grid_refuses_what_it_cannot_draw(shape, rows):
    # an RGB batch once drew its first channel alone, an empty one divided by zero
    with pytest.raises(ValueError, match="images must be one-channel" if rows is None else "rows must be"):
        plot.image_grid(np.zeros(shape), rows=rows)


def test_forward_strip_takes_one_time():
    fig = plot.forward_strip(TWO.sample(50, rng=0), VPSDE(), 0.5)
    assert [ax.get_title() for ax in fig.axes] == ["t = 0.5"]
    with pytest.raises(ValueError, match="at least one time"):
        plot.forward_strip(TWO.sample(5, rng=0), VPSDE(), [])


def test_density_and_score_refuses_other_dimensions():
    three = GaussianMixture(np.ones(1), np.zeros((1, 3)), np.ones(1))
    with pytest.raises(ValueError, match="2-D"):
        plot.density_and_score(three)


def test_a_failed_save_leaves_nothing(tmp_path):
    fig = plot.loss_curve(np.ones(5))
    with pytest.raises(Exception):
        plot.save(fig, tmp_path / "figure.unknownformat")
    assert list(tmp_path.iterdir()) == []
