"""MovieLens readers: RecBole atomic files, the original ml-100k files and the ml-latest CSV files.

Items are read whole (they are small); events stream in file order, one line at a time, so a 25M-row
`ratings.csv` runs in constant memory. A malformed line raises `DatasetFormatError` naming the file and
its line number, unless `skip_malformed=True`, which skips it and counts it in `EventStream.skipped`
(and logs the count of skipped item lines).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from app.datasets.errors import DatasetFormatError
from app.records import EventRecord, ItemRecord

log = logging.getLogger(__name__)

Layout = Literal["recbole", "ml-100k-original", "ml-latest"]

# The genre order of ml-100k's u.genre, used when that file is absent.
ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# Pseudo-genres that say "no genre": they do not become categories.
_NO_GENRE = frozenset({"unknown", "(no genres listed)"})
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_RECBOLE_TYPES = frozenset({"token", "token_seq", "float", "float_seq"})
_PROGRESS_EVERY = 8192  # lines between progress-bar updates: tqdm per line would cost more than parsing

EventParser = Callable[[str], EventRecord]


class EventStream(Iterator[EventRecord]):
    """Events of one MovieLens ratings file, lazily and in file order; `skipped` counts malformed lines."""

    def __init__(
        self,
        path: Path,
        parser_factory: Callable[[str], EventParser],
        *,
        encoding: str,
        has_header: bool,
        progress: bool,
        skip_malformed: bool,
    ) -> None:
        self.path = path
        self.skipped = 0
        self._parser_factory = parser_factory
        self._encoding = encoding
        self._has_header = has_header
        self._progress = progress
        self._skip_malformed = skip_malformed
        self._events = self._generate()

    def __next__(self) -> EventRecord:
        return next(self._events)

    def close(self) -> None:
        """Close the underlying file if iteration stopped early."""
        self._events.close()

    def _generate(self) -> Generator[EventRecord, None, None]:
        size = self.path.stat().st_size
        with (
            self.path.open("rb") as handle,
            tqdm(
                total=size, unit="B", unit_scale=True, desc=self.path.name, disable=not self._progress
            ) as bar,
        ):
            pending = 0
            parse: EventParser | None = None
            for number, raw in enumerate(handle, start=1):
                pending += len(raw)
                if number % _PROGRESS_EVERY == 0:
                    bar.update(pending)
                    pending = 0
                line = _decode(raw, self._encoding, self.path, number)
                if not line.strip():
                    continue
                if parse is None:
                    if self._has_header:
                        parse = _parser_or_error(self._parser_factory, line, self.path, number)
                        continue
                    parse = self._parser_factory("")
                try:
                    event = parse(line)
                except ValueError as exc:
                    if not self._skip_malformed:
                        raise DatasetFormatError(str(exc), path=self.path, line=number) from None
                    self.skipped += 1
                    continue
                yield event
            bar.update(pending)
        if self.skipped:
            log.warning("%s: skipped %d malformed lines", self.path, self.skipped)


def detect_layout(path: Path) -> Layout:
    """Name the MovieLens layout found in `path` (a folder, or a file inside it)."""
    folder = _folder(path)
    if _recbole_files(folder)[0] is not None:
        return "recbole"
    if (folder / "u.data").is_file() and (folder / "u.item").is_file():
        return "ml-100k-original"
    if (folder / "ratings.csv").is_file() and (folder / "movies.csv").is_file():
        return "ml-latest"
    raise DatasetFormatError(
        "no MovieLens files found: expected RecBole atomic files (one '*.inter', optionally '*.item'), "
        "'u.data' + 'u.item' (original ml-100k), or 'ratings.csv' + 'movies.csv' (ml-latest)",
        path=folder,
    )


def read_movielens(
    path: Path, *, progress: bool = False, skip_malformed: bool = False
) -> tuple[list[ItemRecord], EventStream]:
    """Read a MovieLens folder: its items whole, and its rating events as a lazy stream in file order."""
    folder = _folder(path)
    layout = detect_layout(folder)
    if layout == "recbole":
        inter, item = _recbole_files(folder)
        assert inter is not None  # detect_layout checked it
        items = _read_recbole_items(item, skip_malformed) if item is not None else []
        return items, EventStream(
            inter,
            _recbole_event_parser,
            encoding="utf-8",
            has_header=True,
            progress=progress,
            skip_malformed=skip_malformed,
        )
    if layout == "ml-100k-original":
        genres = _read_ml100k_genres(folder / "u.genre")
        items = _read_ml100k_items(folder / "u.item", genres, skip_malformed)
        return items, EventStream(
            folder / "u.data",
            _ml100k_event_parser,
            encoding="latin-1",
            has_header=False,
            progress=progress,
            skip_malformed=skip_malformed,
        )
    items = _read_latest_items(folder / "movies.csv", skip_malformed)
    return items, EventStream(
        folder / "ratings.csv",
        _latest_event_parser,
        encoding="utf-8",
        has_header=True,
        progress=progress,
        skip_malformed=skip_malformed,
    )


# --- events -------------------------------------------------------------------------------------------


def _rating_event(user_id: str, item_id: str, rating: str | None, timestamp: str) -> EventRecord:
    """One `rating` event (or `view` when the file has no rating column) from the text of its fields."""
    user_id = user_id.strip()
    item_id = item_id.strip()
    if not user_id:
        raise ValueError("user_id: must not be empty")
    if not item_id:
        raise ValueError("item_id: must not be empty")
    value = None if rating is None else _finite(rating, "rating")
    seconds = _finite(timestamp, "timestamp")
    try:
        when = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp: {timestamp.strip()!r} is out of range") from exc
    stamp = int(seconds) if seconds.is_integer() else seconds
    return EventRecord(
        user_id=user_id,
        item_id=item_id,
        type="rating" if value is not None else "view",
        timestamp=when,
        value=value,
        event_id=f"ml:{user_id}:{item_id}:{stamp}",
    )


def _recbole_event_parser(header: str) -> EventParser:
    """A parser for the lines of a RecBole `.inter` file, its columns found by the typed header."""
    columns = _recbole_header(header)
    width = len(columns)
    user = _column(columns, ("user_id",), "user_id")
    item = _column(columns, ("item_id",), "item_id")
    when = _column(columns, ("timestamp",), "timestamp")
    rating = _optional_column(columns, ("rating",))

    def parse(line: str) -> EventRecord:
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != width:
            raise ValueError(f"expected {width} tab-separated fields, found {len(fields)}")
        return _rating_event(
            fields[user], fields[item], None if rating is None else fields[rating], fields[when]
        )

    return parse


def _ml100k_event_parser(_header: str) -> EventParser:
    """A parser for `u.data` lines: user, item, rating, timestamp, tab separated."""

    def parse(line: str) -> EventRecord:
        fields = line.split()
        if len(fields) != 4:
            raise ValueError(f"expected 4 fields (user item rating timestamp), found {len(fields)}")
        return _rating_event(fields[0], fields[1], fields[2], fields[3])

    return parse


def _latest_event_parser(header: str) -> EventParser:
    """A parser for `ratings.csv` lines, its columns found by the header `userId,movieId,rating,timestamp`."""
    columns = [name.strip().lstrip("\ufeff") for name in next(csv.reader([header]))]
    width = len(columns)
    user = _column(columns, ("userId",), "userId")
    item = _column(columns, ("movieId",), "movieId")
    rating = _column(columns, ("rating",), "rating")
    when = _column(columns, ("timestamp",), "timestamp")

    def parse(line: str) -> EventRecord:
        line = line.rstrip("\r\n")
        # ratings hold only numbers: split is ~5x faster than csv, which is kept for quoted lines
        fields = line.split(",") if '"' not in line else next(csv.reader([line]))
        if len(fields) != width:
            raise ValueError(f"expected {width} comma-separated fields, found {len(fields)}")
        return _rating_event(fields[user], fields[item], fields[rating], fields[when])

    return parse


# --- items --------------------------------------------------------------------------------------------


def _read_recbole_items(path: Path, skip_malformed: bool) -> list[ItemRecord]:
    """Items of a RecBole `.item` file: title, release year and classes (genres)."""
    items: list[ItemRecord] = []
    skipped = 0
    with path.open("rb") as handle:
        lines = ((number, _decode(raw, "utf-8", path, number)) for number, raw in enumerate(handle, start=1))
        columns: list[str] | None = None
        item_col = title_col = year_col = genre_col = None
        for number, line in lines:
            if not line.strip():
                continue
            if columns is None:
                try:
                    columns = _recbole_header(line)
                    item_col = _column(columns, ("item_id",), "item_id")
                except ValueError as exc:
                    raise DatasetFormatError(str(exc), path=path, line=number) from None
                title_col = _optional_column(columns, ("movie_title", "title"))
                year_col = _optional_column(columns, ("release_year", "year"))
                genre_col = _optional_column(columns, ("class", "genre", "genres", "categories"))
                continue
            assert item_col is not None
            fields = line.rstrip("\r\n").split("\t")
            try:
                if len(fields) != len(columns):
                    raise ValueError(f"expected {len(columns)} tab-separated fields, found {len(fields)}")
                items.append(
                    _item(
                        fields[item_col],
                        None if title_col is None else fields[title_col].strip(),
                        None if year_col is None else _year_or_none(fields[year_col]),
                        () if genre_col is None else tuple(fields[genre_col].split()),
                    )
                )
            except ValueError as exc:
                if not skip_malformed:
                    raise DatasetFormatError(str(exc), path=path, line=number) from None
                skipped += 1
    if columns is None:
        raise DatasetFormatError("empty file: expected a typed header such as 'item_id:token'", path=path)
    _log_skipped(path, skipped)
    return items


def _read_ml100k_genres(path: Path) -> tuple[str, ...]:
    """Genre names by flag position from `u.genre` (`name|index` lines), or the standard list."""
    if not path.is_file():
        return ML100K_GENRES
    by_index: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, index = line.rpartition("|")
        if not sep or not name or not index.strip().isdigit():
            raise DatasetFormatError(f"expected 'name|index', found {line!r}", path=path, line=number)
        by_index[int(index)] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetFormatError(f"genre indexes are not 0..{len(by_index) - 1}", path=path)
    return tuple(by_index[i] for i in range(len(by_index)))


def _read_ml100k_items(path: Path, genres: tuple[str, ...], skip_malformed: bool) -> list[ItemRecord]:
    """Items of `u.item`: id|title (year)|release date|video date|IMDb URL|one 0/1 flag per genre."""
    width = 5 + len(genres)
    items: list[ItemRecord] = []
    skipped = 0
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        try:
            if len(fields) != width:
                raise ValueError(
                    f"expected {width} '|'-separated fields (5 + {len(genres)} genres), found {len(fields)}"
                )
            flags = fields[5:]
            if any(flag not in ("0", "1") for flag in flags):
                raise ValueError(f"genre flags must be 0 or 1, found {'|'.join(flags)!r}")
            title, year = _split_title(fields[1])
            released = _release_date(fields[2])
            if year is None and released is not None:
                year = released.year
            categories = tuple(name for name, flag in zip(genres, flags, strict=True) if flag == "1")
            items.append(_item(fields[0], title, year, categories, published_at=released))
        except ValueError as exc:
            if not skip_malformed:
                raise DatasetFormatError(str(exc), path=path, line=number) from None
            skipped += 1
    _log_skipped(path, skipped)
    return items


def _read_latest_items(path: Path, skip_malformed: bool) -> list[ItemRecord]:
    """Items of ml-latest's `movies.csv`: movieId,title (year),genres joined by '|'."""
    items: list[ItemRecord] = []
    skipped = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
            item_col = _column(header, ("movieId",), "movieId")
            title_col = _column(header, ("title",), "title")
            genre_col = _optional_column(header, ("genres",))
        except StopIteration:
            raise DatasetFormatError(
                "empty file: expected the header 'movieId,title,genres'", path=path
            ) from None
        except ValueError as exc:
            raise DatasetFormatError(str(exc), path=path, line=1) from None
        except UnicodeDecodeError as exc:
            raise DatasetFormatError(f"not UTF-8 ({exc.reason})", path=path, line=1) from None
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                raise DatasetFormatError(str(exc), path=path, line=reader.line_num) from None
            if not fields:
                continue
            try:
                if len(fields) != len(header):
                    raise ValueError(f"expected {len(header)} comma-separated fields, found {len(fields)}")
                title, year = _split_title(fields[title_col])
                categories = () if genre_col is None else tuple(g for g in fields[genre_col].split("|") if g)
                items.append(_item(fields[item_col], title, year, categories))
            except ValueError as exc:
                if not skip_malformed:
                    raise DatasetFormatError(str(exc), path=path, line=reader.line_num) from None
                skipped += 1
    _log_skipped(path, skipped)
    return items


