"""Files in and out: atomic writes and ``weights_only`` reads, one trust boundary.

Writes go to a temp file in the same directory + fsync + os.replace, so a reader sees either
the previous file or the complete new one, never a torn write. Reads of checkpoints and weight
files go through ``load_file``: ``torch.load(weights_only=True)``, and a file that needs other
globals is refused, naming the global, unless the user sets ``ckpt_trust=true``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import pickletools
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from rcnn_cli.errors import CheckpointError

log = logging.getLogger("rcnn_cli")



def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            _test_pause(path, f)
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


FORMAT = "rcnn-cli/1"
TRUST_HINT = "ckpt_trust=true"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pickle_globals(path: Path) -> list[str]:
    """Every ``module.name`` a checkpoint's pickle imports, read statically (nothing runs)."""
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        data = z.read(name)
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, object] = {}
    last: object = None
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = last
            continue
        last = memo.get(arg) if op.name in ("GET", "BINGET", "LONG_BINGET") else arg
        if isinstance(last, str):
            strings.append(last)
    return list(dict.fromkeys(found))


def offending_global(path: Path, message: str) -> str:
    """The first global the weights-only loader does not allow (from the file, else torch's
    message, which names it only for protocol-2 pickles)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
        unsafe = [g for g in pickle_globals(path) if g not in allowed]
        if unsafe:
            return unsafe[0]
    except Exception:  # noqa: BLE001  (best effort: fall back to the message)
        pass
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else "an unsupported global"


def load_file(path: str | Path, trust: bool = False) -> dict:
    """``torch.load(weights_only=True)``; errors name the file, its size and the cause.

    ``trust=True`` (``ckpt_trust=true``) loads a refused file with ``weights_only=False``,
    which runs whatever code the pickle carries: it is logged as a warning every time.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted write?")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = offending_global(path, str(e))
        if not trust:
            raise CheckpointError(
                f"checkpoint {path} was refused: unpickling it needs the global {name}, i.e. "
                f"running code from the file, which the weights-only loader never does. If and "
                f"only if you trust where the file comes from, load it with {TRUST_HINT}") from None
        log.warning("%s: loading %s with weights_only=False although it needs the global %s; "
                    "ANY CODE IN THIS FILE RUNS NOW", TRUST_HINT.upper(), path, name)
        obj = _load_trusted(path, size)
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as e:
        raise _unreadable(path, size, e) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def _load_trusted(path: Path, size: int):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (any unpickling failure of a trusted file)
        raise _unreadable(path, size, e) from None


def _unreadable(path: Path, size: int, e: BaseException) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} ({size} bytes) is truncated or not a checkpoint: "
                           f"{type(e).__name__}: {str(e) or 'unexpected end of file'}")


def load_checkpoint(path: str | Path, trust: bool = False) -> dict:
    ckpt = load_file(path, trust)
    if ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an rcnn-cli checkpoint (no '{FORMAT}' format "
                              "field); use model.weights= for plain state dicts")
    return ckpt


def load_state_file(path: str | Path, trust: bool = False) -> dict:
    """Model weights from a plain state dict or from an rcnn-cli checkpoint."""
    obj = load_file(path, trust)
    state = obj["model"] if obj.get("format") == FORMAT else obj
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


WEIGHTS, SIDECAR = "model.safetensors", "model.json"  # an export (rcnn_cli.engine.export)
EXPORT_FORMAT = "rcnn-cli-export/1"


def is_export(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix == ".safetensors" or (path.is_dir() and (path / SIDECAR).is_file())


def load_export(path: str | Path) -> dict:
    """An export as a checkpoint-like dict (model, classes, category_ids, config, iteration)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    sidecar = weights.with_name(SIDECAR)
    try:
        meta = json.loads(sidecar.read_text())
        data = weights.read_bytes()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"export {weights}: cannot read it or its sidecar {sidecar}: "
                              f"{e}") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{sidecar} is not an rcnn-cli export sidecar ('{EXPORT_FORMAT}')")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"export {weights} ({len(data)} bytes): sha256 differs from "
                              f"{sidecar} (corrupt or replaced file)")
    try:
        state = load(data)
    except SafetensorError as e:
        raise CheckpointError(f"export {weights}: not a safetensors file: {e}") from None
    return {"model": state, "classes": meta["classes"], "category_ids": meta["category_ids"],
            "config": meta["config"], "iteration": meta["iteration"]}


def _test_pause(path: Path, f) -> None:
    """TEST-ONLY hook: ``RCNN_CLI_TEST_PAUSE_WRITE=<file name>:<marker path>`` stops a write
    of that file half-way (marker created, process sleeps) so a test can ``kill -9`` it at a
    known point. Unset in normal use; it changes nothing else."""
    spec = os.environ.get("RCNN_CLI_TEST_PAUSE_WRITE")
    if not spec or spec.split(":", 1)[0] != path.name:
        return
    import time

    f.flush()
    Path(spec.split(":", 1)[1]).touch()
    while True:
        time.sleep(1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
