"""Figures in the docs come from benchmark results files, and say the same as those files.

The convention is in benchmarks/tools/requote_docs.py: a table after a `<!-- figures: benchmarks/results/<name>.json#<table> -->`
marker equals, line for line, what the script that wrote the file renders from it. Every
`benchmarks/results/*.json` a doc names must exist.
"""

from __future__ import annotations

import re

import pytest
from conftest import BENCHMARKS, requote_docs

#: every quoted table of docs/*.md and README.md (benchmarks/tools/requote_docs.py finds them, and pastes them again)
QUOTED = [q for doc in requote_docs.DOCS for q in requote_docs.quotes(doc)]


def test_the_docs_quote_benchmark_tables():
    assert {q.results for q in QUOTED} >= {"backbone_table", "profile_table", "partition_speed"}


@pytest.mark.parametrize("quote", QUOTED, ids=[f"{q.doc.name}:{q.results}:{q.table}" for q in QUOTED])
def test_quoted_table_equals_its_results_file(quote):
    where = f"{quote.doc.name}:{quote.marker}"
    assert quote.text, f"{where}: no markdown table follows the marker"
    expected = requote_docs.benchmark_tables(quote.results)[quote.table]
    assert quote.text == expected, (f"{where} differs from benchmarks/results/{quote.results}.json ({quote.table}); "
                                    f"`python -m benchmarks.tools.requote_docs` pastes the table its benchmark printed:\n"
                                    f"{expected}")


def test_every_cited_results_file_exists():
    for doc in requote_docs.DOCS:
        for name in re.findall(r"benchmarks/results/([\w/-]+\.json)", doc.read_text()):
            assert (BENCHMARKS / "results" / name).is_file(), f"{doc.name} cites benchmarks/results/{name}: not there"


def test_requote_rewrites_only_the_table_after_a_marker(tmp_path, monkeypatch):
    doc = tmp_path / "page.md"
    doc.write_text("Intro.\n<!-- figures: benchmarks/results/x.json#t -->\n\n| old |\n|---|\n| 1 |\nAfter.\n")
    monkeypatch.setattr(requote_docs, "benchmark_tables", lambda name: {"t": "| new |\n|---|\n| 2 |\n| 3 |"})
    (quote,) = requote_docs.quotes(doc)
    assert (quote.results, quote.table, quote.text) == ("x", "t", "| old |\n|---|\n| 1 |")
    assert requote_docs.requote(doc) == [quote]
    assert doc.read_text() == ("Intro.\n<!-- figures: benchmarks/results/x.json#t -->\n\n| new |\n|---|\n| 2 |\n"
                               "| 3 |\nAfter.\n")
    assert requote_docs.requote(doc) == []  # nothing left to change

    doc.write_text("<!-- figures: benchmarks/results/x.json#t -->\n\nText.\n")  # a marker without a table yet
    requote_docs.requote(doc)
    assert doc.read_text() == "<!-- figures: benchmarks/results/x.json#t -->\n\n| new |\n|---|\n| 2 |\n| 3 |\n\nText.\n"


def test_a_results_file_names_its_script():
    script_of = requote_docs.script_of
    assert script_of("detection_learning/ssd_bf16", {"command": "python benchmarks/detection_learning.py --model ssd"}) \
        == "detection_learning"
    assert script_of("demo", {"command": "cd benchmarks && python demo.py"}) == "demo"  # commands before the move
    assert script_of("classification_learning/32", {"command": "python -m benchmarks.learning.classification_learning "
                                                               "--results classification_learning/32"}) == "classification_learning"
    assert script_of("backbone_table", {"command": None}) == "backbone_table"
