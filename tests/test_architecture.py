"""The layout is the architecture: the import arrows between top-level folders, no import cycle among the project's
modules, every doc path code cites, and test modules that share only through conftest.py.

`ALLOWED` is the table docs/architecture.md draws: which folders each folder's modules may import (module-level or
inside functions, found with `ast`). A new arrow fails here until it is drawn there too; train/ is reached from
outside only through its public entry point (`train/__init__.py`), from bench/, release/ and tests.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("shards", "pipeline", "model", "train", "evaluate", "infer", "export", "bench", "demo", "release")
ALLOWED = {
    "pipeline": set(),
    "shards": {"pipeline"},  # packs with pipeline.io's decoding rules, into pipeline.shard_format's layout
    "model": set(),
    "train": {"pipeline", "model", "evaluate"},
    "evaluate": {"pipeline", "model"},
    "infer": {"pipeline", "model", "evaluate", "export"},  # metrics; the runtimes that load exported files
    "export": {"pipeline", "model"},
    "bench": {"pipeline", "model", "train", "evaluate", "infer", "export", "shards"},
    "demo": {"pipeline", "model", "infer", "evaluate"},
    "release": {"pipeline", "model", "train", "evaluate", "shards"},  # the shipped model's making; packs its data
}
TRAIN_PUBLIC = "train"  # outside train/, `from train import ...` only (the package's __init__)


def imports(path: Path) -> list[str]:
    """Every absolute module name `path` imports, at any depth (functions included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def arrows() -> dict[str, dict[str, set[str]]]:
    """folder -> imported folder -> the modules that import it."""
    found: dict[str, dict[str, set[str]]] = {folder: {} for folder in FOLDERS}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for name in imports(path):
                target = name.split(".")[0]
                if target in FOLDERS and target != folder:
                    found[folder].setdefault(target, set()).add(f"{path.relative_to(ROOT)} -> {name}")
    return found


def module_graph(root: Path, folders: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the project modules it imports, at module level or inside functions. `from pkg import name` is an
    arrow to `pkg.name` when that is a module, else to `pkg` (a package's `__init__`)."""
    paths = {}
    for folder in folders:
        for path in (root / folder).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module for a in node.names
                }
        graph[name] = {target for target in targets if target in paths and target != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per module that can reach itself, deduplicated."""
    found: dict[frozenset[str], list[str]] = {}
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for target in sorted(graph[module]):
                if target == start:
                    found.setdefault(frozenset(path), [*path, start])
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    return list(found.values())


def test_no_import_cycle_among_the_project_modules():
    cycles = import_cycles(module_graph(ROOT, FOLDERS))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("import pkg.c\n")
    (tmp_path / "pkg" / "c.py").write_text("def late():\n    from pkg.a import thing\n")
    (tmp_path / "pkg" / "d.py").write_text("import pkg.a\n")  # reaches the cycle, is not in it
    assert import_cycles(module_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (tmp_path / "pkg" / "c.py").write_text("def late():\n    return 1\n")
    assert import_cycles(module_graph(tmp_path, ("pkg",))) == []


def test_imports_follow_the_drawn_arrows():
    wrong = {
        f"{folder} -> {target}": sorted(where)
        for folder, targets in arrows().items()
        for target, where in targets.items()
        if target not in ALLOWED[folder]
    }
    assert not wrong, f"imports outside docs/architecture.md's arrows: {wrong}"


def test_train_is_reached_only_through_its_public_entry_point():
    deep = sorted(
        w
        for folder, t in arrows().items()
        if folder != "train"
        for w in t.get("train", set())
        if not w.endswith(f"-> {TRAIN_PUBLIC}")
    )
    assert not deep, f"outside train/, import the public entry point (from train import ...): {deep}"


def test_architecture_doc_draws_the_same_arrows():
    text = (ROOT / "docs" / "architecture.md").read_text()
    drawn = set(re.findall(r"^\s*(\w+) --> (\w+)", text, flags=re.M))
    allowed = {(folder, target) for folder, targets in ALLOWED.items() for target in targets}
    assert drawn == allowed, f"missing in the doc: {allowed - drawn}; not in the code's table: {drawn - allowed}"


def test_every_doc_path_cited_in_code_exists():
    missing = []
    for path in ROOT.rglob("*"):
        if path.suffix not in (".py", ".sh", ".yaml") or ".venv" in path.parts or not path.is_file():
            continue
        for cited in re.findall(r"\bdocs/[\w./-]+\w", path.read_text(errors="replace")):
            if not (ROOT / cited).exists():
                missing.append(f"{path.relative_to(ROOT)}: {cited}")
    assert not missing, missing


def test_no_test_module_imports_another():
    """Tests share fixtures and helpers through conftest.py, never by importing another test module."""
    crossed = [
        f"{path.name} -> {name}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for name in imports(path)
        if name.split(".")[0].startswith("test_") or name.startswith("tests.")
    ]
    assert not crossed, crossed


def test_readme_layout_table_lists_the_same_arrows():
    rows = re.findall(r"^\| `(\w+)/` \| ([^|]+) \|", (ROOT / "README.md").read_text(), flags=re.M)
    listed = {name: set() if imports.strip() == "(none)" else set(imports.split(", ")) for name, imports in rows}
    listed = {name: {t.strip() for t in targets} for name, targets in listed.items() if name in FOLDERS}
    assert listed == ALLOWED, "README.md's layout table: the imports column differs from docs/architecture.md"
