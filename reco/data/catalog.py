"""`ItemCatalog`: item metadata (title, release year, genres) with O(1) lookups by item id.

The ranker uses `category` (the first genre) as an item side feature and serving uses titles to explain,
so the catalog travels with every model bundle (`to_parquet` / `from_parquet`).

`ItemUpsert` / `ItemRecord` are the catalogue API's item (title, categories, free attributes,
`available`): validated here, stored in Redis (`reco.state.items`) and in the lake's items table
(`reco.data.items`); `with_items` merges upserted records into a catalog (the next training run's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

UNKNOWN_CATEGORY = "unknown"
CATALOG_COLUMNS = ("item_id", "title", "year", "genres", "category")
_ARROW_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("year", pa.int64()),
        pa.field("genres", pa.list_(pa.string())),
        pa.field("category", pa.string(), nullable=False),
    ]
)


def _genre_list(value: Any) -> list[str]:
    """Genres as a list: accepts a list/array, a space-separated string (RecBole `token_seq`) or nothing."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    if isinstance(value, str):
        return value.split()
    return [str(g) for g in value]


# eq=False: a DataFrame field has no truth value, so identity equality (and hashing) is the only sane default.
@dataclass(frozen=True, eq=False)
class ItemCatalog:
    """Item metadata, one row per item; `category` is the first genre (or "unknown").

    >>> cat = ItemCatalog.from_records([{"item_id": "1", "title": "Toy Story", "year": 1995,
    ...                                  "genres": ["Animation", "Comedy"]}])
    >>> len(cat), "1" in cat, cat.title("1"), cat.category("1"), cat.category("nope")
    (1, True, 'Toy Story', 'Animation', 'unknown')
    """

    items: pd.DataFrame
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        items = _normalise(self.items)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "_index", {iid: i for i, iid in enumerate(items["item_id"])})

    @property
    def item_ids(self) -> list[str]:
        return list(self._index)

    @property
    def categories(self) -> list[str]:
        """Distinct categories, sorted (a stable vocabulary for embedding tables)."""
        return sorted(set(self.items["category"]))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def __repr__(self) -> str:
        return f"ItemCatalog({len(self)} items, {len(self.categories)} categories)"

    def _row(self, item_id: str) -> int | None:
        return self._index.get(item_id)

    def title(self, item_id: str) -> str | None:
        i = self._row(item_id)
        if i is None:
            return None
        title = self.items["title"].iat[i]
        return None if pd.isna(title) else str(title)

    def year(self, item_id: str) -> int | None:
        i = self._row(item_id)
        if i is None:
            return None
        year = self.items["year"].iat[i]
        return None if pd.isna(year) else int(year)

    def category(self, item_id: str) -> str:
        i = self._row(item_id)
        return UNKNOWN_CATEGORY if i is None else str(self.items["category"].iat[i])

    def categories_of(self, item_ids: Iterable[str]) -> list[str]:
        """`category` for many ids at once ("unknown" for ids not in the catalog)."""
        cats = self.items["category"].tolist()
        return [UNKNOWN_CATEGORY if (i := self._index.get(iid)) is None else cats[i] for iid in item_ids]

    def genres(self, item_id: str) -> list[str]:
        i = self._row(item_id)
        return [] if i is None else list(self.items["genres"].iat[i])

    def to_records(self) -> list[dict[str, Any]]:
        """Plain JSON-able dicts (year None when unknown)."""
        return [
            {"item_id": iid, "title": self.title(iid), "year": self.year(iid), "genres": self.genres(iid),
             "category": self.category(iid)}
            for iid in self._index
        ]  # fmt: skip

    def to_arrow(self) -> pa.Table:
        df = self.items
        return pa.table(
            {
                "item_id": df["item_id"].tolist(),
                "title": [None if pd.isna(t) else t for t in df["title"]],
                "year": [None if pd.isna(y) else int(y) for y in df["year"]],
                "genres": [list(g) for g in df["genres"]],
                "category": df["category"].tolist(),
            },
            schema=_ARROW_SCHEMA,
        )

    def to_parquet(self, path: str | Path) -> None:
        pq.write_table(self.to_arrow(), str(path))

    @classmethod
    def from_parquet(cls, path: str | Path) -> ItemCatalog:
        # Through pylist, not pandas: pandas would turn the genre lists into numpy arrays.
        return cls.from_records(pq.read_table(str(path)).to_pylist())

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> ItemCatalog:
        """Build from dicts with `item_id` and optionally `title`, `year`, `genres` (list or space-separated
        string), `category` (derived from the first genre when absent)."""
        rows = []
        for r in records:
            if r.get("item_id") is None:
                raise ValueError(f"catalog record without item_id: {dict(r)!r}")
            rows.append(
                {
                    "item_id": r["item_id"],
                    "title": r.get("title"),
                    "year": r.get("year"),
                    "genres": _genre_list(r.get("genres")),
                    "category": r.get("category"),
                }
            )
        return cls(pd.DataFrame(rows, columns=list(CATALOG_COLUMNS)))


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce to the documented column types and check that item ids are unique."""
    if "item_id" not in df.columns:
        raise ValueError("catalog needs an 'item_id' column")
    n = len(df)
    out = pd.DataFrame(index=pd.RangeIndex(n))
    out["item_id"] = df["item_id"].astype(str).to_numpy()
    titles = df["title"] if "title" in df.columns else pd.Series([None] * n)
    out["title"] = pd.Series(titles.to_numpy(), dtype="str")
    years = df["year"] if "year" in df.columns else pd.Series([None] * n)
    out["year"] = pd.to_numeric(pd.Series(years.to_numpy()), errors="coerce").astype("Int64")
    genres = df["genres"] if "genres" in df.columns else pd.Series([None] * n)
    out["genres"] = pd.Series([_genre_list(g) for g in genres], dtype=object)
    given = df["category"].tolist() if "category" in df.columns else [None] * n
    cats = [
        c if isinstance(c, str) and c else (g[0] if g else UNKNOWN_CATEGORY)
        for c, g in zip(given, out["genres"], strict=True)
    ]
    out["category"] = pd.Series(cats, dtype="str")
    dup = out["item_id"].duplicated()
    if dup.any():
        raise ValueError(f"duplicate item_id in catalog: {out['item_id'][dup].iloc[0]!r}")
    return out


# --- the catalogue API's item ------------------------------------------------------------------------

ItemId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s<>]+$")]
_Short = Annotated[str, Field(min_length=1, max_length=64)]
AttributeValue = Annotated[str, Field(max_length=256)] | bool | int | float


class ItemUpsert(BaseModel):
    """The body of `PUT /v1/items/{item_id}`: everything but the id. Unknown fields are refused.

    >>> ItemUpsert(title="Blue Shoe", categories=["Shoes"], attributes={"colour": "blue"}).category
    'Shoes'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: Annotated[str, Field(max_length=512)] | None = None
    categories: list[_Short] = Field(default_factory=list, max_length=20, description="first = main category")
    attributes: dict[_Short, AttributeValue] = Field(default_factory=dict, max_length=50)
    available: bool = Field(True, description="False: never served again (after the API's next catalogue poll)")

    @field_validator("attributes")
    @classmethod
    def _finite(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k, v in value.items() if (isinstance(v, float) and v != v) or v in (float("inf"), float("-inf"))]
        if bad:
            raise ValueError(f"attribute {bad[0]!r} is not a finite number")
        return value

    @property
    def category(self) -> str:
        return self.categories[0] if self.categories else UNKNOWN_CATEGORY

    def content_json(self) -> str:
        """Canonical JSON of the content (sorted keys, no spaces): equal content, equal text (idempotency)."""
        return _canonical(self.model_dump(include=set(_CONTENT)))


