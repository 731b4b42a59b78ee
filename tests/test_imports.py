"""The import graph of ``rcnn_cli``, parsed from the source (``ast``, nothing is imported):
no circle among its modules, and the lower rooms (modeling, data, evaluation) never import the
engine that drives them.

Every import statement counts, module-level and inside functions alike: a lazy import only
moves the circle from start-up to the first call, so it is no excuse for one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rcnn_cli"
LOWER = ("rcnn_cli.modeling", "rcnn_cli.data", "rcnn_cli.evaluation")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """The ``rcnn_cli`` modules that ``name`` imports: ``from pkg import mod`` names the
    module ``pkg.mod`` when there is one, else the package ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_parser_sees_the_imports_it_must():
    assert "rcnn_cli.engine.trainer" in GRAPH["rcnn_cli.engine.train"]
    assert "rcnn_cli.engine.stages.graph" in GRAPH["rcnn_cli.engine.stages.region"]
    assert "rcnn_cli.modeling.region.build" in GRAPH["rcnn_cli.modeling.build"]  # a lazy one
    assert "rcnn_cli.engine.distributed" in GRAPH["rcnn_cli.engine.trainer"]  # from pkg import mod
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("room", LOWER)
def test_lower_rooms_do_not_import_the_engine(room):
    upward = {f"{name} -> {dep}" for name, deps in GRAPH.items()
              if name == room or name.startswith(room + ".")
              for dep in deps if dep.startswith("rcnn_cli.engine")}
    assert not upward, sorted(upward)


def test_entry_points_start_without_torch():
    """``--help`` and a misspelt config key are answered before torch is imported (2-3 s on a
    small CPU): the entry points and the config schemas import neither torch nor torchvision."""
    import subprocess
    import sys

    entry_points = ["train", "evaluate", "predict", "export", "data_cli"]
    code = ("import sys\n" + "".join(f"import rcnn_cli.{m}\n" for m in entry_points)
            + "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
