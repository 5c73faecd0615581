"""Training examples (chronology, every prefix once), determinism, learning, warm start."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reco.data.catalog import ItemCatalog
from reco.offline.evaluation import evaluate_bundle, leave_one_out, most_popular
from reco.offline.trainer import TrainConfig, WarmStartError, _new_model, build_examples, train, vocabulary, warm_start

N_ITEMS = 24
TINY = {"item_dim": 16, "hidden": 16, "attn_dim": 8, "mlp_dims": (16, 8), "category_dim": 4, "pop_dim": 4}


def _catalog(n: int = N_ITEMS) -> ItemCatalog:
    genres = ["Drama", "Comedy", "Action"]
    return ItemCatalog.from_records([{"item_id": f"i{k}", "genres": [genres[k % 3]]} for k in range(1, n + 1)])


def _walks(n_users: int = 40, seed: int = 0, n_items: int = N_ITEMS) -> pd.DataFrame:
    """Each user walks i_k -> i_{k+1} (cyclic): the next item is a function of the last one."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start, length = rng.integers(n_items), rng.integers(12, 20)
        for t in range(length):
            rows.append((f"u{u}", f"i{1 + (start + t) % n_items}", 1_000_000 + 3600 * t + u))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).sample(frac=1.0, random_state=seed)  # shuffled rows
    ev["ts"] = pd.to_datetime(ev["ts"], unit="s", utc=True)
    return ev.reset_index(drop=True)


def _config(**kw) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 8, "max_session_len": 8, "window_stride": 4, "n_negatives": 8,
            "threads": 1, "model": TINY}  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_build_examples_covers_every_prefix_once_in_time_order():
    ev = _walks(n_users=5)
    ids = vocabulary(_catalog(), ev)
    ex = build_examples(ev, ids, max_session_len=6, window_stride=3)
    assert ex.n_examples == len(ev) - ev.user_id.nunique()  # every prefix -> next item, exactly once
    n_owned = 0
    for w, t in zip(ex.windows, ex.targets, strict=True):
        for j in np.flatnonzero(t):
            # a walk: each input is followed by its successor, so any shuffled or leaked order would show
            assert all(w[k + 1] == w[k] % N_ITEMS + 1 for k in range(j))
            assert t[j] == w[j] % N_ITEMS + 1
            n_owned += 1
    assert n_owned == ex.n_examples
    # missing page -> home (row 1); missing device -> DEFAULT_DEVICE, in no device vocabulary (row 0), as at serving
    assert (ex.page[ex.targets > 0] == 1).all() and (ex.device[ex.targets > 0] == 0).all()


def test_build_examples_small_case_by_hand():
    ev = pd.DataFrame({"user_id": ["u"] * 7, "item_id": [f"i{k}" for k in range(1, 8)],
                       "ts": pd.to_datetime(range(7), unit="s", utc=True)})  # fmt: skip
    ex = build_examples(ev, vocabulary(_catalog(), ev), max_session_len=4, window_stride=2)
    assert ex.windows.tolist() == [[1, 2, 3, 4], [3, 4, 5, 6]]
    assert ex.targets.tolist() == [[2, 3, 4, 5], [0, 0, 6, 7]]  # 6 prefixes, each scored once


