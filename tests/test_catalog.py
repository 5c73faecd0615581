"""ItemCatalog: lookups, category rule, Parquet round trip."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from reco.data.catalog import ItemCatalog

RECORDS = [
    {"item_id": "1", "title": "Toy Story", "year": 1995, "genres": ["Animation", "Children's", "Comedy"]},
    {"item_id": "267", "title": "unkonwn", "year": None, "genres": "unknown"},
    {"item_id": "9", "title": None, "genres": []},
    {"item_id": 42, "title": "Answer", "year": "1979", "genres": "Sci-Fi Comedy", "category": "Cult"},
]


@pytest.fixture
def catalog() -> ItemCatalog:
    return ItemCatalog.from_records(RECORDS)


def test_lookups(catalog: ItemCatalog) -> None:
    assert len(catalog) == 4
    assert catalog.item_ids == ["1", "267", "9", "42"]
    assert "42" in catalog and 42 not in catalog and "nope" not in catalog
    assert catalog.title("1") == "Toy Story" and catalog.title("9") is None and catalog.title("nope") is None
    assert catalog.genres("1") == ["Animation", "Children's", "Comedy"]
    assert catalog.genres("42") == ["Sci-Fi", "Comedy"]  # space-separated string, as in RecBole files
    assert catalog.genres("nope") == []
    assert catalog.year("1") == 1995 and catalog.year("42") == 1979 and catalog.year("267") is None


def test_category_is_first_genre_or_unknown(catalog: ItemCatalog) -> None:
    assert catalog.category("1") == "Animation"
    assert catalog.category("9") == "unknown"  # no genres
    assert catalog.category("42") == "Cult"  # explicit category wins
    assert catalog.category("not-an-item") == "unknown"
    assert catalog.categories_of(["1", "x", "267"]) == ["Animation", "unknown", "unknown"]
    assert catalog.categories == ["Animation", "Cult", "unknown"]


def test_column_types(catalog: ItemCatalog) -> None:
    items = catalog.items
    assert list(items.columns) == ["item_id", "title", "year", "genres", "category"]
    assert str(items["year"].dtype) == "Int64"
    assert all(isinstance(g, list) for g in items["genres"])


def test_parquet_round_trip(catalog: ItemCatalog, tmp_path: Path) -> None:
    catalog.to_parquet(tmp_path / "catalog.parquet")
    back = ItemCatalog.from_parquet(tmp_path / "catalog.parquet")
    assert back.to_records() == catalog.to_records()
    assert isinstance(back.genres("1"), list)  # not a numpy array
    pd.testing.assert_frame_equal(back.items, catalog.items)


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate item_id in catalog: '1'"):
        ItemCatalog.from_records([{"item_id": "1"}, {"item_id": 1}])
    with pytest.raises(ValueError, match="without item_id"):
        ItemCatalog.from_records([{"title": "x"}])
