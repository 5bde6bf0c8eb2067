"""How the files depend on each other: no import circle among the course's modules (a
function-level import counts too), model.py the model only, and a run's settings read
from one frozen config (course.config.RunConfig), never from a Namespace changed on the way."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT


def module_name(path: Path) -> str:
    return f"course.{path.stem}" if path.parent.name == "course" else path.stem


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "course":  # from course import cli
                names |= {f"course.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    files = sorted(ROOT.glob("*.py")) + sorted((ROOT / "course").glob("*.py"))
    graph = {module_name(path): imported_modules(path) for path in files}
    return {name: deps & graph.keys() for name, deps in graph.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a path that comes back to its start), or None."""
    for start in graph:
        stack = [[start]]
        while stack:
            path = stack.pop()
            for dep in graph[path[-1]]:
                if dep == start:
                    return [*path, dep]
                if dep not in path:
                    stack.append([*path, dep])
    return None


def test_no_import_circle() -> None:
    graph = import_graph()
    assert "course.corpus" in graph["data_solution"] | graph["course.cli"], "the graph missed imports"
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_circle_finder_finds_one() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_model_py_is_the_model_only() -> None:
    imports = imported_modules(ROOT / "model.py")
    assert not any(name.startswith(("torch.optim", "torch.distributed", "course")) for name in imports)
    assert "torch.optim" not in (ROOT / "model.py").read_text(encoding="utf-8")


def test_the_training_code_reads_the_run_config_not_a_namespace() -> None:
    """The training chapter and the modules around it take a RunConfig; only the
    parsers of course.cli, course.sample and course.grading see argparse's Namespace."""
    for path in [ROOT / "train_solution.py", *sorted((ROOT / "course").glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        assert "setattr(args" not in text and "options_given =" not in text, (
            f"{path.name} changes a Namespace"
        )
        if path.name not in ("cli.py", "sample.py", "grading.py", "errors.py"):
            assert "argparse" not in text, f"{path.name} reads a run's options from argparse's Namespace"
