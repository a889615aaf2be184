"""README.md's quick start and .ci/run must not drift apart.

CI installs the project exactly as the README says and runs the README's test
command, so every command line of the quick start block must appear, verbatim,
as a line of .ci/run.
"""

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"


def quick_start_commands():
    """The command lines of the first code block under '## Quick start'."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section is not None, "README.md has no '## Quick start' section"
    block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block is not None, "README.md's quick start has no code block"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ci_lines():
    return [line.strip() for line in CI_RUN.read_text(encoding="utf-8").splitlines()]


def test_quick_start_is_install_then_test():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    install, test = commands
    assert "pip install -e" in install and "refdiff demo" in install  # the main job
    assert test.startswith("python -m pytest")


def test_ci_runs_the_quick_start_verbatim():
    lines = ci_lines()
    missing = [command for command in quick_start_commands() if command not in lines]
    assert not missing, f".ci/run does not run these README quick start lines verbatim: {missing}"


def test_ci_commands_run_in_readme_order():
    lines = ci_lines()
    positions = [lines.index(command) for command in quick_start_commands() if command in lines]
    assert positions == sorted(positions)


def test_ci_script_is_strict_and_never_passes_on_no_tests():
    text = CI_RUN.read_text(encoding="utf-8")
    assert os.access(CI_RUN, os.X_OK), ".ci/run is not executable"
    assert "set -euo pipefail" in text
    # pytest exits 5 when it collected nothing; CI must turn that into a failure.
    assert re.search(r'"\$rc" -eq 5', text), ".ci/run does not handle pytest's exit code 5"
