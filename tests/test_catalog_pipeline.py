"""A new item end to end: upserted (real Redis), served through cold start, its events pass Great Expectations,
and it is in the next trained model's vocabulary (the items table -> the pipeline's catalogue)."""

from __future__ import annotations

import pandas as pd
import pytest
from serving_helpers import tiny_bundle, tiny_catalog

from reco.data.catalog import ItemCatalog, ItemUpsert
from reco.data.events import EVENT_COLUMNS, Event
from reco.data.items import ItemsTable
from reco.data.lake import EventLake
from reco.data.validation import validate_events
from reco.offline.trainer import TrainConfig, train
from reco.pipeline import training_tasks as T
from reco.ranking.recommend import Recommender, RecoRequest, ServedModel
from reco.state.items import CatalogFollower, ItemStore, export_items
from reco.state.store import connect

pytestmark = pytest.mark.integration

TINY = {"item_dim": 8, "hidden": 8, "attn_dim": 8, "mlp_dims": (8, 4), "category_dim": 4, "pop_dim": 4}
DAY = "2026-01-01"


def _events() -> list[Event]:
    """Users who view a few catalogue items, then the new item."""
    out = []
    for u in range(12):
        for t, item in enumerate([str(1 + (u + k) % 40) for k in range(4)] + ["new-1"]):
            out.append(Event(event_id=f"e{u}-{t}", ts=f"{DAY}T{10 + t:02d}:{u:02d}:00Z", user_id=f"u{u}",
                             session_id=f"s{u}", item_id=item, event_type="view"))  # fmt: skip
    return out


def test_upserted_item_is_served_then_validated_and_in_the_next_vocabulary(tmp_path, redis_url, redis_prefix):
    client = connect(redis_url)
    try:
        store = ItemStore(client, redis_prefix)
        store.upsert([("new-1", ItemUpsert(title="Blue Shoe", categories=["Drama"], attributes={"colour": "blue"}))])
        follower = CatalogFollower(store)
        assert follower.poll() and not follower.poll()  # the second poll: nothing changed, one GET

        # Served through cold start: a row of its own, scored from content, offered by the new_items source.
        model = ServedModel.build(tiny_bundle(), "1", items=follower.records, catalog_version=follower.version)
        assert "new-1" in model.index and model.cold is not None and model.cold.uncertainty.max() > 0
        reco = Recommender(store=None, assign=lambda u: _Arm(), models=lambda arm: model)
        items = reco.recommend(RecoRequest("u-cold", limit=20)).items
        assert [(it.source, it.is_exploration) for it in items if it.item_id == "new-1"] == [("new_items", True)]

        # The pipeline: Redis -> the lake's items table -> the catalogue file GX and training read.
        home = tmp_path / "home"
        home.mkdir()
        tiny_catalog().to_parquet(home / "catalog.parquet")
        EventLake(home / "lake").write_partition(pd.Timestamp(DAY).date(), _events())
        landed = T.ingest(str(home), DAY, DAY, source="stream", redis_url=redis_url, redis_prefix=redis_prefix)
        assert landed["items"] == 1
        assert export_items(store, ItemsTable(home / "lake" / "items")) == 0  # idempotent: nothing new
        catalog = ItemCatalog.from_parquet(home / "catalog.parquet")  # what `validate` and `train` read
        assert catalog.category("new-1") == "Drama" and len(catalog) == 41
        # The validate task's suite (without its HTML data docs): GX knows the new item, nothing quarantined.
        frame = EventLake(home / "lake").read_pandas(columns=list(EVENT_COLUMNS))
        checked = validate_events(frame, DAY, "2026-01-02", catalog.item_ids, now=pd.Timestamp("2026-01-02", tz="UTC"))
        assert checked.result.bad_rows == 0 and (checked.clean["item_id"] == "new-1").sum() == 12
        before = validate_events(
            frame, DAY, "2026-01-02", tiny_catalog().item_ids, now=pd.Timestamp("2026-01-02", tz="UTC")
        )
        assert before.result.bad_rows == 12  # the same events against yesterday's catalogue: quarantined
        events = checked.clean
        config = TrainConfig(epochs=1, batch_size=8, max_session_len=8, window_stride=4, n_negatives=4, model=TINY)
        bundle = train(events, catalog, config, progress=False).bundle
        assert "new-1" in bundle.item_ids
    finally:
        client.close()


class _Arm:
    arm = "control"
    alias = "arm-control"

    class exploration:
        strategy = "none"
        rate = 0.0
