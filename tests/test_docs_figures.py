"""Figures in the docs come from benchmark results files, and say the same as those files.

Convention: a table quoted from a benchmark follows a marker line

    <!-- figures: benchmarks/results/<name>.json#<table> -->

and must equal, line for line, the table `tables(results)[<table>]` of the script that wrote the file renders from
it (the same function prints it when the benchmark runs). The script is the one the file's `command` runs
(`python benchmarks/<script>.py ...`), so one script can write several results files (`--results NAME`, e.g. an
fp32 and a bf16 run); without a command, `benchmarks/<name>.py`. Every `benchmarks/results/*.json` a doc names
must exist.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
MARKER = re.compile(r"<!-- figures: benchmarks/results/([\w-]+)\.json#([\w-]+) -->")


def script_of(name: str, payload: dict) -> str:
    """The benchmark script that wrote results file `name`: the first `.py` argument of its command."""
    for arg in (payload.get("command") or "").split():
        if arg.endswith(".py"):
            return Path(arg).stem
    return name


@cache
def benchmark_tables(name: str) -> dict[str, str]:
    payload = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())
    script = script_of(name, payload)
    return load_benchmark(script).tables(payload["results"])


def quoted_tables() -> list[tuple[str, int, str, str, str]]:
    """(doc, line number, results name, table name, the table as the doc has it) for every marker."""
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            match = MARKER.search(line)
            if not match:
                continue
            rest = lines[i + 1:]
            while rest and not rest[0].strip():
                rest = rest[1:]
            table = []
            for row in rest:
                if not row.startswith("|"):
                    break
                table.append(row)
            found.append((doc.name, i + 1, match.group(1), match.group(2), "\n".join(table)))
    return found


QUOTED = quoted_tables()


def test_the_docs_quote_benchmark_tables():
    assert {name for _, _, name, _, _ in QUOTED} >= {"backbone_table", "profile_table", "partition_speed"}


@pytest.mark.parametrize(("doc", "line", "name", "table", "text"), QUOTED,
                         ids=[f"{d}:{n}:{t}" for d, _, n, t, _ in QUOTED])
def test_quoted_table_equals_its_results_file(doc, line, name, table, text):
    assert text, f"{doc}:{line}: no markdown table follows the marker"
    expected = benchmark_tables(name)[table]
    assert text == expected, (f"{doc}:{line} differs from benchmarks/results/{name}.json ({table}); paste the "
                              f"table its benchmark printed:\n{expected}")


def test_every_cited_results_file_exists():
    for doc in DOCS:
        for name in re.findall(r"benchmarks/results/([\w-]+\.json)", doc.read_text()):
            assert (BENCHMARKS / "results" / name).is_file(), f"{doc.name} cites benchmarks/results/{name}: not there"


def test_a_results_file_names_its_script():
    assert script_of("detection_learning_ssd_bf16", {"command": "python benchmarks/detection_learning.py --model ssd"}) \
        == "detection_learning"
    assert script_of("demo", {"command": "cd benchmarks && python demo.py"}) == "demo"
    assert script_of("backbone_table", {"command": None}) == "backbone_table"
