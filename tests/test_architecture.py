"""The layout is the architecture: the import arrows between top-level folders, every doc path code cites, and
test modules that share only through conftest.py.

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
