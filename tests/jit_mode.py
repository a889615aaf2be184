"""Whether this test run has Numba's kernels run as plain Python: ``NUMBA_DISABLE_JIT`` read as Numba reads it
(an integer, non-zero to disable; anything else leaves the JIT on), without importing Numba, so that a test
file can decide its sizes and skips before it finds out whether Numba is installed."""

import os


def jit_disabled(environ=None) -> bool:
    value = (os.environ if environ is None else environ).get("NUMBA_DISABLE_JIT", "0")
    try:
        return int(value) != 0
    except ValueError:
        return False


JIT_OFF = jit_disabled()
