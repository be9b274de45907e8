"""Figures in the docs come from benchmark results files, and say the same as those files.

Convention: a table quoted from a benchmark follows a marker line

    <!-- figures: benchmarks/results/<name>.json#<table> -->

and must equal, line for line, the table `benchmarks/<name>.py: tables(results)[<table>]` renders from that file
(the same function prints it when the benchmark runs). Every `benchmarks/results/*.json` a doc names must exist.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
MARKER = re.compile(r"<!-- figures: benchmarks/results/([\w-]+)\.json#([\w-]+) -->")


@cache
def benchmark_tables(name: str) -> dict[str, str]:
    payload = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings (_results, _runner)
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module.tables(payload["results"])


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
                              f"table `python benchmarks/{name}.py` printed:\n{expected}")


def test_every_cited_results_file_exists():
    for doc in DOCS:
        for name in re.findall(r"benchmarks/results/([\w-]+\.json)", doc.read_text()):
            assert (BENCHMARKS / "results" / name).is_file(), f"{doc.name} cites benchmarks/results/{name}: not there"
