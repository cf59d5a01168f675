"""The layout the code promises a reader: stages that do not lean on each other, defaults written once, and a tree
that describes what is true now rather than how it got there."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from brainspade import settings

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "brainspade"
# Shared helpers of the stages, not stages: every stage may use them.
STAGE_HELPERS = {"brainspade.stages.config", "brainspade.stages.checks"}  # config helpers, not stages


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth (lazy imports inside functions included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_no_stage_imports_another_stage_or_the_cli():
    stages = sorted(p for p in (PACKAGE / "stages").glob("*.py") if p.name != "__init__.py")
    assert len(stages) > 10
    for path in stages:
        own = f"brainspade.stages.{path.stem}"
        allowed = STAGE_HELPERS | {own}
        wrong = sorted(m for m in imported_modules(path) if m == "brainspade.cli" or (
            m.startswith("brainspade.stages.") and not any(m == a or m.startswith(f"{a}.") for a in allowed)))
        assert not wrong, f"{path.relative_to(REPO)} imports {wrong}"


def test_nothing_below_the_cli_imports_it():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in {"cli.py", "__main__.py"}:
            continue
        assert "brainspade.cli" not in imported_modules(path), f"{path.relative_to(REPO)} imports brainspade.cli"


def test_the_layout_check_sees_a_sideways_import(tmp_path):
    """The checks above read lazy imports too (a stage importing another inside a function is still an arrow)."""
    stage = tmp_path / "stage.py"
    stage.write_text("def run(cfg):\n    from brainspade.stages import sample\n    from brainspade.cli import main\n")
    assert {"brainspade.stages.sample", "brainspade.cli"} <= imported_modules(stage)


SETTINGS_CLASSES = [cls for _, cls in inspect.getmembers(settings, inspect.isclass)
                    if dataclasses.is_dataclass(cls) and cls.__module__ == settings.__name__]


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda cls: cls.__name__)
def test_no_settings_field_carries_a_default_of_its_own(cls):
    """Every value lives in the commented YAML (configs/stage/*.yaml); a default here would be a second copy."""
    defaults = [spec.name for spec in dataclasses.fields(cls)
                if spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING]
    assert not defaults, f"{cls.__name__} has defaults for {defaults}; write them in the YAML only"


def test_every_settings_class_is_checked():
    assert len(SETTINGS_CLASSES) > 15


# Written with character classes so that this file does not match itself.
DIARY = re.compile(r"session[ ][0-9]|issue[ ][0-9]+|round[ ][0-9]", re.IGNORECASE)
TEXT_SUFFIXES = {".py", ".yaml", ".md", ".sh", ".toml", ".txt", ".cfg"}


def test_the_tree_speaks_of_what_is_true_now():
    """History is git's: no work-log words anywhere in code, configs, tests, scripts or docs."""
    roots = [REPO / name for name in ("brainspade", "configs", "tests", "scripts", "benchmarks")]
    files = [REPO / "README.md", *(p for root in roots for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES)]
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in files if "__pycache__" not in path.parts
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
             if DIARY.search(line)]
    assert not found, "\n".join(found[:20])
