"""Generic readers: events as CSV or JSONL, items as JSONL, gzipped or not, checked by the API's rules; bad rows
by exact line number, skipped while the good rows of the same chunk are kept; deterministic event ids."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.datasets.errors import DatasetFormatError
from app.datasets.generic import (
    BadRow,
    EventChunk,
    FileFormat,
    ItemChunk,
    detect_format,
    parse_timestamp,
    read_events,
    read_items,
)
from app.records import EventRecord

TYPES = frozenset({"view", "click", "purchase", "rating"})
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
T0 = datetime(2020, 1, 1, tzinfo=UTC)  # 1577836800


def _write(path: Path, text: str, *, gz: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _events(path: Path, **kw: object) -> list[EventChunk]:
    args: dict = {"event_types": TYPES, "max_future": timedelta(days=1), "now": NOW, **kw}
    return list(read_events(path, **args))


def _records(path: Path, **kw: object) -> list[EventRecord]:
    return [r for c in _events(path, **kw) for r in c.records]


def _bad(chunks: list[EventChunk] | list[ItemChunk]) -> list[BadRow]:
    return [b for c in chunks for b in c.bad]


CSV = (
    "user_id,item_id,type,timestamp\n"
    "u1,i1,view,1577836800\n"
    "u1,i2,click,1577836800.25\n"
    "u2,i1,purchase,2020-01-01T01:00:00Z\n"
    "u2,i3,view,2020-01-01T03:00:00+02:00\n"
)
JSONL = (
    '{"user_id": "u1", "item_id": "i1", "type": "view", "timestamp": 1577836800}\n'
    '{"user_id": "u1", "item_id": "i2", "type": "click", "timestamp": 1577836800.25}\n'
    '{"user_id": "u2", "item_id": "i1", "type": "purchase", "timestamp": "2020-01-01T01:00:00Z"}\n'
    '{"user_id": "u2", "item_id": "i3", "type": "view", "timestamp": "2020-01-01T03:00:00+02:00"}\n'
)
EXPECTED = [
    ("u1", "i1", "view", T0),
    ("u1", "i2", "click", T0 + timedelta(seconds=0.25)),
    ("u2", "i1", "purchase", T0 + timedelta(hours=1)),
    ("u2", "i3", "view", T0 + timedelta(hours=1)),
]


def _plain(records: list[EventRecord]) -> list[tuple]:
    return [(r.user_id, r.item_id, r.type, r.timestamp) for r in records]


# --- format ---------------------------------------------------------------------------------------------


def test_the_format_is_found_from_the_content_not_the_name(tmp_path: Path) -> None:
    assert detect_format(_write(tmp_path / "a.csv", CSV)) == FileFormat("csv")
    assert detect_format(_write(tmp_path / "a.jsonl", JSONL)) == FileFormat("jsonl")
    assert detect_format(_write(tmp_path / "a.csv.gz", CSV, gz=True)) == FileFormat("csv", gzipped=True)
    assert detect_format(_write(tmp_path / "misnamed.csv", JSONL, gz=True)) == FileFormat(
        "jsonl", gzipped=True
    )
    assert detect_format(_write(tmp_path / "a.tsv", CSV.replace(",", "\t"))) == FileFormat(
        "csv", delimiter="\t"
    )
    assert detect_format(_write(tmp_path / "bom.csv", "\ufeff\n\n" + CSV)) == FileFormat("csv")
    assert detect_format(_write(tmp_path / "empty.csv", "\n \n")) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[{"user_id": "u1"}]', "a JSON array"),
        (b"\x00\x01\x02binary", "format unknown"),
        (b"just one word\n", "format unknown"),
        (b"\x1f\x8bnot really gzip", "cannot be read"),
    ],
)
def test_an_unknown_or_unreadable_file_raises_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetFormatError, match=message) as raised:
        _events(path)
    assert raised.value.path == path


def test_a_missing_file_or_a_header_without_required_columns_raises(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="cannot be read"):
        _events(tmp_path / "absent.csv")
    path = _write(tmp_path / "h.csv", "user_id,item_id,kind,time\nu1,i1,view,1\n")
    with pytest.raises(DatasetFormatError, match="no column type, timestamp") as raised:
        _events(path)
    assert raised.value.line == 1


def test_a_truncated_gzip_stops_with_the_line_after_the_last_one_read(tmp_path: Path) -> None:
    data = gzip.compress(("user_id,item_id,type,timestamp\n" + "u1,i1,view,1577836800\n" * 5000).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="cannot be read"):
        _events(path)


# --- events ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("text", [CSV, JSONL], ids=["csv", "jsonl"])
def test_csv_and_jsonl_unix_and_iso_timestamps(tmp_path: Path, text: str, gz: bool) -> None:
    records = _records(_write(tmp_path / "events", text, gz=gz))
    assert _plain(records) == EXPECTED
    assert all(r.timestamp.tzinfo is UTC for r in records)


def test_the_same_event_gets_the_same_id_however_it_is_written(tmp_path: Path) -> None:
    from_csv = _records(_write(tmp_path / "a.csv", CSV))
    from_jsonl = _records(_write(tmp_path / "b.jsonl.gz", JSONL, gz=True))
    assert [r.event_id for r in from_csv] == [r.event_id for r in from_jsonl]
    assert len({r.event_id for r in from_csv}) == 4
    again = _records(
        _write(
            tmp_path / "c.csv",
            "timestamp,type,item_id,user_id,value\n"
            "2020-01-01T00:00:00,view, i1 ,u1,\n"  # naive ISO is UTC, ids are stripped like the API does
            "1577836800,view,i1,u1,4\n"
            "1577836800.0,view,i1,u1,4.0\n",
        )
    )
    assert again[0].event_id == from_csv[0].event_id
    assert again[1].event_id == again[2].event_id != again[0].event_id  # the value is part of the event
    assert (again[1].value, again[2].value) == (4.0, 4.0)


def test_given_event_ids_and_values_are_kept_and_repeats_in_a_chunk_dropped(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "e.csv",
        "user_id,item_id,type,timestamp,value,event_id,extra\n"
        "u1,i1,rating,1577836800,4.5,e-1,x\n"
        "u1,i2,view,1577836800,,,y\n"
        "u1,i3,view,1577836800,,e-1,z\n",
    )
    [chunk] = _events(path)
    assert (chunk.records[0].event_id, chunk.records[0].value) == ("e-1", 4.5)
    assert chunk.records[1].event_id is not None and chunk.records[1].event_id.startswith("imp:")
    assert (len(chunk.records), chunk.repeated, chunk.rows, chunk.bad) == (2, 1, 3, [])


def test_bad_rows_are_reported_by_line_and_skipped_while_the_good_ones_of_the_chunk_are_kept(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path / "bad.csv",
        "user_id,item_id,type,timestamp,value\n"  # 1
        "u1,i1,view,1577836800,\n"  # 2 good
        "\n"  # 3 blank: not a row, still counted as a line
        "u1,i2,teleport,1577836800,\n"  # 4 unknown type
        "u1,i3,view,yesterday,\n"  # 5 not a time
        "u1,i4,view,1577836800000,\n"  # 6 milliseconds
        "u1,i5,view,2026-11-29T12:00:00Z,\n"  # 7 beyond max_future (1 day after NOW)
        ",i6,view,1577836800,\n"  # 8 empty user_id
        "u1,i7,view,1577836800,lots\n"  # 9 value not a number
        "u1,i8,view\n"  # 10 too few fields
        'u1,"i9,view,1577836800,\n'  # 11 unterminated quote
        "u1,i10,view,,\n"  # 12 no timestamp
        'u1,"i,11",click,2026-11-28T11:00:00Z,2\n',  # 13 good: quoted comma, within max_future
    )
    chunks = _events(path)
    assert [r.item_id for c in chunks for r in c.records] == ["i1", "i,11"]
    bad = {b.line: b.error for b in _bad(chunks)}
    assert sorted(bad) == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert bad[4].startswith("type: unknown event type 'teleport'; use one of click, purchase, rating, view")
    assert bad[5].startswith("timestamp: 'yesterday' is not a time")
    assert "not milliseconds" in bad[6]
    assert bad[7].startswith("timestamp: 2026-11-29T12:00:00+00:00 is more than 1 day, 0:00:00 in the future")
    assert bad[8] == "user_id: is required"  # an empty cell is a field left out
    assert bad[9].startswith("value: must be a number (got 'lots')")
    assert bad[10].startswith("expected 5 comma-separated fields")
    assert bad[11].startswith("unterminated quoted field")
    assert bad[12].startswith("timestamp: is required")
    assert sum(c.rows for c in chunks) == 11  # every non-blank line after the header
    assert BadRow(4, "x").describe(path) == f"{path}:4: x"


def test_bad_jsonl_lines_are_reported_by_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.jsonl",
        '{"user_id": "u1", "item_id": "i1", "type": "view", "timestamp": 1577836800}\n'
        '{"user_id": "u1", "item_id": \n'
        "[1, 2]\n"
        '{"user_id": 7, "item_id": "i1", "type": "view", "timestamp": 1577836800}\n'
        '{"user_id": "u1", "item_id": "i1", "type": "view", "timestamp": true}\n'
        '{"user_id": "u1", "item_id": "i2", "type": "view", "timestamp": "2020-01-01T00:00:00Z"}\n',
    )
    chunks = _events(path)
    assert [r.item_id for c in chunks for r in c.records] == ["i1", "i2"]
    bad = {b.line: b.error for b in _bad(chunks)}
    assert sorted(bad) == [2, 3, 4, 5]
    assert bad[2].startswith("not valid JSON")
    assert bad[3] == "must be a JSON object, not list"
    assert bad[4] == "user_id: must be a string (got int)"
    assert bad[5].startswith("timestamp: must be a number or a string (got bool)")


def test_a_line_that_is_not_utf8_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"user_id,item_id,type,timestamp\nu1,caf\xe9,view,1\nu1,i2,view,1\n")
    [chunk] = _events(path)
    assert [r.item_id for r in chunk.records] == ["i2"]
    assert chunk.bad == [BadRow(2, "not valid UTF-8 (byte 0xe9 at column 7); save the file as UTF-8")]


def test_rows_come_in_chunks_of_at_most_chunk_size(tmp_path: Path) -> None:
    lines = [f"u{n},i{n},view,{1577836800 + n}" for n in range(23)]
    lines[10] = "u10,i10,fly,1577836810"
    path = _write(tmp_path / "many.csv", "user_id,item_id,type,timestamp\n" + "\n".join(lines) + "\n")
    chunks = _events(path, chunk_size=5)
    assert [c.rows for c in chunks] == [5, 5, 5, 5, 3]
    assert [len(c.records) for c in chunks] == [5, 5, 4, 5, 3]
    assert _bad(chunks)[0].line == 12  # row 10 is on line 12 (the header is line 1)


def test_max_errors_keeps_the_rows_before_the_bad_row_past_the_limit_and_stops(tmp_path: Path) -> None:
    lines = [f"u{n},i{n},{'fly' if n in (2, 5, 8) else 'view'},1577836800" for n in range(12)]
    path = _write(tmp_path / "m.csv", "user_id,item_id,type,timestamp\n" + "\n".join(lines) + "\n")
    chunks = _events(path, chunk_size=4, max_errors=1)
    # bad rows: n=2 (line 4), n=5 (line 7: past the limit), n=8 never read
    assert [c.stopped_at for c in chunks] == [None, 7]
    assert [r.item_id for c in chunks for r in c.records] == ["i0", "i1", "i3", "i4"]
    assert [b.line for b in _bad(chunks)] == [4, 7]
    assert sum(c.rows for c in chunks) == 6
    assert _events(path, chunk_size=4, max_errors=3)[-1].stopped_at is None
    assert [b.line for b in _bad(_events(path, max_errors=0))] == [4]


def test_parse_timestamp() -> None:
    assert parse_timestamp(1577836800) == T0
    assert parse_timestamp("1577836800") == T0
    assert parse_timestamp(" 1.5778368e9 ") == T0
    assert parse_timestamp("2020-01-01") == T0
    assert parse_timestamp("2020-01-01T01:00:00+01:00") == T0
    assert parse_timestamp("2020-01-01T00:00:00.000001Z") == T0 + timedelta(microseconds=1)
    for bad in ("", "soon", float("nan"), None, [1]):
        with pytest.raises(ValueError, match=r"^timestamp: "):
            parse_timestamp(bad)


# --- items ----------------------------------------------------------------------------------------------


def test_items_are_read_with_the_fields_given_and_bad_ones_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "items.jsonl.gz",
        '{"item_id": "1", "tags": ["a1", "a2"]}\n'  # 1
        '{"item_id": "2", "title": "Kite", "categories": ["toys"], "price": 9.5, "available": false, '
        '"published_at": "2020-01-01T00:00:00Z", "attributes": {"brand": "acme"}}\n'  # 2
        '{"item_id": "3", "colour": "red"}\n'  # 3 unknown field
        '{"item_id": "4", "price": -1}\n'  # 4
        '{"item_id": "5", "available": null}\n'  # 5 null where the store needs a value
        '{"title": "no id"}\n'  # 6
        '{"item_id": "6", "title": null}\n',  # 7 good: a title may be cleared
        gz=True,
    )
    chunks = list(read_items(path, chunk_size=3))
    items = [i for c in chunks for i in c.items]
    assert items[0] == ("1", {"tags": ["a1", "a2"]})
    assert items[1][1]["published_at"] == T0 and items[1][1]["available"] is False
    assert items[2] == ("6", {"title": None})
    bad = {b.line: b.error for b in _bad(chunks)}
    assert bad == {
        3: "colour: is not a known field: remove it",
        4: "price: must be at least 0.0 (got -1)",
        5: "available: must be true or false (got None)",
        6: "item_id: is required",
    }
    assert sum(c.rows for c in chunks) == 7


def test_an_items_file_must_be_jsonl(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="items must be JSONL"):
        list(read_items(_write(tmp_path / "items.csv", "item_id,title\n1,Kite\n")))
    assert list(read_items(_write(tmp_path / "empty.jsonl", ""))) == []
