"""MovieLens-100k from RecBole atomic files: fetch (PyPI only), verify, load as events + catalog + users.

Files (tab-separated, first line a header of `name:type` columns):
`ml-100k.inter` (user_id, item_id, rating, timestamp in Unix seconds), `ml-100k.item` (item_id,
movie_title, release_year, class = space-separated genres), `ml-100k.user` (user_id, age, gender,
occupation, zip_code).

Each rating becomes a `view` event at its timestamp (the rating itself is not an event field: ML-100k
records what a user watched, which is the implicit-feedback signal the ranker learns from).

Sessions: ML-100k has none, so they are derived. A user's events in time order (equal timestamps keep file
order) form one session until a gap of MORE than 30 minutes (`SESSION_GAP_S`); the next event opens the
next one. `session_id` is f"{user_id}-{k}", k = 0, 1, ... in time order.

The events keep the FILE ORDER of `ml-100k.inter`: RecBole breaks timestamp ties by file order, and the
offline evaluation reproduces its split.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from reco.data.catalog import ItemCatalog
from reco.data.events import EVENT_SCHEMA, EventType
from reco.data.lake import EventLake, events_to_pandas

INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"
USER_FILE = "ml-100k.user"
FILES = (INTER_FILE, ITEM_FILE, USER_FILE)

#: sha256 of the files as shipped in the recbole 1.2.1 wheel.
SHA256: dict[str, str] = {
    INTER_FILE: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    ITEM_FILE: "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    USER_FILE: "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_DATA_DIR = "recbole/dataset_example/ml-100k/"
SOURCE_ENV = "RECO_ML100K_SOURCE"
SESSION_GAP_S = 30 * 60
EVENT_ID_PREFIX = "ml100k"


class DataFileError(ValueError):
    """A data file is missing, corrupt or misformatted; the message names the file and line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = self.path.name if line is None else f"{self.path.name} line {line}"
        super().__init__(f"{where}: {message}")


class FetchError(RuntimeError):
    """The files could not be obtained (pip download failed, wheel without the files, ...)."""


@dataclass
class MovieLens:
    """MovieLens-100k as events (file order), item catalog and user table."""

    events: pd.DataFrame
    catalog: ItemCatalog
    users: pd.DataFrame

    def __repr__(self) -> str:
        return f"MovieLens({len(self.events)} events, {len(self.catalog)} items, {len(self.users)} users)"


# --------------------------------------------------------------------------- parsing


@dataclass
class _Atomic:
    """Columns of one atomic file as strings, with the file line of each row (for error messages)."""

    path: Path
    columns: dict[str, list[str]]
    lines: list[int]

    def error(self, row: int, message: str) -> DataFileError:
        return DataFileError(self.path, message, self.lines[row])

    def ids(self, name: str) -> np.ndarray:
        values = np.array(self.columns[name], dtype=object)
        empty = values == ""
        if empty.any():
            raise self.error(int(np.argmax(empty)), f"empty {name}")
        return values

    def numbers(self, name: str) -> np.ndarray:
        values = self.columns[name]
        try:
            out = np.array(values, dtype=np.float64)
        except ValueError:
            out = None
        if out is not None and np.isfinite(out).all():
            return out
        for row, v in enumerate(values):  # slow path only to locate the bad value
            try:
                if math.isfinite(float(v)):
                    continue
            except ValueError:
                pass
            raise self.error(row, f"{name} {v!r} is not a finite number")
        raise AssertionError("unreachable")  # pragma: no cover


def _read_atomic(path: Path, required: Sequence[str]) -> _Atomic:
    """Parse a RecBole atomic file, checking the header and the field count of every line."""
    if not path.is_file():
        raise DataFileError(path, f"file not found ({path})")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(path, "not valid UTF-8", data[: e.start].count(b"\n") + 1) from None
    lines = text.split("\n")
    if not lines[0].strip():
        raise DataFileError(path, "empty file: expected a header line", 1)
    header = lines[0].rstrip("\r").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    missing = [c for c in required if c not in names]
    if missing or len(set(names)) != len(names):
        raise DataFileError(
            path, f"bad header: expected columns {', '.join(required)} (tab-separated), got {lines[0][:200]!r}", 1
        )
    n = len(header)
    rows: list[list[str]] = []
    linenos: list[int] = []
    for i, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue  # blank lines (e.g. the file's trailing newline)
        parts = line.split("\t")
        if len(parts) != n:
            raise DataFileError(path, f"expected {n} tab-separated fields, got {len(parts)}", i)
        rows.append(parts)
        linenos.append(i)
    if not rows:
        raise DataFileError(path, "no data rows after the header")
    by_pos = list(zip(*rows, strict=True))
    return _Atomic(path, {c: list(by_pos[names.index(c)]) for c in required}, linenos)


