"""Checkpoints: trust boundary, verified index, pruning, walk-back resume, kill -9 mid-write."""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import signal
import subprocess
import time

import pytest
import torch

from rcnn_cli.engine import checkpoint as ckpt_mod
from rcnn_cli.engine.checkpoint import (
    CheckpointStore,
    load_latest,
    resolve_resume,
    rng_state,
    set_rng_state,
)
from rcnn_cli.errors import CheckpointError
from rcnn_cli.io import load_checkpoint, sha256
from tests.conftest import BIN, TINY


def state(iteration: int, n: int = 100) -> dict:
    return {"model": {"w": torch.full((n,), float(iteration))}, "iteration": iteration}


def test_save_writes_verified_index_and_last(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save(state(7))
    assert path.name == "model_0000007.pt"
    index = json.loads((tmp_path / "index.json").read_text())
    entry = {"file": "model_0000007.pt", "iteration": 7, "size": path.stat().st_size,
             "sha256": sha256(path)}
    assert index["checkpoints"] == [entry]
    assert index["last"] == {**entry, "file": "last.pt"}
    assert sha256(tmp_path / "last.pt") == entry["sha256"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 7
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_old_checkpoints_are_pruned_after_the_new_one(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for it in (2, 4, 6):
        store.save(state(it))
    assert sorted(p.name for p in tmp_path.glob("model_*.pt")) == [
        "model_0000004.pt", "model_0000006.pt"]
    assert [e["iteration"] for e in store.index()["checkpoints"]] == [4, 6]


# Row 3: truncated / zero-byte checkpoint.
def test_zero_byte_and_truncated_files_are_named(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt.*0 bytes"):
        load_checkpoint(empty)
    good = CheckpointStore(tmp_path).save(state(1, 1000))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"cut.pt \(500 bytes\) is truncated"):
        load_checkpoint(cut)


@pytest.mark.parametrize("damage", ["truncate", "zero", "delete"])
def test_resume_walks_back_to_the_newest_good_checkpoint(tmp_path, damage, caplog):
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(state(2))
    newest = store.save(state(4))
    (tmp_path / "checkpoints" / "last.pt").unlink()
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:100])
    elif damage == "zero":
        newest.write_bytes(b"")
    else:
        newest.unlink()
    path, ckpt = load_latest(tmp_path)
    assert path.name == "model_0000002.pt" and ckpt["iteration"] == 2
    assert "model_0000004.pt" in caplog.text


def test_no_loadable_checkpoint_is_a_clear_error(tmp_path):
    CheckpointStore(tmp_path / "checkpoints").save(state(2))
    for p in (tmp_path / "checkpoints").glob("*.pt"):
        p.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        load_latest(tmp_path)


# Row 1: a code payload is refused, naming the file and the global, and never runs.
class Payload:
    def __reduce__(self):
        return (os.system, ("touch PAYLOAD_RAN",))


def test_code_payload_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "rcnn-cli/1", "model": {}, "x": Payload()}, path,
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match=r"evil.pt was refused.*global posix.system"):
        load_checkpoint(path)
    assert not (tmp_path / "PAYLOAD_RAN").exists()


# Row 2: arbitrary globals -> refused with the trust hint; only ckpt_trust loads them.
@pytest.mark.parametrize("obj,glob", [(argparse.Namespace(lr=0.1), "argparse.Namespace"),
                                      (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear")])
def test_arbitrary_globals_need_the_explicit_trust_option(tmp_path, obj, glob, caplog):
    path = tmp_path / "full.pt"
    torch.save({"format": "rcnn-cli/1", "model": {}, "args": obj}, path)
    with pytest.raises(CheckpointError, match=rf"full.pt was refused.*{glob}.*ckpt_trust=true"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust=True)
    assert type(loaded["args"]) is type(obj)
    assert "CKPT_TRUST=TRUE" in caplog.text and glob in caplog.text


def test_plain_state_dict_is_not_a_checkpoint(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="not an rcnn-cli checkpoint"):
        load_checkpoint(tmp_path / "sd.pt")


# Row 8: nothing to resume.
def test_resolve_resume_errors_and_auto(tmp_path, caplog):
    with pytest.raises(CheckpointError, match="no checkpoints/"):
        resolve_resume(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_resume(tmp_path / "nope.pt")
    assert resolve_resume("auto", tmp_path / "new") is None
    assert "STARTING FRESH" in caplog.text
    old = CheckpointStore(tmp_path / "old" / "checkpoints")
    old.save(state(2))
    time.sleep(0.05)
    newer = CheckpointStore(tmp_path / "newer" / "checkpoints")
    newer.save(state(6))
    path, ckpt = resolve_resume("auto", tmp_path / "new")
    assert path.parent.parent.name == "newer" and ckpt["iteration"] == 6
    path, ckpt = resolve_resume("auto", tmp_path / "old")  # requeued into its own directory
    assert path.parent.parent.name == "old" and ckpt["iteration"] == 2
    path, ckpt = resolve_resume(tmp_path / "old")
    assert ckpt["iteration"] == 2


# Row 5: disk full while writing.
def test_disk_full_is_clear_and_prunes_nothing(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=1)
    store.save(state(2))
    before = (tmp_path / "index.json").read_text(), sha256(tmp_path / "last.pt")

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", full)
    with pytest.raises(CheckpointError, match="No space left.*nothing was pruned"):
        store.save(state(4))
    assert (tmp_path / "model_0000002.pt").is_file()
    assert ((tmp_path / "index.json").read_text(), sha256(tmp_path / "last.pt")) == before


def test_stale_temp_files_are_removed_and_never_read(tmp_path):
    CheckpointStore(tmp_path).save(state(2))
    stale = tmp_path / ".model_0000004.pt.abc.tmp"
    stale.write_bytes(b"half a checkpoint")
    store = CheckpointStore(tmp_path)
    assert not stale.exists()
    assert [p.name for p in store.candidates()] == ["model_0000002.pt", "last.pt"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    st = rng_state()
    torch.save(st, tmp_path / "rng.pt")
    expected = (torch.rand(2), np.random.rand(2), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], got[0])
    assert (expected[1] == got[1]).all() and expected[2] == got[2]


def wait_for(path, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


# Row 4: kill -9 during a checkpoint write.
@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "paused"
    env = {**os.environ, "RCNN_CLI_TEST_PAUSE_WRITE": f"model_0000004.pt:{marker}"}
    overrides = [o for o in TINY if not o.startswith("schedule.max_iter")]
    proc = subprocess.Popen([str(BIN / "rcnn-train"), *overrides, "schedule.max_iter=6",
                             "log.tensorboard=false", f"hydra.run.dir={run}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(marker, proc)
        ckdir = run / "checkpoints"
        before = json.loads((ckdir / "index.json").read_text())["last"]
        assert before["iteration"] == 2 and list(ckdir.glob(".model_0000004.pt.*.tmp"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert sha256(ckdir / "last.pt") == before["sha256"]
    assert load_checkpoint(ckdir / "last.pt")["iteration"] == 2
    path, ckpt = load_latest(run)
    assert ckpt["iteration"] == 2 and not list(ckdir.glob("*.tmp"))
