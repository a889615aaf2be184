"""Numba's on-disk cache of the kernels, dropped whenever a kernel source changes.

Numba keys each cached function by the modification time and size of the
file that defines it, not of the files whose functions it inlines. The
kernels inline across this folder (every lane loop takes its exp and FMA from
``_numba_math``, the GEMM paths their tiles from ``_numba_gemm``), so an edit
to one helper module alone (a ``git pull`` into an editable install, say) left
the other modules' cached machine code as it was, and the old helper ran on
without a sign.

:func:`drop_stale_kernel_caches` runs once, when the first Numba kernel
module is imported (``_numba_math``, which all of them import first). It
hashes every ``*.py`` of this folder and compares the digest with the one
stored in Numba's cache folder for it; where they differ (or none is stored)
it deletes the cached kernels there (Numba's ``*.nbi`` index and ``*.nbc``
data files) and stores the new digest. Numba then compiles each kernel afresh
at its first call and caches it again. A process that loses a race with
another over the same folder only recompiles: Numba treats a data file that
vanished under its index as a cache miss.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = []

#: The file, in the kernels' cache folder, that holds the digest of the sources the cached kernels came from.
STAMP_NAME = "refdiff-kernel-sources.sha256"

_HERE = Path(__file__).resolve().parent


def sources_digest(folder=_HERE) -> str:
    """SHA-256 (hex) over the names and bytes of every ``*.py`` in ``folder``, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def drop_stale(cache_dir, digest: str) -> int:
    """Delete Numba's cache files (``*.nbi``, ``*.nbc``) in ``cache_dir`` unless its stamp holds ``digest``,
    then store ``digest`` as the stamp. Returns the number of files deleted. A file or stamp that cannot be
    removed or written (a read-only install) is left as it is: Numba then keeps its own checks."""
    cache_dir = Path(cache_dir)
    stamp = cache_dir / STAMP_NAME
    try:
        if stamp.read_text() == digest:
            return 0
    except OSError:  # no stamp yet: caches from before it existed may be stale as well
        pass
    dropped = 0
    for path in sorted(cache_dir.glob("*.nbi")) + sorted(cache_dir.glob("*.nbc")):
        try:
            path.unlink()
            dropped += 1
        except OSError:
            pass
    try:  # written whole, then renamed: a concurrent reader sees the old stamp or the new one
        tmp = cache_dir / f"{STAMP_NAME}.{os.getpid()}.tmp"
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    except OSError:
        pass
    return dropped


def _probe():
    """Defined in this folder, so Numba's cache locators place its cache where they place the kernels'."""


def kernel_cache_dir():
    """The folder where Numba caches the functions of this folder (its own locator's choice: ``__pycache__``
    beside the sources, a user-wide folder where that is not writable, or one under ``NUMBA_CACHE_DIR``), or
    None where Numba gives none."""
    try:
        from numba.core.caching import FunctionCache

        return FunctionCache(_probe)._cache_path
    except Exception:  # Numba's internals moved, or no locator applies: Numba's own checks alone remain
        return None


def drop_stale_kernel_caches() -> int:
    """:func:`drop_stale` on :func:`kernel_cache_dir` with this folder's :func:`sources_digest`; 0 where Numba
    gives no cache folder."""
    cache_dir = kernel_cache_dir()
    return 0 if cache_dir is None else drop_stale(cache_dir, sources_digest())
