"""Checkpoints: atomic, weights-only loadable, and clear errors for bad files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from rcnn_cli.engine.checkpoint import (
    CheckpointStore,
    load_checkpoint,
    resolve_resume,
    rng_state,
    set_rng_state,
    sha256,
)
from rcnn_cli.errors import CheckpointError


def test_save_writes_index_with_size_and_hash(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save("last", {"model": {"w": torch.ones(3)}, "iteration": 7})
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["last"] == {"file": "last.pt", "iteration": 7, "size": path.stat().st_size,
                             "sha256": sha256(path)}
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["iteration"] == 7
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_zero_byte_and_truncated_files_are_named(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt.*0 bytes"):
        load_checkpoint(empty)
    good = CheckpointStore(tmp_path).save("last", {"model": {"w": torch.ones(1000)}})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"cut.pt \(500 bytes\) is truncated"):
        load_checkpoint(cut)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PAYLOAD_RAN",))


def test_code_payload_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "rcnn-cli/1", "model": {}, "x": Payload()}, path,
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="evil.pt.*weights-only"):
        load_checkpoint(path)
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_plain_state_dict_is_not_a_checkpoint(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="not an rcnn-cli checkpoint"):
        load_checkpoint(tmp_path / "sd.pt")


def test_resolve_resume(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints/last.pt"):
        resolve_resume(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_resume(tmp_path / "nope.pt")
    last = CheckpointStore(tmp_path / "checkpoints").save("last", {"model": {}})
    assert resolve_resume(tmp_path) == last


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(2), np.random.rand(2), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], got[0])
    assert (expected[1] == got[1]).all() and expected[2] == got[2]
