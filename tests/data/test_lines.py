"""The JSON-lines reader names each line file:line, whatever the chunking, blank lines and endings."""

import pyarrow as pa
import pytest

import rmray.data.lines as lines


def read(data: bytes, monkeypatch, chunk: int) -> list[dict]:
    monkeypatch.setattr(lines, "CHUNK_BYTES", chunk)
    source = lines.JsonLinesText.__new__(lines.JsonLinesText)  # _read_stream needs no Ray
    return [row for block in source._read_stream(pa.BufferReader(data), "/data/f.jsonl") for row in block.to_pylist()]


@pytest.mark.parametrize("chunk", [3, 7, 1 << 20])
def test_lines_are_numbered_as_an_editor_numbers_them(monkeypatch, chunk):
    data = b'{"a": 1}\n\n  \n{"b": "caf\xc3\xa9"}\r\n{"c": 3}\xff\n{"d": 4}'  # no newline at the end
    rows = read(data, monkeypatch, chunk)
    assert [r["_where"] for r in rows] == ["f.jsonl:1", "f.jsonl:4", "f.jsonl:5", "f.jsonl:6"]
    assert rows[1]["_line"] == '{"b": "café"}\r' and rows[3]["_line"] == '{"d": 4}'
    assert rows[2]["_line"] is None and "not UTF-8" in rows[2]["_error"]
    assert [lines.parse_line(r["_line"], r["_error"])[0] for r in rows] == [{"a": 1}, {"b": "café"}, {}, {"d": 4}]


def test_parse_line_names_what_is_wrong():
    assert lines.parse_line("[1, 2]", None) == ({}, "line is not a JSON object: expected a JSON object, got list")
    row, error = lines.parse_line('{"a": ', None)
    assert row == {} and error.startswith("line is not a JSON object:")
