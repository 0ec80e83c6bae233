"""bench/common.py: the harness every bench script shares (arguments, files, tables)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, finish, markdown_header, markdown_row  # noqa: E402

COLUMNS = [("model", "model", ""), ("tok-s", "tok/s", ".1f"), ("note", "note", ">")]


def test_finish_writes_json_csv_markdown_and_prints_the_table(tmp_path, capsys):
    # Prepare: two rows; the second has no "note" and a string where a number may stand.
    rows = [
        {"model": "tiny", "tok-s": 12.345, "note": "2/4"},
        {"model": "smol", "tok-s": "n/a"},
    ]

    # Execute
    table = finish(tmp_path, "speed", rows, {"cpus": 2}, COLUMNS, markdown_file=True)

    # Assert: ".1f" formats numbers only; a formatted or ">" column is right-aligned;
    # a missing key is an empty cell.
    expected = "\n".join(
        [
            "| model | tok/s | note |",
            "|---|---:|---:|",
            "| tiny | 12.3 | 2/4 |",
            "| smol | n/a |  |",
        ]
    )
    assert table == expected
    assert capsys.readouterr().out == expected + "\n"
    assert (tmp_path / "speed.md").read_text() == expected + "\n"
    assert json.loads((tmp_path / "speed.json").read_text()) == {"meta": {"cpus": 2}, "rows": rows}
    # CSV columns: every key in order of first appearance, blank where a row lacks one.
    assert (tmp_path / "speed.csv").read_text().splitlines() == [
        "model,tok-s,note",
        "tiny,12.345,2/4",
        "smol,n/a,",
    ]


def test_finish_writes_no_markdown_file_unless_asked(tmp_path, capsys):
    finish(tmp_path, "speed", [{"model": "tiny"}], {}, COLUMNS)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed.csv", "speed.json"]
    assert capsys.readouterr().out.splitlines()[-1] == "| tiny |  |  |"


def test_header_and_row_lines_make_the_table_line_by_line():
    assert markdown_header(COLUMNS) == "| model | tok/s | note |\n|---|---:|---:|"
    assert markdown_row({"model": "tiny", "tok-s": 3}, COLUMNS) == "| tiny | 3.0 |  |"


def test_bench_parser_adds_out_and_seed_only_when_asked():
    parser = bench_parser("First line.\n\nMore text.", "my-bench", seed=42)
    parser.add_argument("--clients", type=int, default=3)

    args = parser.parse_args(["--out", "/tmp/x", "--clients", "5"])

    assert parser.description == "First line."
    assert vars(args) == {"seed": 42, "out": "/tmp/x", "clients": 5}
    assert parser.parse_args([]).out is None
    bare = bench_parser("Doc.")
    with pytest.raises(SystemExit):
        bare.parse_args(["--out", "/tmp/x"])
    with pytest.raises(SystemExit):
        bare.parse_args(["--seed", "1"])
