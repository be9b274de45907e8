"""Paste every benchmark table the docs quote again from its results file (after a benchmark re-ran).

    python -m benchmarks.tools.requote_docs            # rewrite the quoted tables in docs/*.md and README.md
    python -m benchmarks.tools.requote_docs --check    # only list the tables that differ (exit status 1 if any)

Convention: a table quoted from a benchmark follows a marker line

    <!-- figures: benchmarks/results/<name>.json#<table> -->

and equals, line for line, `tables(results)[<table>]` of the script that wrote the file. The script is the one the
file's `command` runs (`python -m benchmarks.<group>.<script> ...`, or `python benchmarks/<script>.py` in files
written before the scripts were grouped), so one script can write several results files (`--results NAME`, e.g.
an fp32 and a bf16 run, `<script>/<run>`); without a command, the script named like the file.
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

BENCHMARKS = Path(__file__).resolve().parents[1]
REPO = BENCHMARKS.parent
DOCS = (*sorted((REPO / "docs").glob("*.md")), REPO / "README.md")
MARKER = re.compile(r"<!-- figures: benchmarks/results/([\w/-]+)\.json#([\w-]+) -->")
#: the benchmark scripts by name, in their purpose folders (speed/, learning/)
SCRIPTS = {p.stem: p for group in ("speed", "learning") for p in sorted((BENCHMARKS / group).glob("*.py"))
           if p.stem != "__init__"}


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
    """The benchmark script that wrote results file `name`: the module after `-m`, or the first `.py` argument of
    its command; without a command, the file's own name (a file in a benchmark's folder: the folder's)."""
    args = (payload.get("command") or "").split()
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            return args[i + 1].rsplit(".", 1)[-1]
        if arg.endswith(".py"):
            return Path(arg).stem
    return name.split("/")[0]


def load_script(name: str):
    """`benchmarks/<group>/<name>.py` as a module (its `tables()`, helpers), without running its `main`."""
    sys.path.insert(0, str(REPO))  # the scripts import the tools as `benchmarks.tools.*`
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", SCRIPTS[name])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO))
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


def render(quote: Quote) -> str:
    """The table `quote` should show: what its results file renders now."""
    return benchmark_tables(quote.results)[quote.table]


def requote(doc: Path, stale: list[Quote] | None = None) -> list[Quote]:
    """Rewrite the quoted tables of `doc` that differ from `render` (or just the quotes `stale`); returns them."""
    if stale is None:
        stale = [q for q in quotes(doc) if q.text != render(q)]
    if stale:
        from toolkit.io import write_text_atomic

        lines = doc.read_text().splitlines()
        for q in reversed(stale):  # from the end, so earlier line numbers stay valid
            table = render(q).splitlines()
            lines[q.start:q.end] = table if q.end > q.start else [*table, ""]  # a first quote: a blank line after
        write_text_atomic(doc, "\n".join(lines) + "\n")
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only list the tables that differ; exit 1 if any")
    args = parser.parse_args()
    differing, broken = [], False
    for doc in DOCS:
        renderable = []
        for q in quotes(doc):  # a results file its script cannot render (an older format) is named, not fatal
            try:
                render(q)
            except (OSError, KeyError, ValueError, TypeError) as error:
                broken = True
                print(f"{doc.relative_to(REPO)}:{q.marker}: {q.results}.json#{q.table} cannot be rendered "
                      f"({type(error).__name__}: {error}): rerun its benchmark")
            else:
                renderable.append(q)
        stale = [q for q in renderable if q.text != render(q)]
        if not args.check:
            requote(doc, stale)
        differing += stale
        for q in stale:
            print(f"{doc.relative_to(REPO)}:{q.marker}: {q.results}.json#{q.table}"
                  f"{' differs' if args.check else ' requoted'}")
    if broken or (args.check and differing):
        sys.exit(1)


if __name__ == "__main__":
    main()
