"""The declared import layers (pyproject's [tool.importlinter]) hold, and every toolkit module is in one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def installed_layout(dest: Path) -> Path:
    """The toolkit package as installed (tasks/, data/, conf/ inside it, per [tool.setuptools.package-dir]):
    import-linter finds modules by walking the package folder, and in the repo they sit beside it."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "toolkit", dest / "toolkit", ignore=ignore)
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        shutil.copytree(REPO / folder, dest / package.replace(".", "/"), ignore=ignore)
    return dest


def layer_modules() -> set[str]:
    (layers,) = [c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return {name.strip() for layer in layers["layers"] for name in layer.replace("|", ":").split(":")}


def test_every_toolkit_module_is_in_a_layer():
    packaged = {f"toolkit.{p.stem}" for p in (REPO / "toolkit").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    packaged |= set(PYPROJECT["tool"]["setuptools"]["package-dir"])
    unplaced = packaged - layer_modules()
    assert not unplaced, f"{sorted(unplaced)}: add each to the layer it belongs to in pyproject's [tool.importlinter]"


def test_imports_follow_the_declared_layers_without_cycles(tmp_path):
    root = installed_layout(tmp_path / "site")
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_help_imports_no_torch(tmp_path):
    """`python -m toolkit --help` stays quick: nothing on its path imports torch, Lightning or timm."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "toolkit", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "mode=" in proc.stdout, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = {name for name in imported if name.split(".")[0] in ("torch", "torchvision", "lightning", "timm")}
    assert not heavy, sorted(heavy)[:10]


def test_the_architecture_doc_names_every_layered_module():
    """docs/architecture.md's layer table says where each module sits: every module of pyproject's layers is in it."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    table = text[text.index("| layer | modules |"):]
    table = table[:table.index("\n\n")]
    named = set(re.findall(r"`(toolkit\.[\w.]+)`", table))
    missing = layer_modules() - named
    assert not missing, f"docs/architecture.md's layer table does not name {sorted(missing)}"
