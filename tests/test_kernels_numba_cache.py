"""Numba's kernel cache is dropped when any kernel source changes (kernels/_numba_cache.py)."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from refdiff.kernels import _numba_cache as nc

HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def _sources(tmp_path):
    """A folder with copies of two kernel sources (the digest reads only ``*.py``)."""
    src = tmp_path / "src"
    src.mkdir()
    kernels = Path(nc.__file__).parent
    for name in ("_numba_math.py", "_numba_cache.py"):
        shutil.copy(kernels / name, src / name)
    (src / "notes.txt").write_text("not a source")
    return src


def test_sources_digest_follows_every_source_and_nothing_else(tmp_path):
    src = _sources(tmp_path)
    d0 = nc.sources_digest(src)
    assert d0 == nc.sources_digest(src) and len(d0) == 64
    (src / "notes.txt").write_text("edited")  # not a .py: no change
    assert nc.sources_digest(src) == d0
    helper = src / "_numba_math.py"
    text = helper.read_text()
    helper.write_text(text.replace("_SHIFT = ", "_SHIFT  = ", 1))  # one byte more in the helper alone
    d1 = nc.sources_digest(src)
    assert d1 != d0
    helper.write_text(text)
    assert nc.sources_digest(src) == d0
    (src / "_new.py").write_text("")  # a new, empty module
    assert nc.sources_digest(src) != d0
    (src / "_new.py").unlink()
    (src / "_numba_cache.py").rename(src / "_numba_cache2.py")  # same bytes, another name
    assert nc.sources_digest(src) != d0


def _cache(tmp_path, stamp=None):
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("mixture_numba._one_pass-730.py311.nbi", "mixture_numba._one_pass-730.py311.1.nbc",
                 "mixture_numba._one_pass-730.py311.2.nbc", "_numba_math.fma-10.py311.nbi"):
        (cache / name).write_bytes(b"cached")
    (cache / "other.pyc").write_bytes(b"python's own")
    if stamp is not None:
        (cache / nc.STAMP_NAME).write_text(stamp)
    return cache


def test_drop_stale_keeps_caches_of_the_same_sources(tmp_path):
    cache = _cache(tmp_path, stamp="abc")
    before = sorted(p.name for p in cache.iterdir())
    assert nc.drop_stale(cache, "abc") == 0
    assert sorted(p.name for p in cache.iterdir()) == before


@pytest.mark.parametrize("stamp", [None, "abc"])
def test_drop_stale_deletes_numbas_files_of_other_sources_and_stamps_the_new(tmp_path, stamp):
    cache = _cache(tmp_path, stamp=stamp)
    assert nc.drop_stale(cache, "def") == 4
    assert sorted(p.name for p in cache.iterdir()) == sorted(["other.pyc", nc.STAMP_NAME])
    assert (cache / nc.STAMP_NAME).read_text() == "def"
    assert nc.drop_stale(cache, "def") == 0  # stamped: the caches Numba writes next are kept


def test_drop_stale_leaves_a_folder_it_cannot_read_alone(tmp_path):
    assert nc.drop_stale(tmp_path / "missing", "def") == 0
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
def test_kernels_cache_where_the_stamp_is_and_the_stamp_matches_the_sources():
    """Once a kernel module is imported, the stamp in the kernels' cache folder holds the digest of the current
    sources, and that folder is the one Numba caches a kernel in."""
    from numba.core.caching import FunctionCache

    from refdiff.kernels import mixture_numba

    cache_dir = nc.kernel_cache_dir()
    assert cache_dir is not None
    kernel = mixture_numba._score_lanes_1pass
    assert FunctionCache(getattr(kernel, "py_func", kernel))._cache_path == cache_dir
    assert (Path(cache_dir) / nc.STAMP_NAME).read_text() == nc.sources_digest()


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
def test_importing_a_kernel_module_drops_a_stale_cache(tmp_path):
    """End to end, in a cache folder of its own (NUMBA_CACHE_DIR): cached kernels stamped with other sources
    are gone once a kernel module has been imported, and the stamp is the current sources'."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    where = "from refdiff.kernels import _numba_cache as nc; print(nc.kernel_cache_dir())"
    cache = Path(subprocess.run([sys.executable, "-c", where], env=env, check=True, capture_output=True,
                                text=True).stdout.strip())
    assert tmp_path in cache.parents
    stale = cache / "mixture_numba._one_pass-730.py311.nbi"
    stale.write_bytes(b"from other sources")
    (cache / nc.STAMP_NAME).write_text("0" * 64)
    subprocess.run([sys.executable, "-c", "import refdiff.kernels._numba_math"], env=env, check=True)
    assert not stale.exists()
    assert (cache / nc.STAMP_NAME).read_text() == nc.sources_digest()
