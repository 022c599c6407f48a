"""Generic importers: events from CSV or JSONL, items from JSONL, either optionally gzipped, streamed in chunks.

The format is found from the content (gzip magic bytes; a first line opening a JSON object is JSONL, otherwise
a CSV header naming the columns), never from the name alone. Rows are checked by the API's own rules (events:
`app.events.service.validate_events` with the configured types and `max_future`; items: `ItemIn`), so a file
accepts exactly what `POST /v1/events` and `POST /v1/items` accept. A bad row becomes a `BadRow` (its physical
line number and `field: what is wrong and what to change`) and is skipped whole; the good rows of its chunk are
kept. Only a file that cannot be read or whose format is unknown raises `DatasetFormatError`.

Events without an `event_id` get a deterministic one, a hash of what the row says once validated (user, item,
type, timestamp to the microsecond, value), so importing a file again, or the same events written another way
(ISO time instead of Unix seconds, `4` instead of `4.0`), stores nothing new.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import orjson
from pydantic import ValidationError
from tqdm import tqdm

from app.catalog.schemas import ItemIn
from app.datasets.errors import DatasetFormatError
from app.events.service import validate_events
from app.records import EventRecord
from app.validation import describe, summary

log = logging.getLogger(__name__)

Kind = Literal["csv", "jsonl"]
Row = tuple[int, dict[str, Any]]  # (line number, fields)
T = TypeVar("T")

EVENT_COLUMNS = ("user_id", "item_id", "type", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("value", "event_id")
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 1 << 20  # the first line must fit here for the format to be found
_PROGRESS_EVERY = 8192  # lines between progress-bar updates
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_TIMESTAMP_HINT = "give Unix seconds (int or float) or an ISO 8601 date-time such as 2026-11-27T10:00:00Z"
# Item fields the store cannot hold as null: a null there is a bad row (leave the field out to keep it).
_NOT_NULL_ITEM_FIELDS = {
    "categories": 'a list such as ["shoes"]',
    "tags": 'a list such as ["running"]',
    "available": "true or false",
    "attributes": 'an object such as {"brand": "acme"}',
}


@dataclass(frozen=True, slots=True)
class FileFormat:
    """What a file holds: CSV (with its delimiter) or JSONL, gzipped or not."""

    kind: Kind
    gzipped: bool = False
    delimiter: str = ","

    def __str__(self) -> str:
        return f"{'gzipped ' if self.gzipped else ''}{'CSV' if self.kind == 'csv' else 'JSONL'}"


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was skipped: its physical line number (1 = the first line) and what to change."""

    line: int
    error: str

    def describe(self, path: Path) -> str:
        """`file:line: field: what is wrong and what to change`."""
        return f"{path}:{self.line}: {self.error}"


@dataclass(slots=True)
class EventChunk:
    """One chunk of an events file: records to store, bad rows, and counts for the summary."""

    records: list[EventRecord] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    rows: int = 0  # data rows read (good, bad and repeated)
    repeated: int = 0  # rows whose event_id an earlier row of the chunk already had (not stored twice)
    stopped_at: int | None = None  # the line of the bad row past `max_errors`; nothing from it on is here


@dataclass(slots=True)
class ItemChunk:
    """One chunk of an items file: `(item_id, fields given)` in file order, bad rows, counts."""

    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    rows: int = 0
    stopped_at: int | None = None


# --- format ---------------------------------------------------------------------------------------------


def _open(path: Path, gzipped: bool) -> tuple[IO[bytes], IO[bytes]]:
    """(raw file, stream to read lines from); the raw file's position drives the progress bar."""
    raw = path.open("rb")
    if not gzipped:
        return raw, raw
    return raw, gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]


def _unreadable(path: Path, exc: BaseException, line: int | None = None) -> DatasetFormatError:
    return DatasetFormatError(f"cannot be read ({type(exc).__name__}: {exc})", path=path, line=line)


def detect_format(path: Path) -> FileFormat | None:
    """The format of `path` from its content; None for a file without any non-blank line."""
    try:
        with path.open("rb") as probe:
            gzipped = probe.read(2) == _GZIP_MAGIC
        raw, stream = _open(path, gzipped)
        with raw, stream:
            first = b""
            read = 0
            while not first.strip() and read < _SNIFF_BYTES:
                first = stream.readline(_SNIFF_BYTES)
                if not first:
                    return None
                if not read:
                    first = first.removeprefix(_BOM)
                read += len(first) or 1
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(path, exc) from None
    head = first.strip()
    if head.startswith(b"{"):
        return FileFormat("jsonl", gzipped)
    if head.startswith(b"["):
        raise DatasetFormatError(
            "format unknown: a JSON array; write one JSON object per line (JSONL) instead", path=path
        )
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and "\x00" not in text and ("," in text or "\t" in text):
        return FileFormat("csv", gzipped, "\t" if "\t" in text and "," not in text else ",")
    raise DatasetFormatError(
        "format unknown: expected JSONL (one JSON object per line) or CSV whose first line names the "
        f"columns (such as {','.join(EVENT_COLUMNS)}), optionally gzipped",
        path=path,
    )


