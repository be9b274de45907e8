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
def test_worked_example_trains_evaluates_exports_and_predicts_from_the_command_line(tmp_path):
    """The registered task's checkpoint is accepted by mode=eval and mode=export, and its ONNX file predicts
    through `python -m toolkit.deploy` (torch-free), with nothing but the example's own files and YAML."""
    from PIL import Image

    modules, commands = [], []
    for language, code in doc_blocks():
        if language == "bash":
            commands += [line.strip() for line in code.splitlines() if line.strip()]
            continue
        (path,) = PATH_LINE.findall(code)
        if language == "python":
            top, *rest = Path(path).with_suffix("").parts
            modules.append((".".join([PACKAGE_OF[top], *rest]), code))
        else:
            target = tmp_path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
    assert len(modules) == 3 and len(commands) == 4
    train, evaluate, export, deploy = commands
    assert train.startswith("python -m toolkit ") and deploy.startswith("python -m toolkit.deploy ")
    (tmp_path / "photos").mkdir()
    for i, shade in enumerate((30, 220)):
        Image.new("RGB", (40, 48), (shade, shade, shade)).save(tmp_path / "photos" / f"{i}.png")
    for command in (train, evaluate, export):
        # the files would sit in the repo's conf/; here they are in a scratch folder Hydra also searches
        argv = ["toolkit", *shlex.split(command)[3:], f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
        driver = f"MODULES = {modules!r}\nARGV = {argv!r}\n" + DRIVER
        proc = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    (metrics_file,) = (tmp_path / "outputs" / "brightness").rglob("train_metrics.json")  # TOOLKIT_LOG_DIR
    metrics = json.loads(metrics_file.read_text())
    assert metrics["monitor"] == "val/loss" and math.isfinite(metrics["best_score"]) and metrics["epoch"] == 2
    assert metrics["model"]["params"] > 0 and metrics["model"]["mult_adds"] > 0
    (evaluated,) = [json.loads(f.read_text()) for f in (tmp_path / "outputs" / "brightness").rglob("metrics.json")
                    if f.parent != metrics_file.parent]
    assert math.isfinite(evaluated["val/loss"])
    report = json.loads((tmp_path / "outputs" / "brightness" / "export" / "export.json").read_text())
    onnx = report["formats"]["onnx"]
    assert report["task_class"] == "BrightnessTask" and onnx["agreement"]["max_abs_diff"] < 1e-4
    assert abs(onnx["val/loss"] - report["pytorch"]["val/loss"]) < 1e-5
    proc = subprocess.run([sys.executable, "-c", "import sys, runpy; sys.modules['torch'] = None; "  # no torch
                           f"sys.argv = {shlex.split(deploy)[2:]!r}; runpy.run_module('toolkit.deploy', run_name='__main__')"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "outputs" / "brightness" / "predictions" / "predictions.json").read_text())
    assert [Path(r["path"]).name for r in records] == ["0.png", "1.png"]
    dark, light = (r["output"][0] for r in records)
    assert all(math.isfinite(v) for v in (dark, light))