def _item(
    item_id: str,
    title: str | None,
    year: int | None,
    genres: tuple[str, ...],
    *,
    published_at: datetime | None = None,
) -> ItemRecord:
    """One movie as an ItemRecord: genres become categories, the year an attribute and a publish date."""
    item_id = item_id.strip()
    if not item_id:
        raise ValueError("item_id: must not be empty")
    if published_at is None and year is not None:
        published_at = datetime(year, 1, 1, tzinfo=UTC)
    return ItemRecord(
        item_id=item_id,
        title=title or None,
        categories=tuple(g for g in genres if g not in _NO_GENRE),
        published_at=published_at,
        attributes={"year": year} if year is not None else {},
    )


# --- small parsing helpers ------------------------------------------------------------------------------


def _folder(path: Path) -> Path:
    """The folder holding the dataset: `path` itself, or the parent of a file inside it."""
    path = Path(path)
    if path.is_file():
        return path.parent
    if not path.is_dir():
        raise DatasetFormatError("no such file or folder", path=path)
    return path


def _recbole_files(folder: Path) -> tuple[Path | None, Path | None]:
    """The `.inter` file of a RecBole folder (one, or the one named after the folder) and its `.item`."""
    inters = sorted(folder.glob("*.inter"))
    if not inters:
        return None, None
    if len(inters) > 1:
        named = folder / f"{folder.name}.inter"
        if named not in inters:
            names = ", ".join(p.name for p in inters)
            raise DatasetFormatError(
                f"several '.inter' files ({names}) and none named '{named.name}'", path=folder
            )
        inters = [named]
    inter = inters[0]
    item = inter.with_suffix(".item")
    if item.is_file():
        return inter, item
    items = sorted(folder.glob("*.item"))
    return inter, items[0] if len(items) == 1 else None


