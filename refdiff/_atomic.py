"""Write a file so that it is either complete or absent: temporary file, then ``os.replace``.

Used by every writer in refdiff (checkpoints, ``.npy`` and JSON outputs,
figures). The temporary file lives in the target's folder (a rename across
file systems is not atomic) and gets the permissions a plain ``open`` would
give (``mkstemp`` makes it 0600). An ``OSError`` names the path the caller
asked for, never the temporary file (a missing folder reads as that path
missing, as a plain ``open`` would report it).
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
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".refdiff-", suffix=suffix)
    except OSError as exc:  # no such folder, no permission: about path, not the temporary name
        raise _about(exc, path) from None
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
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and tmp in (exc.filename, exc.filename2):
            raise _about(exc, path) from None
        raise
    return path


def _about(exc: OSError, path: str) -> OSError:
    """The same error (class, errno, message) about ``path`` instead of the temporary file."""
    if exc.errno is None:
        return type(exc)(f"{exc}; writing {path}")
    return type(exc)(exc.errno, exc.strerror, path)