def _lines(path: Path, fmt: FileFormat, progress: bool) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of every non-blank line, streamed; a read error names the last line read."""
    raw, stream = _open(path, fmt.gzipped)
    number = 0
    with (
        raw,
        stream,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=not progress
        ) as bar,
    ):
        try:
            for number, line in enumerate(stream, start=1):
                if number % _PROGRESS_EVERY == 0:
                    bar.update(raw.tell() - bar.n)
                if number == 1:
                    line = line.removeprefix(_BOM)
                if line.strip():
                    yield number, line
        except (OSError, EOFError, zlib.error) as exc:
            raise _unreadable(path, exc, number + 1) from None
        bar.update(raw.tell() - bar.n)


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"
        ) from None


def iter_rows(
    path: Path, fmt: FileFormat, *, required: tuple[str, ...] = (), progress: bool = False
) -> Iterator[Row | BadRow]:
    """Every data row of the file as `(line, fields)`, or a `BadRow` when the line cannot be parsed.

    CSV: the first line names the columns (any order, case-insensitive; `required` ones must be there, others are
    passed through); empty cells are left out; a row is one physical line. JSONL: one JSON object per line.
    """
    lines = _lines(path, fmt, progress)
    if fmt.kind == "jsonl":
        for number, line in lines:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield BadRow(number, f"not valid JSON ({exc}); write one JSON object per line")
                continue
            if not isinstance(obj, dict):
                yield BadRow(number, f"must be a JSON object, not {type(obj).__name__}")
                continue
            yield number, obj
        return
    columns: list[str] | None = None
    delimiter = fmt.delimiter
    for number, line in lines:
        try:
            text = _decode(line)
            cells = _split(text, delimiter)
        except ValueError as exc:
            if columns is None:
                raise DatasetFormatError(f"header: {exc}", path=path, line=number) from None
            yield BadRow(number, str(exc))
            continue
        if columns is None:
            columns = [c.strip().lower() for c in cells]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DatasetFormatError(
                    f"header: no column {', '.join(missing)}; the first line must name the columns "
                    f"{','.join(required)} (any order; optional: {','.join(OPTIONAL_EVENT_COLUMNS)})",
                    path=path,
                    line=number,
                )
            known = {*required, *OPTIONAL_EVENT_COLUMNS}
            extra = [c for c in columns if c not in known]
            if extra:
                log.warning("%s: ignoring columns %s", path, ", ".join(extra))
            continue
        if len(cells) != len(columns):
            name = "tab" if delimiter == "\t" else "comma"
            yield BadRow(
                number,
                f"expected {len(columns)} {name}-separated fields ({delimiter.join(columns)}), found {len(cells)}",
            )
            continue
        yield (
            number,
            {
                name: value
                for name, value in zip(columns, cells, strict=True)
                if value.strip() and name in known  # the columns warned about above are ignored, not refused
            },
        )


def _split(text: str, delimiter: str) -> list[str]:
    if '"' not in text:
        return text.split(delimiter)  # ~5x faster than csv for the common unquoted line
    if text.count('"') % 2:
        raise ValueError("unterminated quoted field; a row must be one line with balanced quotes")
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as exc:
        raise ValueError(f"malformed CSV ({exc}); quote a field that holds the delimiter") from None


# --- events ---------------------------------------------------------------------------------------------


def parse_timestamp(value: Any) -> datetime:
    """Unix seconds (a number or a numeric string) or ISO 8601 (a naive time is UTC) as an aware UTC datetime."""
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.match(text):
            return parse_timestamp(float(text) if any(c in text for c in ".eE") else int(text))
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"timestamp: {text[:60]!r} is not a time; {_TIMESTAMP_HINT}") from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"timestamp: must be a number or a string (got {type(value).__name__}); {_TIMESTAMP_HINT}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"timestamp: must be finite (got {value}); {_TIMESTAMP_HINT}")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(
            f"timestamp: {value} is out of range; give Unix seconds (not milliseconds) or ISO 8601"
        ) from None


def derive_event_id(user_id: str, item_id: str, event_type: str, ts: datetime, value: float | None) -> str:
    """A deterministic id for an event that has none: the same event always gets the same id."""
    micros = (ts.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    key = "\x1f".join(
        (user_id, item_id, event_type, str(micros), "" if value is None else repr(float(value)))
    )
    return "imp:" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def check_events(
    rows: list[Row], *, event_types: frozenset[str], max_future: timedelta, now: datetime | None = None
) -> tuple[list[EventRecord], list[BadRow], int]:
    """Rows as records (by `validate_events`, the API's rules) and bad rows; also how many repeated an event_id
    of an earlier row (dropped, as the API drops them)."""
    bad: list[BadRow] = []
    raw: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, fields in rows:
        when = fields.get("timestamp")
        if when is None or when == "":
            bad.append(BadRow(number, f"timestamp: is required; {_TIMESTAMP_HINT}"))
            continue
        try:
            ts = parse_timestamp(when)
        except ValueError as exc:
            bad.append(BadRow(number, str(exc)))
            continue
        raw.append({**fields, "timestamp": ts})
        lines.append(number)
    checked = validate_events(raw, event_types=event_types, max_future=max_future, now=now)
    bad.extend(BadRow(lines[r.index], r.error) for r in checked.rejected)
    bad.sort(key=lambda b: b.line)
    records = [
        EventRecord(
            user_id=e.user_id,
            item_id=e.item_id,
            type=e.type,
            timestamp=e.ts,
            value=e.value,
            event_id=e.event_id or derive_event_id(e.user_id, e.item_id, e.type, e.ts, e.value),
        )
        for e in checked.events
    ]
    return records, bad, checked.in_batch_duplicates


def _chunks(
    rows: Iterator[Row | BadRow],
    check: Callable[[list[Row]], tuple[T, list[BadRow]]],
    chunk_size: int,
    max_errors: int | None,
) -> Iterator[tuple[T, list[BadRow], int, int | None]]:
    """(good part, bad rows, rows read, stopped_at) per chunk of at most `chunk_size` rows."""
    seen_bad = 0
    pending: list[Row] = []
    parse_bad: list[BadRow] = []

    def close() -> tuple[T, list[BadRow], int, int | None]:
        good, bad = check(pending)
        bad = sorted([*parse_bad, *bad], key=lambda b: b.line)
        if max_errors is None or seen_bad + len(bad) <= max_errors:
            return good, bad, len(pending) + len(parse_bad), None
        cut = bad[max_errors - seen_bad].line
        good, _ = check([r for r in pending if r[0] < cut])  # the rows before the cut, as they were
        read = sum(1 for r in pending if r[0] <= cut) + sum(1 for b in parse_bad if b.line <= cut)
        return good, [b for b in bad if b.line <= cut], read, cut

    try:
        for row in rows:
            if isinstance(row, BadRow):
                parse_bad.append(row)
            else:
                pending.append(row)
            if len(pending) + len(parse_bad) >= chunk_size:
                out = close()
                yield out
                if out[3] is not None:
                    return
                seen_bad += len(out[1])
                pending, parse_bad = [], []
        if pending or parse_bad:
            yield close()
    finally:
        close_rows = getattr(rows, "close", None)
        if close_rows is not None:
            close_rows()


def read_events(
    path: Path,
    *,
    event_types: frozenset[str],
    max_future: timedelta,
    chunk_size: int = 5000,
    max_errors: int | None = None,
    progress: bool = False,
    now: datetime | None = None,
) -> Iterator[EventChunk]:
    """An events file (CSV or JSONL, optionally gzipped) in chunks of at most `chunk_size` rows.

    With `max_errors`, the chunk holding the bad row past the limit keeps only the rows before it, names that
    line in `stopped_at`, and is the last one. `now` (default: when reading starts) is the time `max_future`
    counts from, the same for every chunk.
    """
    fmt = detect_format(path)
    if fmt is None:
        return
    start = now or datetime.now(UTC)

    def check(rows: list[Row]) -> tuple[tuple[list[EventRecord], int], list[BadRow]]:
        records, bad, repeated = check_events(rows, event_types=event_types, max_future=max_future, now=start)
        return (records, repeated), bad

    rows = iter_rows(path, fmt, required=EVENT_COLUMNS, progress=progress)
    for (records, repeated), bad, read, stopped_at in _chunks(rows, check, chunk_size, max_errors):
        yield EventChunk(records, bad, read, repeated, stopped_at)


# --- items ----------------------------------------------------------------------------------------------


def check_items(rows: list[Row]) -> tuple[list[tuple[str, dict[str, Any]]], list[BadRow]]:
    """Rows as `(item_id, fields given)` by the API's `ItemIn` (unknown fields are bad rows), and bad rows."""
    items: list[tuple[str, dict[str, Any]]] = []
    bad: list[BadRow] = []
    for number, fields in rows:
        try:
            item = ItemIn.model_validate(fields)
        except ValidationError as exc:
            bad.append(BadRow(number, summary(describe(exc))))
            continue
        given = item.model_dump(exclude_unset=True, exclude={"item_id"})
        nulls = [name for name in _NOT_NULL_ITEM_FIELDS if name in given and given[name] is None]
        if nulls:
            name = nulls[0]
            bad.append(
                BadRow(
                    number,
                    f"{name}: must not be null; give {_NOT_NULL_ITEM_FIELDS[name]}, "
                    "or leave the field out to keep the stored value",
                )
            )
            continue
        items.append((item.item_id, given))
    return items, bad


def read_items(
    path: Path, *, chunk_size: int = 1000, max_errors: int | None = None, progress: bool = False
) -> Iterator[ItemChunk]:
    """An items file (JSONL, optionally gzipped) in chunks; `max_errors` as in `read_events`."""
    fmt = detect_format(path)
    if fmt is None:
        return
    if fmt.kind != "jsonl":
        raise DatasetFormatError(
            f"format: items must be JSONL (one JSON object per line), this file is {fmt}", path=path
        )
    rows = iter_rows(path, fmt, progress=progress)
    for items, bad, read, stopped_at in _chunks(rows, check_items, chunk_size, max_errors):
        yield ItemChunk(items, bad, read, stopped_at)
