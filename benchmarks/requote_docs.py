"""Paste every benchmark table the docs quote again from its results file (after a benchmark re-ran).

    python benchmarks/requote_docs.py            # rewrite the quoted tables in docs/*.md and README.md
    python benchmarks/requote_docs.py --check    # only list the tables that differ (exit status 1 if any)

Convention: a table quoted from a benchmark follows a marker line

    <!-- figures: benchmarks/results/<name>.json#<table> -->

and equals, line for line, `tables(results)[<table>]` of the script that wrote the file. The script is the one the
file's `command` runs (`python benchmarks/<script>.py ...`), so one script can write several results files
(`--results NAME`, e.g. an fp32 and a bf16 run); without a command, `benchmarks/<name>.py`.
tests/test_docs_figures.py checks the same with these functions. Prose around the tables is not touched: reread
it against the new figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
DOCS = (*sorted((REPO / "docs").glob("*.md")), REPO / "README.md")
MARKER = re.compile(r"<!-- figures: benchmarks/results/([\w-]+)\.json#([\w-]+) -->")


@dataclass(frozen=True)
class Quote:
    """One quoted table: where it is (lines [start, end) of `doc`, after the marker on line `marker`), what it says."""

    doc: Path
    marker: int
    start: int
    end: int
    results: str
    table: str
    text: str


def script_of(name: str, payload: dict) -> str:
    """The benchmark script that wrote results file `name`: the first `.py` argument of its command."""
    for arg in (payload.get("command") or "").split():
        if arg.endswith(".py"):
            return Path(arg).stem
    return name


def load_script(name: str):
    """`benchmarks/<name>.py` as a module (its `tables()`, helpers), without running its `main`."""
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings (_results, _runner)
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@cache
def benchmark_tables(name: str) -> dict[str, str]:
    """The tables the script that wrote `benchmarks/results/<name>.json` renders from it."""
    payload = json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())
    return load_script(script_of(name, payload)).tables(payload["results"])


def quotes(doc: Path) -> list[Quote]:
    """Every marker of `doc` and the Markdown table after it (blank lines between are allowed)."""
    lines = doc.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        match = MARKER.search(line)
        if not match:
            continue
        start = i + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        found.append(Quote(doc, i + 1, start, end, match.group(1), match.group(2), "\n".join(lines[start:end])))
    return found


def requote(doc: Path) -> list[Quote]:
    """Rewrite `doc`'s quoted tables from their results files; returns the ones that changed."""
    changed = [q for q in quotes(doc) if q.text != benchmark_tables(q.results)[q.table]]
    requote_only(doc, changed)
    return changed


def requote_only(doc: Path, changed: list[Quote]) -> None:
    """Replace the tables of `changed` (quotes of `doc`) by what their results files render now."""
    if changed:
        lines = doc.read_text().splitlines()
        for q in reversed(changed):  # from the end, so earlier line numbers stay valid
            table = benchmark_tables(q.results)[q.table].splitlines()
            lines[q.start:q.end] = table if q.end > q.start else [*table, ""]  # a first quote: a blank line after
        doc.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only list the tables that differ; exit 1 if any")
    args = parser.parse_args()
    differing, broken = [], []
    for doc in DOCS:
        for q in quotes(doc):  # a results file its script cannot render (an older format) is named, not fatal
            try:
                benchmark_tables(q.results)[q.table]
            except (OSError, KeyError, ValueError, TypeError) as error:
                broken.append(q)
                print(f"{doc.relative_to(REPO)}:{q.marker}: {q.results}.json#{q.table} cannot be rendered "
                      f"({type(error).__name__}: {error}): rerun its benchmark")
        renderable = [q for q in quotes(doc) if q not in broken]
        found = [q for q in renderable if q.text != benchmark_tables(q.results)[q.table]]
        if found and not args.check:
            requote_only(doc, found)
        differing += found
        for q in found:
            print(f"{doc.relative_to(REPO)}:{q.marker}: {q.results}.json#{q.table}"
                  f"{' differs' if args.check else ' requoted'}")
    if broken or (args.check and differing):
        sys.exit(1)


if __name__ == "__main__":
    main()
