"""benchmarks/README.md lists every program of benchmarks/ in its table, and a test of
tests/benchmarks/ runs each (tests/benchmarks/ is for the programs; tests/benchmark/ mirrors the
library package rcnn_cli/benchmark/)."""

from tests.conftest import REPO


def test_every_program_is_in_the_readme_table_and_has_a_test():
    programs = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py"))
    readme = (REPO / "benchmarks" / "README.md").read_text()
    listed = sorted(line.split("`")[1].removesuffix(".py") for line in readme.splitlines()
                    if line.startswith("| [`"))
    assert listed == programs
    tests = (REPO / "tests" / "benchmarks").glob("test_*.py")
    run = {name for t in tests for name in programs
           if f'"{name}"' in t.read_text() or f'"{name}.py"' in t.read_text()}
    assert run == set(programs), sorted(set(programs) - run)


def test_no_program_or_tool_is_named_after_an_issue():
    names = [p.name for d in ("benchmarks", "scripts") for p in (REPO / d).iterdir()]
    assert not [n for n in names if "issue" in n.lower()]
