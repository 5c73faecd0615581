"""The lake's items table: every catalogue version of every item, append-only (its history).

Layout: `<lake>/items/date=YYYY-MM-DD/part-0.parquet`, by the UTC day of `updated_at`; one row per
(item_id, version), so re-exporting is harmless (`append` keeps the first row of a key). `latest()` is the
catalogue as of now (the newest version of each item), `history(item_id)` an item's versions. The event
lake reads only its own `date=` folders at its root, so this folder beside them is never read as events.

The training pipeline merges `latest()` into the catalogue file it trains and validates with
(`reco.pipeline.training_tasks`), so an item upserted through the API joins the next model's vocabulary.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reco.data.catalog import ItemRecord

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("updated_at", pa.string()),
        pa.field("title", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("attributes", pa.string()),  # JSON object
        pa.field("available", pa.bool_(), nullable=False),
    ]
)
PART_FILE = "part-0.parquet"


class ItemsTable:
    """Append-with-version Parquet table of item records.

    >>> import tempfile
    >>> t = ItemsTable(tempfile.mkdtemp())
    >>> r1 = ItemRecord(item_id="9", title="Shoe", version=1, updated_at="2026-01-01T00:00:00Z")
    >>> r2 = r1.model_copy(update={"available": False, "version": 2})
    >>> t.append([r1, r2]), t.append([r1])
    (2, 0)
    >>> t.latest()["9"].available, [r.version for r in t.history("9")], t.max_version()
    (False, [1, 2], 2)
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _files(self) -> list[Path]:
        return sorted(self.root.glob(f"date=*/{PART_FILE}")) if self.root.is_dir() else []

    def read(self) -> pa.Table:
        files = self._files()
        if not files:
            return ITEMS_SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(f, schema=ITEMS_SCHEMA) for f in files])

    def append(self, records: Iterable[ItemRecord]) -> int:
        """Store the records whose (item_id, version) is new; returns how many were."""
        by_day: dict[str, list[ItemRecord]] = {}
        for r in records:
            by_day.setdefault((r.updated_at or "1970-01-01")[:10], []).append(r)
        added = 0
        for day, recs in sorted(by_day.items()):
            with self._locked(day) as folder:
                path = folder / PART_FILE
                old = pq.read_table(path, schema=ITEMS_SCHEMA) if path.is_file() else ITEMS_SCHEMA.empty_table()
                have = set(zip(old.column("item_id").to_pylist(), old.column("version").to_pylist(), strict=True))
                keyed = {(r.item_id, r.version): r for r in recs}
                new = [r for key, r in keyed.items() if key not in have]
                if not new:
                    continue
                _atomic_write(pa.concat_tables([old, _table(new)]), folder)
                added += len(new)
        return added

    def max_version(self) -> int:
        table = self.read()
        return int(pc.max(table.column("version")).as_py() or 0) if table.num_rows else 0

    def latest(self) -> dict[str, ItemRecord]:
        """item_id -> its newest record."""
        out: dict[str, ItemRecord] = {}
        for r in sorted(_records(self.read()), key=lambda r: r.version):
            out[r.item_id] = r
        return out

    def history(self, item_id: str) -> list[ItemRecord]:
        table = self.read()
        table = table.filter(pc.equal(table.column("item_id"), item_id))
        return sorted(_records(table), key=lambda r: r.version)

    @contextlib.contextmanager
    def _locked(self, day: str) -> Iterator[Path]:
        folder = self.root / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as fh:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield folder


def _table(records: list[ItemRecord]) -> pa.Table:
    return pa.table(
        {
            "item_id": [r.item_id for r in records],
            "version": [r.version for r in records],
            "updated_at": [r.updated_at for r in records],
            "title": [r.title for r in records],
            "categories": [list(r.categories) for r in records],
            "attributes": [json.dumps(r.attributes, sort_keys=True) for r in records],
            "available": [r.available for r in records],
        },
        schema=ITEMS_SCHEMA,
    )


def _records(table: pa.Table) -> list[ItemRecord]:
    return [
        ItemRecord(
            item_id=row["item_id"],
            version=row["version"],
            updated_at=row["updated_at"],
            title=row["title"],
            categories=row["categories"] or [],
            attributes=json.loads(row["attributes"] or "{}"),
            available=row["available"],
        )
        for row in table.to_pylist()
    ]


def _atomic_write(table: pa.Table, folder: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".part-0.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / PART_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def merge_into_catalog(catalog_path: str | Path, table: ItemsTable) -> int:
    """Merge the table's latest records into the catalogue file the pipeline trains and validates with
    (`reco.data.catalog.with_items`; written atomically). Returns the number of records merged."""
    from reco.data.catalog import ItemCatalog, with_items

    latest = table.latest()
    if not latest:
        return 0
    path = Path(catalog_path)
    base = ItemCatalog.from_parquet(path) if path.is_file() else ItemCatalog.from_records([])
    merged = with_items(base, latest.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    merged.to_parquet(tmp)
    os.replace(tmp, path)
    return len(latest)
