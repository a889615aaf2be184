"""Write a file so that it is either complete or absent: temporary file, then ``os.replace``.

Used by every writer in refdiff (checkpoints, ``.npy`` and JSON outputs,
figures). The temporary file lives in the target's folder (a rename across
file systems is not atomic) and gets the permissions a plain ``open`` would
give (``mkstemp`` makes it 0600).
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write, suffix: str = "", binary: bool = True) -> str:
    """Call ``write(fh)`` on a temporary file next to ``path``, then move it over ``path``.

    ``write`` may also take a path instead of a file object: pass
    ``binary=None`` and it receives the temporary file's name (for writers
    such as matplotlib's ``savefig`` that pick the format from the name).
    On any error the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".refdiff-", suffix=suffix)
    try:
        if binary is None:
            os.close(fd)
            write(tmp)
        else:
            with os.fdopen(fd, "wb" if binary else "w") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
