"""Test helper: checkpoints as an older refdiff wrote them."""

import json

import numpy as np


def drop_data_record(path):
    """Rewrite a checkpoint as an older refdiff wrote it: no record of the training data."""
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    meta = json.loads(entries["metadata"].tobytes().decode("utf-8"))
    del meta["train"]["data"]
    entries["metadata"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **entries)


def nudge_schedule(path, rel=1e-15):
    """Rewrite a checkpoint of a discrete-schedule objective with its log alpha-bar moved by ``rel`` relative:
    the last-bit differences of a schedule as an older refdiff computed it."""
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    meta = json.loads(entries["metadata"].tobytes().decode("utf-8"))
    lab = meta["train"]["objective"]["process"]["log_alpha_bar"]
    meta["train"]["objective"]["process"]["log_alpha_bar"] = [v * (1 + rel) for v in lab]
    entries["metadata"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **entries)