def _check_unique(f: _Atomic, ids: np.ndarray, what: str) -> None:
    dup = pd.Index(ids).duplicated()
    if dup.any():
        row = int(np.argmax(dup))
        raise f.error(row, f"duplicate {what} {ids[row]!r}")


def _check_known(f: _Atomic, ids: np.ndarray, known: np.ndarray, what: str, other: str) -> None:
    unknown = ~pd.Index(ids).isin(known)
    if unknown.any():
        row = int(np.argmax(unknown))
        raise f.error(row, f"{what} {ids[row]!r} is not in {other}")


def _load_catalog(path: Path) -> ItemCatalog:
    f = _read_atomic(path, ["item_id", "movie_title", "release_year", "class"])
    ids = f.ids("item_id")
    _check_unique(f, ids, "item_id")
    # ML-100k has two non-years ("unkonwn", "V"): an unknown year is data, not an error.
    years = pd.to_numeric(pd.Series(f.columns["release_year"]), errors="coerce").astype("Int64")
    return ItemCatalog(
        pd.DataFrame(
            {
                "item_id": ids,
                "title": f.columns["movie_title"],
                "year": years,
                "genres": [g.split() for g in f.columns["class"]],
            }
        )
    )


def _load_users(path: Path) -> pd.DataFrame:
    f = _read_atomic(path, ["user_id", "age", "gender", "occupation", "zip_code"])
    ids = f.ids("user_id")
    _check_unique(f, ids, "user_id")
    ages = f.numbers("age")
    return pd.DataFrame(
        {
            "user_id": pd.Series(ids, dtype="str"),
            "age": pd.Series(ages.astype(np.int64), dtype="Int64"),
            "gender": pd.Series(f.columns["gender"], dtype="str"),
            "occupation": pd.Series(f.columns["occupation"], dtype="str"),
            "zip_code": pd.Series(f.columns["zip_code"], dtype="str"),
        }
    )


