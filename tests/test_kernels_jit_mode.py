"""tests/jit_mode.py, the kernel tests' JIT_OFF, reads NUMBA_DISABLE_JIT as Numba does: checked against Numba's reading."""

import json
import subprocess
import sys

import pytest

from jit_mode import jit_disabled

VALUES = ["0", "1", "2", "", "00", "01", " 1", "yes", "true", "-1"]

# each value read by Numba's configuration, in a process of its own (reload_config re-reads the environment)
_NUMBA_READS = """
import json, os, sys, warnings
import numba
from numba.core import config
out = []
for value in json.loads(sys.argv[1]):
    os.environ["NUMBA_DISABLE_JIT"] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Numba warns about a value it cannot parse, and leaves the JIT on
        config.reload_config()
    out.append(bool(config.DISABLE_JIT))
print(json.dumps(out))
"""


def test_jit_disabled_agrees_with_numba_on_every_value():
    pytest.importorskip("numba")
    done = subprocess.run([sys.executable, "-c", _NUMBA_READS, json.dumps(VALUES)], capture_output=True, text=True,
                          check=True, timeout=120)
    numba_reads = json.loads(done.stdout.strip().splitlines()[-1])
    assert [jit_disabled({"NUMBA_DISABLE_JIT": v}) for v in VALUES] == numba_reads
    assert numba_reads[:2] == [False, True]  # the reading is not constant


def test_jit_disabled_without_the_variable_is_false():
    assert jit_disabled({}) is False