def _recbole_header(line: str) -> list[str]:
    """Column names of a RecBole typed header such as `user_id:token\titem_id:token`."""
    names: list[str] = []
    for field in line.rstrip("\r\n").split("\t"):
        name, sep, kind = field.strip().rpartition(":")
        if not sep or not name or kind not in _RECBOLE_TYPES:
            raise ValueError(
                f"header field {field.strip()!r} is not 'name:type' with type one of {sorted(_RECBOLE_TYPES)}"
            )
        names.append(name)
    return names


def _column(columns: list[str], names: tuple[str, ...], label: str) -> int:
    """Index of the first of `names` in the header, or an error naming the missing column."""
    index = _optional_column(columns, names)
    if index is None:
        raise ValueError(f"header has no {label!r} column (columns: {', '.join(columns)})")
    return index


def _optional_column(columns: list[str], names: tuple[str, ...]) -> int | None:
    """Index of the first of `names` in the header, or None."""
    for name in names:
        if name in columns:
            return columns.index(name)
    return None


def _parser_or_error(
    factory: Callable[[str], EventParser], header: str, path: Path, number: int
) -> EventParser:
    """Build a line parser from a header line, turning a bad header into a DatasetFormatError."""
    try:
        return factory(header)
    except ValueError as exc:
        raise DatasetFormatError(str(exc), path=path, line=number) from None


