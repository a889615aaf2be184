"""Packaging: the wheel ships every module, the editable install maps
``kernels/`` to ``refdiff.kernels``, and ``import refdiff`` needs the core
dependencies only and imports nothing heavy.

Every check runs Python in a subprocess, so what the test process itself has
imported cannot hide a missing module or a leaked import.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Source folders and the package each one is installed as.
SOURCE_ROOTS = ((REPO / "refdiff", "refdiff"), (REPO / "kernels", "refdiff.kernels"))

# Modules documented as needing an extra: {module name: extra}. Without the
# extra, importing one must raise ImportError naming the extra; every other
# module must import with the core dependencies alone.
NEEDS_EXTRA = {
    "refdiff.kernels._numba_gemm": "fast",
    "refdiff.kernels._numba_math": "fast",
    "refdiff.kernels.conv_numba": "fast",
    "refdiff.kernels.mixture_numba": "fast",
    "refdiff.kernels.fused_numba": "fast",
    "refdiff.kernels.mlp_numba": "fast",
}

# Optional or foreign packages that `import refdiff` must not need.
BLOCKED = ("numba", "cupy", "matplotlib", "hypothesis", "pytest", "torch", "jax", "dask", "tqdm")
# Packages that must stay unimported after `import refdiff` (imported lazily).
LAZY = ("scipy", "numba", "matplotlib", "cupy", "array_api_compat.numpy")
# Python's startup must not see the test environment's path settings.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
CLEAN_ENV["PYTHONNOUSERSITE"] = "1"
# A source tree copied for a build leaves these out.
NOT_SOURCE = {".git", ".venv", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache"}


def modules_under(root, package):
    """Module names of every .py file under ``root``, installed as ``package``."""
    names = set()
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join([package, *parts]))
    return names


def source_modules():
    """Every module of the source tree: refdiff/X -> refdiff.X, kernels/X -> refdiff.kernels.X."""
    names = set()
    for root, package in SOURCE_ROOTS:
        if root.is_dir():
            names |= modules_under(root, package)
    return names


def importable(names):
    """Modules to import by name (a ``__main__`` module would run the CLI)."""
    return sorted(name for name in names if name.rpartition(".")[2] != "__main__")


def cuda_sources(root):
    return {path.relative_to(root).as_posix() for path in root.rglob("*.cu")}


def run(args, cwd, check=True, timeout=300):
    """Run ``args`` in a clean environment; return the completed process."""
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        shown = " ".join("<script>" if len(str(a)) > 200 else str(a) for a in args)
        pytest.fail(f"{shown} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# A child that imports each module named in argv[1] (JSON), allowing an
# ImportError naming the extra for the modules of NEEDS_EXTRA (argv[2]).
IMPORT_ALL = textwrap.dedent(
    """
    import importlib, json, sys, traceback
    names, needs_extra = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    failures = []

    def fail(name, exc):
        # The first failure with its traceback, the rest in one line each.
        detail = traceback.format_exc() if not failures else repr(exc)
        failures.append(name + ": " + detail)

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            extra = needs_extra.get(name)
            if extra is None or extra not in str(exc):
                fail(name, exc)
        except Exception as exc:
            fail(name, exc)
    if failures:
        sys.exit("modules that failed to import:\\n" + "\\n".join(failures))
    """
)


def copy_source_tree(dest):
    """Copy the repository without VCS data, caches, build output or virtualenvs."""

    def ignore(folder, names):
        skip = {n for n in names if n in NOT_SOURCE or n.endswith(".egg-info")}
        skip |= {n for n in names if (Path(folder) / n / "pyvenv.cfg").exists()}
        return skip

    shutil.copytree(REPO, dest, ignore=ignore)


def test_source_tree_has_packages():
    names = source_modules()
    assert "refdiff" in names and "refdiff.kernels" in names, sorted(names)


def test_wheel_installs_every_module_in_a_clean_venv(tmp_path):
    """Build the wheel, install it alone in a new venv, import every module from it."""
    setuptools = pytest.importorskip("setuptools", reason="the `test` extra installs setuptools")
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        pytest.skip(f"building the wheel offline needs setuptools>=70.1, found {setuptools.__version__}")

    # Build from a copy: an in-tree build would leave build/ in the checkout,
    # and a stale build/lib can put deleted modules into the wheel.
    src, wheelhouse, venv, work = (tmp_path / n for n in ("src", "wheelhouse", "venv", "work"))
    copy_source_tree(src)
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", wheelhouse, src], cwd=work)
    (wheel,) = wheelhouse.glob("refdiff-*.whl")

    run([sys.executable, "-m", "venv", venv], cwd=work)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "--no-index", "-q", wheel], cwd=work)

    # Let the venv see the dependencies already installed here, without the
    # network: a .pth line is appended to sys.path after the venv's own
    # site-packages, and .pth files inside such a folder are not processed, so
    # an editable install of refdiff in this environment cannot leak in.
    import array_api_compat
    import numpy
    import scipy

    dep_dirs = dict.fromkeys(str(Path(m.__file__).resolve().parent.parent) for m in (numpy, scipy, array_api_compat))
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work).stdout.strip()
    Path(purelib, "_refdiff_test_dependencies.pth").write_text("\n".join(dep_dirs) + "\n", encoding="utf-8")

    info = run([python, "-c", "import json, refdiff; print(json.dumps(list(refdiff.__path__)))"], cwd=work)
    (installed,) = (Path(p).resolve() for p in json.loads(info.stdout))
    assert installed.is_relative_to(venv.resolve()), f"refdiff imported from {installed}, not from the venv"

    expected = source_modules()
    assert modules_under(installed, "refdiff") == expected, "the wheel's modules differ from the source tree's"
    assert cuda_sources(installed / "kernels") == cuda_sources(REPO / "kernels"), ".cu files missing from the wheel"

    run([python, "-c", IMPORT_ALL, json.dumps(importable(expected)), json.dumps(NEEDS_EXTRA)], cwd=work)

    script = venv / "bin" / "refdiff"
    assert script.is_file(), "the wheel installs no `refdiff` console script"
    if (REPO / "refdiff" / "cli.py").exists():
        assert "usage" in run([script, "--help"], cwd=work).stdout.lower()
    if (REPO / "refdiff" / "__main__.py").exists():
        assert "usage" in run([python, "-m", "refdiff", "--help"], cwd=work).stdout.lower()


def editable_install_root():
    """The folder refdiff is editable-installed from, or skip the test."""
    # An in-tree refdiff.egg-info (left by setuptools) has no direct_url.json:
    # look at every refdiff distribution on sys.path, not only the first.
    dists = list(importlib.metadata.distributions(name="refdiff"))
    if not dists:
        pytest.skip("refdiff is not installed (pip install -e '.[test]')")
    urls = [json.loads(d.read_text("direct_url.json") or "{}") for d in dists]
    editable = [u for u in urls if u.get("dir_info", {}).get("editable")]
    if not editable:
        pytest.skip("no editable install of refdiff found (pip install -e .)")
    direct_url = editable[0]
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(direct_url["url"]).path)).resolve()


def test_editable_install_maps_kernels_folder(tmp_path):
    """`pip install -e .` makes refdiff.kernels import from the checkout's kernels/."""
    if editable_install_root() != REPO.resolve():
        pytest.skip(f"refdiff is editable-installed from {editable_install_root()}, not from this checkout")
    code = "import json, refdiff, refdiff.kernels as k; print(json.dumps([refdiff.__file__, k.__file__]))"
    # Run outside the checkout, so only the install can resolve the import.
    files = json.loads(run([sys.executable, "-c", code], cwd=tmp_path).stdout)
    assert [Path(f).resolve() for f in files] == [
        (REPO / "refdiff" / "__init__.py").resolve(),
        (REPO / "kernels" / "__init__.py").resolve(),
    ]