def test_same_seed_same_metrics_and_a_different_seed_differs():
    ev, cat = _walks(), _catalog()
    a = train(ev, cat, _config(seed=3), progress=False)
    b = train(ev, cat, _config(seed=3), progress=False)
    c = train(ev, cat, _config(seed=4), progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (k, va), vb in zip(a.bundle.model.state_dict().items(), b.bundle.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert a.history[-1]["loss"] != c.history[-1]["loss"]


def test_training_learns_the_sequential_pattern_and_keeps_the_best_epoch():
    ev, cat = _walks(n_users=60), _catalog()
    split = leave_one_out(ev)
    vs, vt, _ = split.sessions("valid")
    res = train(ev.iloc[split.train_rows], cat, _config(epochs=12, lr=1e-2), progress=False, validation=(vs, vt))
    best = max(h["valid_ndcg@10"] for h in res.history)
    assert res.metrics["valid_ndcg@10"] == best
    assert res.metrics["best_epoch"] == next(h["epoch"] for h in res.history if h["valid_ndcg@10"] == best)
    ts, tt, _ = split.sessions("test")
    model = evaluate_bundle(res.bundle, ts, tt)["all"]
    pop = most_popular(split.train, cat.item_ids, ts, tt)["all"]
    assert model["ndcg@10"] > 0.5 > pop["ndcg@10"]
    assert res.metrics["examples_per_s"] > 0 and res.metrics["n_examples"] == len(split.train_rows) - len(vs)


def _init_bundle():
    ev, cat = _walks(), _catalog(20)
    ev = ev[ev.item_id.isin(cat.item_ids)]
    return train(ev, cat, _config(epochs=1), progress=False).bundle


def test_warm_start_copies_known_rows_by_id_and_changes_nothing_before_training():
    init = _init_bundle()
    # the new catalogue lists the old items in reverse order and adds new items and a new category
    old = _catalog(20).items
    new = pd.concat([old.iloc[::-1], _catalog(N_ITEMS).items.iloc[20:]], ignore_index=True)
    new.loc[new.item_id == "i22", ["genres", "category"]] = pd.Series([["Western"], "Western"]).values
    cat = ItemCatalog(new)
    ev = _walks()
    ids = vocabulary(cat, ev)
    assert ids[1:3] == ["i20", "i19"]  # different positions than in init
    cfg = _config()
    model = warm_start(init, _new_model(cfg, len(ids), len(cat.categories) + 1), ids, cat.categories)
    old_emb, new_emb = init.model.item_emb.weight, model.item_emb.weight
    for iid in init.item_ids[1:]:
        assert torch.equal(new_emb[ids.index(iid)], old_emb[init.item_ids.index(iid)]), iid
    assert not torch.equal(new_emb[ids.index("i23")], torch.zeros(16))  # new rows are initialised
    old_state = init.model.state_dict()
    for k, v in model.state_dict().items():
        if k not in {"item_emb.weight", "cat_emb.weight", "item_category", "item_pop"}:
            assert torch.equal(v, old_state[k]), k
    from reco.artifacts.bundle import ModelBundle

    warm = ModelBundle(model, ids, cat, {"categories": cat.categories})
    known = [f"i{k}" for k in range(1, 21)]
    np.testing.assert_allclose(
        warm.score(["i3", "i4", "i5"], known).scores, init.score(["i3", "i4", "i5"], known).scores, atol=1e-5
    )
    # and a warm-started training run works and records its parent
    init.meta["version"] = "7"
    res = train(ev, cat, cfg, init=init, progress=False)
    assert res.bundle.meta["parent"] == "7" and res.bundle.meta["warm_start"]
    assert len(res.bundle.item_ids) == N_ITEMS + 1


def test_warm_start_with_another_architecture_is_a_clear_error():
    init = _init_bundle()
    with pytest.raises(WarmStartError, match="hidden: 16 -> 32"):
        train(_walks(), _catalog(), _config(model={**TINY, "hidden": 32}), init=init, progress=False)


def test_cli_trains_from_the_lake_and_evaluates_with_clear_errors(tmp_path):
    from typer.testing import CliRunner

    from reco.artifacts.bundle import ModelBundle
    from reco.cli import app
    from reco.data.lake import EventLake

    ev = _walks(n_users=12)
    ev["event_id"] = [f"e{k}" for k in range(len(ev))]
    ev["event_type"] = "view"
    impressions = ev.head(30).assign(event_id=lambda d: "imp-" + d.event_id, event_type="impression")
    EventLake(tmp_path / "lake").append(pd.concat([ev, impressions]))
    _catalog().to_parquet(tmp_path / "catalog.parquet")
    runner = CliRunner()
    args = ["train", "--lake", str(tmp_path / "lake"), "--catalog", str(tmp_path / "catalog.parquet"),
            "--out", str(tmp_path / "model"), "--epochs", "1", "--threads", "1"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "| reco | kept |" in res.output and "| MostPop | excluded |" in res.output
    bundle = ModelBundle.load(tmp_path / "model")
    assert bundle.meta["n_events"] == len(ev) - 2 * 12  # no impressions; each user's last 2 held out
    assert "test_metrics" in bundle.meta
    bad = runner.invoke(app, ["train", "--lake", str(tmp_path / "lake"), "--out", str(tmp_path / "m2")])
    assert bad.exit_code == 2 and "--catalog" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "nope"), "--data", str(tmp_path)])
    assert missing.exit_code == 2 and "model directory not found" in missing.output