def _decode(raw: bytes, encoding: str, path: Path, number: int) -> str:
    """Decode one line, naming the file and line when its bytes are not in the file's encoding."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(
            f"not {encoding} ({exc.reason} at byte {exc.start})", path=path, line=number
        ) from None


def _finite(text: str, field: str) -> float:
    """A finite float from text, or a ValueError naming the field and the value."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{field}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{field}: {text.strip()!r} is not finite")
    return value


def _year_or_none(text: str) -> int | None:
    """A plausible year, or None for 'unknown' and other non-years."""
    text = text.strip()
    if len(text) == 4 and text.isdigit():
        return int(text)
    return None


def _split_title(text: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); a title without a year keeps its text."""
    text = text.strip()
    match = _TITLE_YEAR.match(text)
    if match is None or not match.group("title"):
        return text, None
    return match.group("title"), int(match.group("year"))


def _release_date(text: str) -> datetime | None:
    """ml-100k's '01-Jan-1995' as a UTC datetime, or None when empty or not a date."""
    text = text.strip()
    if not text:
        return None
    try:
        return datetime.strptime(text, "%d-%b-%Y").replace(tzinfo=UTC)
    except ValueError:
        return None


def _log_skipped(path: Path, skipped: int) -> None:
    """Say how many malformed item lines were skipped."""
    if skipped:
        log.warning("%s: skipped %d malformed lines", path, skipped)
