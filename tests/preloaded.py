"""Run the CLIs and the benchmark programs in forks of one preloaded interpreter.

A program the tests start pays ~3 s before its first line, importing torch and torchvision
(whose ``ops`` import ``torch._dynamo``); the suite starts dozens. Each test worker
therefore keeps one helper interpreter that imports the heavy libraries once, computes nothing
and starts no thread, and forks a child per run. The child takes the run's argv, environment,
working directory, stdin (/dev/null) and stdout/stderr (files), then calls what the real start
would: the console script's entry point, or the script as ``__main__``. Its exit status is the
run's, as ``subprocess`` reports it (``-N``: killed by signal N).

``RCNN_TESTS_SUBPROCESS=1`` starts every program as a plain subprocess instead. Tests of how a
program starts or stops (process groups, signals, torchrun) start their own processes.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Imported once by the helper: the libraries and the programs' modules (none of them starts a
# thread when imported, and none reads the environment then, but matplotlib's MPLCONFIGDIR and
# MPLBACKEND, which no test sets).
PRELOAD = ("torch", "torchvision.ops", "torchvision.models.detection", "hydra", "rich.console",
           "rcnn_cli.train", "rcnn_cli.evaluate", "rcnn_cli.predict", "rcnn_cli.export",
           "rcnn_cli.data_cli", "rcnn_cli.engine.train", "rcnn_cli.engine.evaluator",
           "rcnn_cli.modeling.build", "rcnn_cli.deploy.onnx",
           # imported where a run evaluates (its PR-curve and confusion PNGs) or exports: ~1 s
           # per program otherwise (matplotlib reads its rc file and font cache when imported)
           "matplotlib.figure", "matplotlib.backends.backend_agg", "onnx")


def forking() -> bool:
    return os.environ.get("RCNN_TESTS_SUBPROCESS", "") in ("", "0") and hasattr(os, "fork")


class Helper:
    """The worker's side: one helper process, one run at a time."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        self.pending = b""
        assert self.message(timeout=300) == {"ready": True}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def message(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("the preloaded helper exited")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return json.loads(line)

    def run(self, argv: list[str], target: str, env: dict, cwd: Path | None,
            timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"argv": argv, "target": target, "env": env, "cwd": str(cwd or Path.cwd()),
                       "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            pid = self.message(timeout=60)["pid"]
            try:
                code = self.message(timeout)["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self.message(timeout=60)
                raise subprocess.TimeoutExpired(argv, timeout, out.read_text(),
                                                err.read_text()) from None
            return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


_helper: Helper | None = None


def run(argv: list[str], target: str, env: dict, cwd: Path | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``argv`` (text output captured) in a fork of the helper; ``target`` is
    ``entry:<module>:<function>`` (a console script) or ``script:<path>`` (``argv`` is then
    ``[python, path, ARGS]``)."""
    global _helper
    if not forking():
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=timeout)
    if _helper is None or not _helper.alive():
        _helper = Helper()
    return _helper.run(argv, target, env, cwd, timeout)


def close() -> None:
    global _helper
    if _helper is not None and _helper.alive():
        _helper.close()
    _helper = None


# --- the helper's side ------------------------------------------------------------------


def child(request: dict) -> None:
    """In the fork: become the requested program, run it, exit with its status."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None
        if "numpy" in sys.modules:  # a fresh interpreter seeds it from the OS (``random``
            sys.modules["numpy"].random.seed()  # reseeds itself in a fork)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        unbuffered = os.environ.get("PYTHONUNBUFFERED", "") != ""
        sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=unbuffered)
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
            line_buffering=True)
        sys.argv = list(request["argv"])
        code = call(request["target"])
    except SystemExit as stop:
        code = exit_code(stop.code)
    except BaseException:  # what an uncaught exception does to a real interpreter
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001  (a closed stream: nothing left to write)
                pass
        os._exit(code)


def exit_code(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def call(target: str) -> int:
    import importlib
    import runpy

    kind, _, rest = target.partition(":")
    if kind == "entry":
        module, _, function = rest.partition(":")
        sys.path[0] = str(Path(sys.argv[0]).parent)  # as for a console script
        return exit_code(getattr(importlib.import_module(module), function)())
    sys.argv = sys.argv[1:]  # ``python script.py ARGS``: argv starts at the script
    sys.path[0] = str(Path(rest).parent)
    runpy.run_path(rest, run_name="__main__")
    return 0


def serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    reply = sys.stdout.buffer

    def send(message: dict) -> None:
        reply.write(json.dumps(message).encode() + b"\n")
        reply.flush()

    send({"ready": True})
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        send({"returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
