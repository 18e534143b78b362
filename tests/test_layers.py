"""The layers of docs/design.md, as import-linter contracts (pyproject.toml's [tool.importlinter]).

The editable install maps `gen.*` onto the repository's folders through an import hook that
import-linter cannot walk, so the check runs on a copy of the four folders laid out as the
installed package `gen`, with the copy first on the path.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
FOLDERS = ("core", "plugins", "export", "runtime")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is in the test extra")


def installed_layout(tmp_path: Path) -> Path:
    """The repository's folders copied as the package `gen` would be installed."""
    package = tmp_path / "gen"
    for folder in FOLDERS:
        shutil.copytree(REPOSITORY / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "__init__.py").write_text("")
    return tmp_path


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(REPOSITORY / "pyproject.toml")],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": ""}, capture_output=True, text=True,
                          timeout=120)


def test_every_layer_contract_holds(tmp_path):
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_against_the_layers_is_caught(tmp_path):
    """The runtime reaching into the torch training stack, even inside a function, breaks two contracts."""
    root = installed_layout(tmp_path)
    scheduler = root / "gen" / "runtime" / "scheduler.py"
    scheduler.write_text(scheduler.read_text() + "\n\ndef _sneak():\n    from gen.core.training import torch_backend\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "gen.runtime.scheduler -> gen.core.training.torch_backend" in result.stdout


def test_the_torch_free_contract_lists_every_module_below_training():
    """The `contracts` rule names the modules of gen.core's lower layers, no more and no fewer."""
    contracts = {c["id"]: c for c in tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
                 ["tool"]["importlinter"]["contracts"]}
    layers = contracts["core"]["layers"]
    below_training = {f"gen.core.{name.strip()}" for layer in layers[layers.index("training") + 1:]
                      for name in layer.replace("|", ":").split(":")}
    assert set(contracts["contracts"]["source_modules"]) == below_training
