"""The package is typed (PEP 561) and documented: ``py.typed`` and the stub of the compiled
module ship with it, ``mypy --strict`` passes on its source, every public name has a docstring."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

import lstmx

PACKAGE = Path(lstmx.__file__).parent  # the installed package (or python/lstmx in a checkout)
SOURCE = Path(__file__).resolve().parents[1] / "python" / "lstmx"


def test_typing_files_are_installed() -> None:
    assert (PACKAGE / "py.typed").is_file()
    assert (PACKAGE / "_core.pyi").is_file()


def test_mypy_strict(tmp_path: Path) -> None:
    require("mypy")
    require("torch")  # lstmx.torch is checked against torch's own annotations
    require("jax")  # and lstmx.jax against jax's
    if not SOURCE.is_dir():
        pytest.skip("no source tree beside the tests")
    # Static analysis runs none of lstmx's code: no sanitizer runtime (CI's ASan stage) for it.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path),
                          "python/lstmx"], cwd=SOURCE.parents[1], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("Success: no issues found"), out.stdout


def _undocumented(tree: ast.AST, prefix: str = "") -> list[str]:
    """Public classes, functions and methods (not nested in a function) without a docstring."""
    missing = []
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            if not ast.get_docstring(node):
                missing.append(f"{prefix}{node.name} (line {node.lineno})")
            if isinstance(node, ast.ClassDef):
                missing += _undocumented(node, f"{prefix}{node.name}.")
    return missing


@pytest.mark.parametrize("path", sorted(p.name for p in PACKAGE.glob("*.py*")))
def test_public_names_have_docstrings(path: str) -> None:
    tree = ast.parse((PACKAGE / path).read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{path}: no module docstring"
    assert _undocumented(tree) == []
