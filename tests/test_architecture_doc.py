"""docs/architecture.md's worked example runs: its backbone, dataset and task files, their configs, and the
command at the end, through the real CLI (`toolkit.__main__.main`)."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BLOCK = re.compile(r"```(python|yaml|bash)\n(.*?)```", re.S)
PATH_LINE = re.compile(r"^# ((?:toolkit|tasks|data|conf)/[\w/]+\.(?:py|yaml))$", re.M)
PACKAGE_OF = {"toolkit": "toolkit", "tasks": "toolkit.tasks", "data": "toolkit.data"}

#: run in a fresh interpreter: makes each python block the module its path names, then runs the CLI
DRIVER = """
import importlib, sys, types
for name, code in MODULES:
    module = types.ModuleType(name)
    module.__file__ = name.replace(".", "/") + ".py"
    sys.modules[name] = module
    exec(compile(code, module.__file__, "exec"), module.__dict__)
    parent, _, child = name.rpartition(".")
    setattr(importlib.import_module(parent), child, module)
sys.argv = ARGV
from toolkit.__main__ import main
main()
"""


def doc_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(DOC.read_text())


@pytest.mark.slow
def test_worked_example_trains_from_the_command_line(tmp_path):
    modules, command = [], None
    for language, code in doc_blocks():
        if language == "bash":
            command = code.strip()
            continue
        (path,) = PATH_LINE.findall(code)
        if language == "python":
            top, *rest = Path(path).with_suffix("").parts
            modules.append((".".join([PACKAGE_OF[top], *rest]), code))
        else:
            target = tmp_path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
    assert len(modules) == 3 and command and command.startswith("python -m toolkit ")
    # the files would sit in the repo's conf/; here they are in a scratch folder Hydra also searches
    argv = ["toolkit", *shlex.split(command)[3:], f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    driver = f"MODULES = {modules!r}\nARGV = {argv!r}\n" + DRIVER
    proc = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = (tmp_path / "outputs" / "brightness").rglob("train_metrics.json")  # TOOLKIT_LOG_DIR
    metrics = json.loads(metrics_file.read_text())
    assert metrics["monitor"] == "val/loss" and math.isfinite(metrics["best_score"]) and metrics["epoch"] == 2
    assert metrics["model"]["params"] > 0 and metrics["model"]["mult_adds"] > 0
