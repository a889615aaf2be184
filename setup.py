"""Install refdiff: the package ``refdiff`` plus the folder ``kernels/``,
installed as its subpackage ``refdiff.kernels``."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).resolve().parent


def read_version():
    """Return ``__version__`` from refdiff/_version.py without importing refdiff."""
    text = (HERE / "refdiff" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("no __version__ = '...' line in refdiff/_version.py")
    return match.group(1)


extras = {
    "fast": ["numba>=0.59"],
    # One CuPy build at a time: pick the extra matching the CUDA major version.
    "gpu-cuda12": ["cupy-cuda12x>=13"],
    "gpu-cuda13": ["cupy-cuda13x>=13.6"],
    "plot": ["matplotlib>=3.7"],
    # The 8x8 handwritten digits (refdiff.data.load_digits) ship inside scikit-learn.
    "images": ["scikit-learn>=1.3"],
    # setuptools builds the wheel offline (no build isolation) in the packaging test.
    # matplotlib and scikit-learn let the suite cover the figures and the digits too.
    "test": ["pytest>=7", "hypothesis>=6.80", "array-api-strict>=2.0", "setuptools>=70.1", "scikit-learn>=1.3",
             "matplotlib>=3.7"],
}
extras["dev"] = sorted(set(extras["fast"] + extras["plot"] + extras["images"] + extras["test"]))

packages = find_packages(include=["refdiff", "refdiff.*"])
packages += ["refdiff.kernels"]
packages += ["refdiff.kernels." + name for name in find_packages("kernels")]

setup(
    name="refdiff",
    version=read_version(),
    description=(
        "NumPy-first reference implementation of diffusion and score-based "
        "generative models, checked against analytic ground truth"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"refdiff.kernels": "kernels"},
    package_data={"refdiff.kernels": ["*.cu", "**/*.cu"]},
    install_requires=["numpy>=1.25", "scipy>=1.10", "array-api-compat>=1.9"],
    extras_require=extras,
    entry_points={"console_scripts": ["refdiff = refdiff.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