# Preamble of a child that runs the checkout's source (in isolated mode, -I):
# the repository goes first on sys.path, refdiff.kernels maps to kernels/ as
# setup.py maps it, and the packages in BLOCKED cannot be imported.
SOURCE_PREAMBLE = textwrap.dedent(
    """
    import importlib.abc, importlib.util, json, sys
    REPO, BLOCKED = {repo!r}, {blocked!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{{name}} is blocked: refdiff must import without it", name=name)
            return None

    class KernelsFolder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "refdiff.kernels":
                return importlib.util.spec_from_file_location(
                    name, REPO + "/kernels/__init__.py", submodule_search_locations=[REPO + "/kernels"]
                )
            return None

    preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    assert not preloaded, f"loaded at interpreter startup: {{preloaded}}"
    sys.meta_path[:0] = [Blocker(), KernelsFolder()]
    sys.path.insert(0, REPO)
    """
)


def source_child(blocked, body):
    return SOURCE_PREAMBLE.format(repo=str(REPO), blocked=tuple(blocked)) + textwrap.dedent(body)


def test_every_module_imports_with_core_dependencies_only(tmp_path):
    code = source_child(BLOCKED, IMPORT_ALL)
    run([sys.executable, "-I", "-c", code, json.dumps(importable(source_modules())), json.dumps(NEEDS_EXTRA)], cwd=tmp_path)


def test_import_refdiff_is_lazy(tmp_path):
    """`import refdiff` needs no optional package and loads no heavy one."""
    body = """
    import refdiff
    assert refdiff.__file__.startswith(REPO), refdiff.__file__
    print(json.dumps(sorted(sys.modules)))
    """
    loaded = json.loads(run([sys.executable, "-I", "-c", source_child(BLOCKED, body)], cwd=tmp_path).stdout)
    eager = [p for p in LAZY if any(m == p or m.startswith(p + ".") for m in loaded)]
    assert not eager, f"`import refdiff` imports what must be imported lazily: {eager}"