_CONTENT = ("title", "categories", "attributes", "available")


def _canonical(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ItemRecord(ItemUpsert):
    """A stored item: its id, plus the catalogue version that last changed it and when (UTC ISO)."""

    item_id: ItemId
    version: int = 0
    updated_at: str | None = None

    def content(self) -> ItemUpsert:
        return ItemUpsert(**self.model_dump(include=set(_CONTENT)))


def with_items(catalog: ItemCatalog, records: Iterable[ItemRecord]) -> ItemCatalog:
    """`catalog` with the upserted records merged in: new ids appended (in the order given), known ids take
    the record's title and categories (the year of the base catalog is kept). Unavailable items stay: the
    vocabulary keeps them (their events still train), serving just does not show them.

    >>> base = ItemCatalog.from_records([{"item_id": "1", "title": "A", "year": 1995, "genres": ["Drama"]}])
    >>> cat = with_items(base, [ItemRecord(item_id="9", title="New", categories=["Shoes"])])
    >>> cat.item_ids, cat.category("9"), cat.year("1")
    (['1', '9'], 'Shoes', 1995)
    """
    rows = {r["item_id"]: r for r in catalog.to_records()}
    for rec in records:
        old = rows.get(rec.item_id, {})
        rows[rec.item_id] = {"item_id": rec.item_id, "title": rec.title, "year": old.get("year"),
                             "genres": list(rec.categories), "category": rec.category}  # fmt: skip
    return ItemCatalog.from_records(rows.values())
