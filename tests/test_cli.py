"""The command line, run as a subprocess: happy paths and bad arguments."""

import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "refdiff", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_verify():
    out = run("--help")
    assert out.returncode == 0
    assert "verify" in out.stdout


def test_version():
    from refdiff import __version__

    out = run("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_verify_subset_with_json(tmp_path):
    path = tmp_path / "report.json"
    out = run("verify", "--only", "2", "3", "--json", str(path))
    assert out.returncode == 0, out.stderr
    assert "2.1" in out.stdout and "3.1" in out.stdout and "passed, 0 failed" in out.stdout
    report = json.loads(path.read_text())
    assert {c["id"] for c in report["checks"]} >= {"2.1", "2.2", "3.1"}
    assert all(c["passed"] for c in report["checks"])
    assert not list(tmp_path.glob(".refdiff-*"))  # no temporary file left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (("verify", "--only", "99"), "unknown entries"),
        (("verify", "--json", "/nonexistent-folder/x.json"), "does not exist"),
        (("verify", "--bogus"), "unrecognized arguments"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_without_traceback(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_no_command_prints_help_and_exits_2():
    out = run()
    assert out.returncode == 2 and "usage" in out.stdout
