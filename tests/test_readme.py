"""Every Python block of README.md runs, in order, in one namespace (as a reader would paste them)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


def test_readme_blocks_run(capsys):
    namespace = {}
    for i, block in enumerate(BLOCKS):
        try:
            exec(compile(block, f"README.md block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message names the block
            pytest.fail(f"README.md python block {i} failed: {exc!r}\n{block}")
