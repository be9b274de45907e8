"""Files the toolkit writes are readable as any plain `open()` would make them, and strict JSON."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from toolkit.io import JsonArrayFile, json_text, write_json_atomic, write_text_atomic


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_get_the_umask_mode_of_a_plain_open(tmp_path, umask):
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    expected = mode_of(tmp_path / "plain.txt")
    assert expected == 0o666 & ~umask
    assert mode_of(write_text_atomic(tmp_path / "a.txt", "x")) == expected
    assert mode_of(write_json_atomic(tmp_path / "a.json", {"a": 1})) == expected
    streamed = JsonArrayFile(tmp_path / "predictions.json")
    streamed.write({"a": 1})
    assert mode_of(streamed.commit()) == expected


def test_json_is_strict_nan_and_infinity_become_null(tmp_path):
    record = {"score": math.nan, "scores": [1.5, math.inf, -math.inf], "nested": {"x": (math.nan, 2)}}
    path = write_json_atomic(tmp_path / "r.json", record)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"score": None, "scores": [1.5, None, None], "nested": {"x": [None, 2]}}
    streamed = JsonArrayFile(tmp_path / "p.json")
    streamed.write({"score": math.nan})
    assert json.loads(streamed.commit().read_text()) == [{"score": None}]
    assert json_text({"v": 1.0}, default=float) == json.dumps({"v": 1.0}, indent=2)


@pytest.mark.slow
def test_a_runs_files_are_readable_by_colleagues(tmp_path):
    """Through the CLI under umask 022: every file of the run folder (results JSON, marker, config, log) is 0644."""
    from conftest import run_cli

    old = os.umask(0o022)
    try:
        proc = run_cli(["mode=profile", "profile.latency=false", "backbone.alpha=0.25", "data.resolution=64",
                        f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "profile.json" for p in files)
    assert {p.relative_to(tmp_path): oct(mode_of(p)) for p in files if mode_of(p) != 0o644} == {}
