"""MovieLens readers: each layout from small files written here, malformed input, and ml-100k when present."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.datasets import DatasetFormatError, detect_layout, read_movielens
from app.records import EventRecord

ML100K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@pytest.fixture
def recbole(tmp_path: Path) -> Path:
    # columns in another order than ml-100k's, to prove they are found by the typed header
    _write(
        tmp_path / "shop.inter",
        "timestamp:float\trating:float\titem_id:token\tuser_id:token\n"
        "881250949\t3\t242\t196\n"
        "891717742\t4.5\t302\t186\n"
        "878887116.0\t1\t242\t22\n",
    )
    _write(
        tmp_path / "shop.item",
        "item_id:token\tclass:token_seq\tmovie_title:token_seq\trelease_year:token\n"
        "242\tComedy Drama\tKolya\t1996\n"
        "302\tCrime Film-Noir Mystery Thriller\tL.A. Confidential\t1997\n"
        "267\tunknown\tunkonwn\tunkonwn\n",
    )
    return tmp_path


def test_recbole_layout_finds_columns_by_header(recbole: Path) -> None:
    assert detect_layout(recbole) == "recbole"
    assert detect_layout(recbole / "shop.inter") == "recbole"  # a file inside the folder works too
    items, events = read_movielens(recbole)
    assert list(events) == [
        EventRecord("196", "242", "rating", _utc(881250949), 3.0, "ml:196:242:881250949"),
        EventRecord("186", "302", "rating", _utc(891717742), 4.5, "ml:186:302:891717742"),
        EventRecord("22", "242", "rating", _utc(878887116), 1.0, "ml:22:242:878887116"),
    ]
    by_id = {item.item_id: item for item in items}
    assert by_id["242"].title == "Kolya"
    assert by_id["242"].categories == ("Comedy", "Drama")
    assert by_id["242"].attributes == {"year": 1996}
    assert by_id["242"].published_at == datetime(1996, 1, 1, tzinfo=UTC)
    assert by_id["302"].categories == ("Crime", "Film-Noir", "Mystery", "Thriller")
    # the "unknown" pseudo-genre and a non-year are dropped, not turned into a category or a year
    assert by_id["267"].categories == ()
    assert by_id["267"].attributes == {}
    assert by_id["267"].published_at is None


def test_recbole_without_rating_column_gives_views_and_item_file_is_optional(tmp_path: Path) -> None:
    _write(tmp_path / "clicks.inter", "user_id:token\titem_id:token\ttimestamp:float\nu1\ti9\t1700000000\n")
    items, events = read_movielens(tmp_path)
    assert items == []
    assert [(e.type, e.value) for e in events] == [("view", None)]


@pytest.fixture
def original(tmp_path: Path) -> Path:
    _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    flags_kolya = "|".join("1" if g in (5, 8) else "0" for g in range(19))  # Comedy, Drama
    flags_none = "|".join("1" if g == 0 else "0" for g in range(19))  # unknown
    _write(
        tmp_path / "u.item",
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{flags_kolya}\n"
        f"543|Misérables, Les (1995)|01-Jan-1995||http://x|{flags_kolya}\n"
        f"267|unknown||||{flags_none}\n",
        encoding="latin-1",
    )
    return tmp_path


def test_original_ml100k_layout(original: Path) -> None:
    assert detect_layout(original) == "ml-100k-original"
    items, events = read_movielens(original)
    rows = list(events)
    assert [(e.user_id, e.item_id, e.value, e.timestamp) for e in rows] == [
        ("196", "242", 3.0, _utc(881250949)),
        ("186", "302", 3.0, _utc(891717742)),
        ("22", "377", 1.0, _utc(878887116)),
    ]
    assert {e.type for e in rows} == {"rating"}
    by_id = {item.item_id: item for item in items}
    assert by_id["242"].title == "Kolya"
    assert by_id["242"].categories == ("Comedy", "Drama")  # the standard genre list, u.genre being absent
    assert by_id["242"].attributes == {"year": 1996}
    assert by_id["242"].published_at == datetime(1997, 1, 24, tzinfo=UTC)  # the release date itself
    assert by_id["543"].title == "Misérables, Les"  # latin-1 decoded
    assert by_id["267"].categories == ()
    assert by_id["267"].title == "unknown"


def test_original_layout_takes_genre_names_from_u_genre(original: Path) -> None:
    names = [f"g{i}" for i in range(19)]
    _write(original / "u.genre", "".join(f"{name}|{i}\n" for i, name in enumerate(names)) + "\n")
    items, _ = read_movielens(original)
    assert items[0].categories == ("g5", "g8")


def test_original_layout_with_fewer_genres_in_u_genre(original: Path) -> None:
    _write(original / "u.genre", "Action|0\nComedy|1\n")
    _write(original / "u.item", "7|Film (2001)|||url|0|1\n")
    items, _ = read_movielens(original)
    assert items[0].categories == ("Comedy",)


@pytest.fixture
def latest(tmp_path: Path) -> Path:
    _write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,6,0.5,964982224\n",
    )
    _write(
        tmp_path / "movies.csv",
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"American President, The (1995)",Comedy|Drama|Romance\n'
        "6,Babylon 5,(no genres listed)\n"
        "7,Fawlty Towers (1975-1979),Comedy\n",
    )
    return tmp_path


def test_latest_layout(latest: Path) -> None:
    assert detect_layout(latest) == "ml-latest"
    items, events = read_movielens(latest)
    assert [(e.user_id, e.item_id, e.type, e.value, e.timestamp) for e in events] == [
        ("1", "1", "rating", 4.0, _utc(964982703)),
        ("1", "3", "rating", 4.5, _utc(964981247)),
        ("2", "6", "rating", 0.5, _utc(964982224)),
    ]
    by_id = {item.item_id: item for item in items}
    assert by_id["1"].title == "Toy Story"
    assert by_id["1"].categories == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert by_id["1"].attributes == {"year": 1995}
    assert by_id["3"].title == "American President, The"  # a quoted title with a comma
    assert by_id["6"].title == "Babylon 5"
    assert by_id["6"].categories == ()
    assert by_id["6"].attributes == {}
    assert by_id["7"].title == "Fawlty Towers"
    assert by_id["7"].attributes == {"year": 1975}


def test_latest_layout_columns_in_any_order(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.csv", "timestamp,rating,movieId,userId\n964982703,2.5,10,7\n")
    _write(tmp_path / "movies.csv", "genres,title,movieId\nAction,Heat (1995),10\n")
    items, events = read_movielens(tmp_path)
    assert [(e.user_id, e.item_id, e.value) for e in events] == [("7", "10", 2.5)]
    assert items[0].title == "Heat"
    assert items[0].categories == ("Action",)


def test_events_stream_lazily_in_input_order(latest: Path) -> None:
    # a bad line after two good ones: the good ones arrive before the error, so nothing was read ahead
    _write(latest / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,100\n1,2,4,50\n1,3,x,10\n")
    _, events = read_movielens(latest)
    assert next(events).timestamp == _utc(100)
    assert next(events).timestamp == _utc(50)  # file order, not time order
    with pytest.raises(DatasetFormatError):
        next(events)


def test_progress_bar_reports_bytes(latest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, events = read_movielens(latest, progress=True)
    assert len(list(events)) == 3
    err = capsys.readouterr().err
    assert "ratings.csv" in err
    assert f"{(latest / 'ratings.csv').stat().st_size}" in err


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("1,1,abc,964982703", "rating: 'abc' is not a number"),
        ("1,1,nan,964982703", "rating: 'nan' is not finite"),
        ("1,1,4.0", "expected 4 comma-separated fields, found 3"),
        (",1,4.0,964982703", "user_id: must not be empty"),
        ("1,1,4.0,soon", "timestamp: 'soon' is not a number"),
    ],
)
def test_malformed_rating_line_names_file_and_line(latest: Path, line: str, reason: str) -> None:
    path = _write(latest / "ratings.csv", f"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n\n{line}\n")
    _, events = read_movielens(latest)
    with pytest.raises(DatasetFormatError) as caught:
        list(events)
    assert caught.value.path == path
    assert caught.value.line == 4  # the blank line 3 still counts
    assert str(caught.value) == f"{path}:4: {reason}"


def test_skip_malformed_counts_skipped_lines(latest: Path) -> None:
    _write(latest / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,x,1\n1,2,4,2\n1,3\n2,2,5,3\n")
    _, events = read_movielens(latest, skip_malformed=True)
    assert [e.item_id for e in events] == ["2", "2"]
    assert events.skipped == 2


def test_malformed_recbole_headers_and_items(recbole: Path) -> None:
    _write(recbole / "shop.inter", "user_id\titem_id:token\n1\t2\n")
    _, events = read_movielens(recbole)
    with pytest.raises(DatasetFormatError, match=r"shop\.inter:1: header field 'user_id' is not 'name:type'"):
        list(events)

    _write(recbole / "shop.inter", "user_id:token\titem_id:token\n1\t2\n")
    _, events = read_movielens(recbole)
    with pytest.raises(DatasetFormatError, match=r"shop\.inter:1: header has no 'timestamp' column"):
        list(events)

    _write(recbole / "shop.item", "item_id:token\tclass:token_seq\n1\tDrama\n2\n")
    with pytest.raises(DatasetFormatError, match=r"shop\.item:3: expected 2 tab-separated fields, found 1"):
        read_movielens(recbole)


def test_malformed_original_item_lines(original: Path) -> None:
    _write(original / "u.item", "1|Film (2001)|||url|" + "|".join(["0"] * 19) + "\n7|Short|x\n")
    with pytest.raises(DatasetFormatError, match=r"u\.item:2: expected 24 '\|'-separated fields"):
        read_movielens(original)
    _write(original / "u.item", "7|Film (2001)|||url|" + "|".join(["2"] * 19) + "\n")
    with pytest.raises(DatasetFormatError, match=r"u\.item:1: genre flags must be 0 or 1"):
        read_movielens(original)


def test_undecodable_bytes_name_the_line(recbole: Path) -> None:
    (recbole / "shop.inter").write_bytes(b"user_id:token\titem_id:token\ttimestamp:float\nu\xff\t1\t2\n")
    _, events = read_movielens(recbole)
    with pytest.raises(DatasetFormatError, match=r"shop\.inter:2: not utf-8"):
        list(events)


def test_unknown_layout_and_missing_path(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(DatasetFormatError, match="no MovieLens files found"):
        detect_layout(tmp_path)
    with pytest.raises(DatasetFormatError, match="no such file or folder"):
        read_movielens(tmp_path / "absent")


def test_several_inter_files_pick_the_one_named_after_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    _write(folder / "ml.train.inter", header + "a\t1\t1\n")
    _write(folder / "other.inter", header + "b\t1\t1\n")
    with pytest.raises(DatasetFormatError, match=r"several '\.inter' files"):
        detect_layout(folder)
    _write(folder / "ml.inter", header + "c\t1\t1\n")
    assert [e.user_id for e in read_movielens(folder)[1]] == ["c"]


@pytest.mark.skipif(not ML100K.is_dir(), reason=f"{ML100K} is absent")
def test_real_ml100k_recbole_files() -> None:
    items, events = read_movielens(ML100K)
    rows = list(events)
    assert len(rows) == 100_000
    assert len({e.user_id for e in rows}) == 943
    assert len(items) == 1682
    assert {e.item_id for e in rows} <= {item.item_id for item in items}
    assert (rows[0].user_id, rows[0].item_id, rows[0].value) == ("196", "242", 3.0)  # file order kept
    assert {e.value for e in rows} == {1.0, 2.0, 3.0, 4.0, 5.0}
    toy_story = next(item for item in items if item.item_id == "1")
    assert toy_story.title == "Toy Story"
    assert toy_story.categories == ("Animation", "Children's", "Comedy")
    assert toy_story.attributes == {"year": 1995}
    genres = {g for item in items for g in item.categories}
    assert len(genres) == 18  # the 19 of ml-100k less "unknown"
    assert "unknown" not in genres
