"""Atomic writes: complete or absent, and errors about the path the caller asked for."""

import os

import numpy as np
import pytest

from refdiff._atomic import atomic_write
from refdiff.nn import MLP, save_checkpoint


def test_writes_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    assert atomic_write(path, lambda fh: fh.write("hello"), suffix=".txt", binary=False) == str(path)
    assert path.read_text() == "hello" and os.listdir(tmp_path) == ["a.txt"]


def test_a_missing_folder_is_reported_as_the_requested_path(tmp_path):
    # mkstemp failed first and named its temporary file (.refdiff-XXXX.npz), a path nobody asked for
    path = tmp_path / "missing" / "x.npz"
    net = MLP(2, width=4, depth=1)
    with pytest.raises(FileNotFoundError) as info:
        save_checkpoint(path, net, net.init(0))
    assert info.value.filename == str(path) and str(path) in str(info.value)
    assert ".refdiff-" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing") as info:
        atomic_write(str(path), lambda fh: np.save(fh, np.zeros(3)), suffix=".npy")
    assert ".refdiff-" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_failing_move_names_the_requested_path_and_cleans_up(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a folder in the way: os.replace fails
    with pytest.raises(OSError) as info:
        atomic_write(target, lambda fh: fh.write(b"x"))
    assert info.value.filename == str(target) and ".refdiff-" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_an_error_inside_the_writer_propagates_and_leaves_nothing(tmp_path):
    def write(fh):
        fh.write(b"half")
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        atomic_write(tmp_path / "x.bin", write)
    assert os.listdir(tmp_path) == []
