import json

from tuneless.report import (
    columns_of,
    format_value,
    human_bytes,
    human_count,
    relative_to,
    render_markdown,
    render_table,
    write_json,
)

ROWS = [
    {"model": "dense", "params": 272474, "acc": 0.9123},
    {"model": "fold-ar 50%", "params": 70000, "acc": 0.85, "note": "data-free"},
]


def test_format_value():
    assert format_value(None) == "-"
    assert format_value(True) == "yes"
    assert format_value(1234567) == "1,234,567"
    assert format_value(0.91234) == "0.9123"
    assert format_value(12.345) == "12.35"
    assert format_value(1234.5) == "1,234.5"
    assert format_value(0.0001234) == "1.23e-04"
    assert format_value("x") == "x"


def test_columns_in_first_seen_order():
    assert columns_of(ROWS) == ["model", "params", "acc", "note"]


def test_table_aligned():
    text = render_table(ROWS, title="t")
    lines = text.splitlines()
    assert lines[0] == "t"
    header, rule, a, b = lines[1:]
    assert header.split() == ["model", "params", "acc", "note"]
    # numbers right-aligned: the ends of the params cells line up with the header's end
    end = header.index("params") + len("params")
    assert a[:end].endswith("272,474") and b[:end].endswith("70,000")
    assert "-" in a  # missing note
    assert b.rstrip().endswith("data-free")


def test_table_custom_format_and_columns():
    text = render_table(ROWS, columns=["model", "acc"], formats={"acc": ".1%"})
    assert "91.2%" in text and "params" not in text


def test_markdown():
    md = render_markdown(ROWS).splitlines()
    assert md[0] == "| model | params | acc | note |"
    assert md[1] == "|---|---:|---:|---|"
    assert md[2] == "| dense | 272,474 | 0.9123 | - |"


def test_relative_and_json(tmp_path):
    rel = relative_to(ROWS, ["params", "missing"])
    assert rel[0]["params_rel"] == 1.0
    assert abs(rel[1]["params_rel"] - 70000 / 272474) < 1e-12
    assert rel[1]["missing_rel"] is None
    assert "params_rel" not in ROWS[0]  # input untouched
    path = tmp_path / "out.json"
    write_json(rel, path, meta={"command": "x"})
    data = json.loads(path.read_text())
    assert data["meta"] == {"command": "x"} and data["rows"][1]["model"] == "fold-ar 50%"


def test_human_units():
    assert human_count(272474) == "272k"
    assert human_count(40_650_000) == "40.6M"
    assert human_count(12) == "12"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * (1 << 20)) == "3 MiB"
    assert human_bytes(100) == "100 B"
