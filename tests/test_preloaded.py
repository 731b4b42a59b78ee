"""tests/preloaded.py: a program run in a fork of the preloaded helper sees and returns what a
plain subprocess would (argv, environment, working directory, streams, exit status)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import preloaded

PROGRAM = """
import json, os, sys
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
                  "env": os.environ.get("PRELOADED_PROBE"), "main": __name__,
                  "stdin": sys.stdin.read()}))
print("to stderr", file=sys.stderr)
if sys.argv[1] == "raise":
    raise ValueError("boom")
if sys.argv[1] == "sleep":
    import time
    time.sleep(60)
if sys.argv[1] == "signal":
    sys.stdout.flush()
    os.kill(os.getpid(), 15)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def program(tmp_path):
    script = tmp_path / "bin" / "probe.py"
    script.parent.mkdir()
    script.write_text(PROGRAM)
    return script


def both(monkeypatch, script, *args, cwd):
    env = {**os.environ, "PRELOADED_PROBE": "x"}
    argv = [sys.executable, str(script), *args]
    forked = preloaded.run(argv, f"script:{script}", env, cwd, timeout=60)
    monkeypatch.setenv("RCNN_TESTS_SUBPROCESS", "1")
    plain = preloaded.run(argv, f"script:{script}", env, cwd, timeout=60)
    monkeypatch.delenv("RCNN_TESTS_SUBPROCESS")
    return forked, plain


@pytest.mark.parametrize("args", [["0"], ["3", "more"], ["raise"], ["signal"]])
def test_a_forked_run_returns_what_a_subprocess_returns(monkeypatch, program, tmp_path, args):
    forked, plain = both(monkeypatch, program, *args, cwd=tmp_path)
    assert forked.returncode == plain.returncode
    assert forked.stdout == plain.stdout and forked.stdout  # argv, cwd, env, sys.path[0], stdin
    if args == ["raise"]:
        assert forked.returncode == 1 and "ValueError: boom" in forked.stderr
        assert forked.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1]
    else:
        assert forked.stderr == plain.stderr == "to stderr\n"
    assert forked.returncode == {"0": 0, "3": 3, "raise": 1, "signal": -15}[args[0]]


def test_a_run_past_its_timeout_is_killed_and_the_helper_goes_on(program, tmp_path):
    argv = [sys.executable, str(program), "sleep"]
    with pytest.raises(subprocess.TimeoutExpired):
        preloaded.run(argv, f"script:{program}", dict(os.environ), tmp_path, timeout=2)
    done = preloaded.run([sys.executable, str(program), "4"], f"script:{program}",
                         dict(os.environ), tmp_path, timeout=60)
    assert done.returncode == 4 and '"main": "__main__"' in done.stdout