def session_index(user_codes: np.ndarray, ts: np.ndarray, gap: float = SESSION_GAP_S) -> np.ndarray:
    """Per-event session number k (0, 1, ... per user, in time order): a new session starts after a gap of
    more than `gap` seconds. Equal timestamps keep input order.

    >>> session_index(np.array([0, 0, 0, 1, 0]), np.array([0.0, 1800.0, 3601.0, 5.0, 3602.0])).tolist()
    [0, 0, 1, 0, 1]
    """
    n = len(ts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((ts, user_codes))  # stable: by user, then time, ties in input order
    u, t = user_codes[order], ts[order]
    user_start = np.r_[True, u[1:] != u[:-1]]
    new = user_start | np.r_[True, np.diff(t) > gap]
    count = np.cumsum(new)
    # count at the user's first event, carried forward over that user's block
    base = np.maximum.accumulate(np.where(user_start, count, 0))
    k = np.empty(n, dtype=np.int64)
    k[order] = count - base
    return k


def _events_table(path: Path, known_users: np.ndarray, known_items: np.ndarray) -> pa.Table:
    f = _read_atomic(path, ["user_id", "item_id", "rating", "timestamp"])
    users, items = f.ids("user_id"), f.ids("item_id")
    f.numbers("rating")  # validated, not stored (see module doc)
    ts = f.numbers("timestamp")
    _check_known(f, users, known_users, "user_id", USER_FILE)
    _check_known(f, items, known_items, "item_id", ITEM_FILE)
    event_ids = np.array([f"{EVENT_ID_PREFIX}-{u}-{i}" for u, i in zip(users, items, strict=True)], dtype=object)
    # event_id must be unique (it is the lake's idempotency key): a repeated rating would be dropped there.
    _check_unique(f, event_ids, "(user_id, item_id) rating")
    k = session_index(pd.factorize(users)[0], ts)
    n = len(ts)
    columns = {
        "event_id": pa.array(event_ids, pa.string()),
        "ts": pa.array(np.round(ts * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC")),
        "user_id": pa.array(users, pa.string()),
        "session_id": pa.array([f"{u}-{s}" for u, s in zip(users, k.tolist(), strict=True)], pa.string()),
        "item_id": pa.array(items, pa.string()),
        "event_type": pa.array(np.full(n, str(EventType.view), dtype=object), pa.string()),
    }
    arrays = [columns[fld.name] if fld.name in columns else pa.nulls(n, fld.type) for fld in EVENT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def _load(path: Path) -> tuple[pa.Table, ItemCatalog, pd.DataFrame]:
    path = Path(path)
    if not path.is_dir():
        raise DataFileError(path, f"MovieLens directory not found ({path})")
    catalog = _load_catalog(path / ITEM_FILE)
    users = _load_users(path / USER_FILE)
    table = _events_table(
        path / INTER_FILE, users["user_id"].to_numpy(dtype=object), np.array(catalog.item_ids, dtype=object)
    )
    return table, catalog, users


def load_movielens(path: str | Path) -> MovieLens:
    """Load the three atomic files of `path` (see the module doc for the event and session rules)."""
    table, catalog, users = _load(Path(path))
    return MovieLens(events=events_to_pandas(table), catalog=catalog, users=users)


def ingest_movielens(
    source: str | Path,
    lake: EventLake,
    start: date | None = None,
    end: date | None = None,
    *,
    on_partition: Callable[[date, int], None] | None = None,
) -> dict[date, int]:
    """Load MovieLens from `source` into `lake`, one partition per UTC day in `start`..`end` (inclusive).

    Each touched day's partition is rewritten, so a rerun produces identical partitions (and the same
    `lake.snapshot_id`). Returns rows written per day.
    """
    table, _, _ = _load(Path(source))
    days = pc.cast(table.column("ts"), pa.date32())
    if start is not None:
        table = table.filter(pc.greater_equal(days, pa.scalar(start, pa.date32())))
        days = pc.cast(table.column("ts"), pa.date32())
    if end is not None:
        table = table.filter(pc.less_equal(days, pa.scalar(end, pa.date32())))
    return lake.write_partitions(table, on_partition=on_partition)


# --------------------------------------------------------------------------- fetching


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(folder: str | Path) -> None:
    """Raise DataFileError unless every file is present in `folder` with its expected sha256."""
    folder = Path(folder)
    for name in FILES:
        path = folder / name
        if not path.is_file():
            raise DataFileError(path, f"file not found ({path})")
        got = file_sha256(path)
        if got != SHA256[name]:
            raise DataFileError(path, f"sha256 mismatch (expected {SHA256[name][:12]}..., got {got[:12]}...): corrupt")


def _is_verified(folder: Path) -> bool:
    try:
        verify_files(folder)
    except DataFileError:
        return False
    return True


def _download_wheel_files(into: Path, say: Callable[[str], None]) -> None:
    """`pip download --no-deps recbole==1.2.1` and extract the three files from the wheel."""
    wheel_dir = into / "wheel"
    say(f"downloading {RECBOLE_REQUIREMENT} from the package index (pip)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "--quiet", "-d", str(wheel_dir), RECBOLE_REQUIREMENT]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"pip download {RECBOLE_REQUIREMENT} failed: {e}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"pip download {RECBOLE_REQUIREMENT} failed (exit {proc.returncode}): {last}")
    wheels = sorted(wheel_dir.glob("recbole-*.whl"))
    if not wheels:
        raise FetchError(f"pip download {RECBOLE_REQUIREMENT} produced no wheel in {wheel_dir}")
    say(f"extracting {WHEEL_DATA_DIR} from {wheels[0].name}")
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in FILES:
                with zf.open(WHEEL_DATA_DIR + name) as src, open(into / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except KeyError as e:
        raise FetchError(f"{wheels[0].name} lacks {e.args[0]}") from None
    except zipfile.BadZipFile as e:
        raise FetchError(f"{wheels[0].name} is not a valid wheel: {e}") from None


def fetch_movielens(dest: str | Path, *, progress: bool = True) -> Path:
    """Obtain the ML-100k atomic files into `dest` and verify their sha256; returns `dest`.

    Idempotent: nothing is done when `dest` already holds verified files. With `RECO_ML100K_SOURCE` set
    to a folder holding the files, they are copied from there; otherwise they are extracted from the
    recbole 1.2.1 wheel, downloaded with pip (the only network access needed). Files land in `dest` only
    after verification (temp folder in `dest`, then rename), so a failed fetch leaves no partial files.
    """
    dest = Path(dest)
    say = _reporter(progress)
    if _is_verified(dest):
        say(f"{dest}: files present, sha256 verified")
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp_name:
        tmp = Path(tmp_name)
        source = os.environ.get(SOURCE_ENV)
        if source:
            say(f"copying from {source} ({SOURCE_ENV})")
            for name in FILES:
                src = Path(source) / name
                if not src.is_file():
                    raise DataFileError(src, f"file not found ({src}; set by {SOURCE_ENV})")
                shutil.copyfile(src, tmp / name)
        else:
            _download_wheel_files(tmp, say)
        say("verifying sha256")
        verify_files(tmp)
        for name in FILES:
            os.replace(tmp / name, dest / name)
    say(f"{dest}: {', '.join(FILES)} (sha256 verified)")
    return dest


def _reporter(progress: bool) -> Callable[[str], None]:
    if not progress:
        return lambda _msg: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda msg: console.print(f"[cyan]•[/cyan] {msg}", soft_wrap=True)
