"""MovieLens-100k loader, fetch/verify, lake ingest and the `reco data` commands."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from reco.cli import app
from reco.data.events import EVENT_COLUMNS
from reco.data.lake import EventLake
from reco.data.movielens import (
    FILES,
    INTER_FILE,
    SOURCE_ENV,
    DataFileError,
    fetch_movielens,
    ingest_movielens,
    load_movielens,
)

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_TEXT = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tAlpha\t1995\tAction Comedy\n"
    "20\tBeta\tunkonwn\tunknown\n"
    "30\tGamma\t1990\tDrama\n"
)
USER_TEXT = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "1\t24\tM\ttechnician\t85711\n"
    "2\t53\tF\tother\tT8H1N\n"
)


def write_ml(folder: Path, inter_rows: list[str], *, inter_header: str = INTER_HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml-100k.inter").write_text("\n".join([inter_header, *inter_rows]) + "\n")
    (folder / "ml-100k.item").write_text(ITEM_TEXT)
    (folder / "ml-100k.user").write_text(USER_TEXT)
    return folder


@pytest.fixture(scope="module")
def ml(movielens_dir: Path):
    return load_movielens(movielens_dir)


def test_real_files(ml) -> None:
    ev = ml.events
    assert len(ev) == 100_000 and len(ml.catalog) == 1682 and len(ml.users) == 943
    assert ev["user_id"].nunique() == 943 and ev["item_id"].nunique() == 1682
    assert list(ev.columns) == list(EVENT_COLUMNS)
    assert str(ev["ts"].dtype) == "datetime64[us, UTC]"
    assert (ev["event_type"] == "view").all() and ev["value"].isna().all()
    assert ev["event_id"].is_unique
    # file order kept: the first line of ml-100k.inter is "196 242 3 881250949"
    first = ev.iloc[0]
    assert first["event_id"] == "ml100k-196-242"
    assert first["ts"] == pd.Timestamp(881250949, unit="s", tz="UTC")
    assert first["session_id"].startswith("196-")
    # catalog: genres parsed, category = first genre; the two non-years are missing years
    assert ml.catalog.title("1") == "Toy Story"
    assert ml.catalog.genres("1") == ["Animation", "Children's", "Comedy"]
    assert ml.catalog.category("2") == "Action"
    assert ml.catalog.category("267") == "unknown" and ml.catalog.year("267") is None
    assert ml.catalog.items["year"].isna().sum() == 2
    assert ml.users.set_index("user_id").loc["1", "occupation"] == "technician"


def test_sessions_split_after_30_minutes_of_inactivity(tmp_path: Path) -> None:
    # user 1 (file order deliberately not time order): 0, +30:00 (same session), +30:01 (new), tie at 7201
    rows = [
        "1\t10\t4\t3601",  # 0s + 1800 + 1801 = 3601 -> session 1
        "2\t10\t5\t100",
        "1\t20\t3\t0",  # session 0
        "1\t30\t2\t1800",  # gap exactly 30 min -> still session 0
        "2\t20\t1\t5000",  # gap > 30 min -> user 2 session 1
    ]
    events = load_movielens(write_ml(tmp_path, rows)).events
    assert events["event_id"].tolist() == [
        "ml100k-1-10", "ml100k-2-10", "ml100k-1-20", "ml100k-1-30", "ml100k-2-20"
    ]  # fmt: skip
    assert events["session_id"].tolist() == ["1-1", "2-0", "1-0", "1-0", "2-1"]
    assert events["ts"].iloc[0] == pd.Timestamp(3601, unit="s", tz="UTC")


@pytest.mark.parametrize(
    ("inter_rows", "header", "expected"),
    [
        (["1\t10\t4\t0", "1\t20\t4"], INTER_HEADER, "ml-100k.inter line 3: expected 4 tab-separated fields, got 3"),
        (["1\t10\t4\t0", "1\t20\t4\tsoon"], INTER_HEADER, "ml-100k.inter line 3: timestamp 'soon' is not a finite"),
        (["1\t10\t4\t0"], "user_id\titem_id\ttimestamp", "ml-100k.inter line 1: bad header"),
        (["1\t10\t4\t0", "2\t99\t4\t0"], INTER_HEADER, "ml-100k.inter line 3: item_id '99' is not in ml-100k.item"),
        (["1\t10\t4\t0", "1\t10\t5\t9"], INTER_HEADER, "ml-100k.inter line 3: duplicate (user_id, item_id) rating"),
    ],
    ids=["truncated-line", "non-numeric-ts", "bad-header", "unknown-item", "duplicate-rating"],
)
def test_bad_files_name_file_and_line(tmp_path: Path, inter_rows: list[str], header: str, expected: str) -> None:
    write_ml(tmp_path, inter_rows, inter_header=header)
    with pytest.raises(DataFileError) as info:
        load_movielens(tmp_path)
    assert str(info.value).startswith(expected)


def test_truncated_last_line_without_newline(tmp_path: Path) -> None:
    write_ml(tmp_path, ["1\t10\t4\t0"])
    with open(tmp_path / INTER_FILE, "a") as fh:
        fh.write("2\t2")  # cut off mid-line
    with pytest.raises(DataFileError, match=r"^ml-100k.inter line 3: expected 4 tab-separated fields, got 2$"):
        load_movielens(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    write_ml(tmp_path, ["1\t10\t4\t0"])
    (tmp_path / "ml-100k.user").unlink()
    with pytest.raises(DataFileError, match=r"^ml-100k.user: file not found") as info:
        load_movielens(tmp_path)
    assert info.value.path == tmp_path / "ml-100k.user" and info.value.line is None


def test_fetch_from_local_source_verifies_and_is_idempotent(
    movielens_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SOURCE_ENV, str(movielens_dir))
    dest = fetch_movielens(tmp_path / "ml", progress=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)
    stamp = (dest / INTER_FILE).stat().st_mtime_ns
    monkeypatch.setenv(SOURCE_ENV, str(tmp_path / "does-not-exist"))  # would fail if it fetched again
    assert fetch_movielens(dest, progress=False) == dest
    assert (dest / INTER_FILE).stat().st_mtime_ns == stamp


def corrupt_copy(movielens_dir: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in FILES:
        shutil.copyfile(movielens_dir / name, folder / name)
    data = bytearray((folder / INTER_FILE).read_bytes())
    data[100] ^= 1  # one flipped bit
    (folder / INTER_FILE).write_bytes(bytes(data))
    return folder


def test_fetch_rejects_a_corrupt_copy(movielens_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOURCE_ENV, str(corrupt_copy(movielens_dir, tmp_path / "bad")))
    with pytest.raises(DataFileError, match=r"^ml-100k.inter: sha256 mismatch"):
        fetch_movielens(tmp_path / "dest", progress=False)
    assert list((tmp_path / "dest").iterdir()) == []  # nothing half-written


def test_ingest_range_is_idempotent(movielens_dir: Path, ml, tmp_path: Path) -> None:
    lake = EventLake(tmp_path / "lake")
    start, end = date(1998, 1, 1), date(1998, 1, 7)
    written = ingest_movielens(movielens_dir, lake, start, end)
    in_range = ml.events[ml.events["ts"].dt.date.between(start, end)]
    assert sorted(written) == lake.days() and min(written) >= start and max(written) <= end
    assert sum(written.values()) == len(in_range) == lake.count_rows()
    snap = lake.snapshot_id()
    assert ingest_movielens(movielens_dir, lake, start, end) == written
    assert lake.snapshot_id() == snap
    back = lake.read_pandas()
    assert set(back["event_id"]) == set(in_range["event_id"])
    # within a day the lake keeps file order (RecBole's tie-breaking depends on it)
    day = in_range[in_range["ts"].dt.date == start]["event_id"].tolist()
    assert lake.read_pandas(start, start)["event_id"].tolist() == day


runner = CliRunner()


def test_cli_fetch_error_is_one_line_exit_2(movielens_dir: Path, tmp_path: Path) -> None:
    bad = corrupt_copy(movielens_dir, tmp_path / "bad")
    result = runner.invoke(
        app, ["data", "fetch", "movielens-100k", "--dest", str(tmp_path / "d")], env={SOURCE_ENV: str(bad)}
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()  # progress lines, then the error
    assert lines[-1].startswith("error: ml-100k.inter: sha256 mismatch")
    assert [line for line in lines if line.startswith("error")] == lines[-1:]


def test_cli_fetch_and_load_lake(movielens_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ml"
    result = runner.invoke(
        app, ["data", "fetch", "movielens-100k", "--dest", str(dest)], env={SOURCE_ENV: str(movielens_dir)}
    )
    assert result.exit_code == 0, result.output
    assert "sha256 verified" in result.output

    args = ["data", "load-lake", "--source", str(dest), "--lake", str(tmp_path / "lake")]
    result = runner.invoke(app, [*args, "--start", "1998-03-01", "--end", "1998-03-02", "-q"])
    assert result.exit_code == 0, result.output
    assert "1998-03-01" in result.stdout and "2 partitions" in result.stdout
    assert EventLake(tmp_path / "lake").days() == [date(1998, 3, 1), date(1998, 3, 2)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "fetch", "movielens-1m"], "error: unknown dataset 'movielens-1m'"),
        (["data", "load-lake", "--source", "{bad}", "--lake", "{tmp}/lake"], "error: ml-100k.inter line 3: expected 4"),
        (
            ["data", "load-lake", "--source", "{bad}", "--lake", "{tmp}/l", "--start", "May 1"],
            "error: --start: 'May 1'",
        ),
    ],
    ids=["unknown-dataset", "bad-file", "bad-date"],
)
def test_cli_errors(tmp_path: Path, args: list[str], message: str) -> None:
    bad = write_ml(tmp_path / "bad", ["1\t10\t4\t0", "1\t20\t4"])
    argv = [a.format(bad=bad, tmp=tmp_path) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.output
