"""The promotion gate on two REAL trained models (tiny configs, a slice of MovieLens-100k): a good one and
one trained on randomised labels. The paired bootstrap is checked against scipy; the gate rejects the bad
candidate against the good champion through `evaluate` (MLflow registry on SQLite) and passes the reverse."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from reco.offline import gate as G

TINY = {"item_dim": 16, "hidden": 16, "attn_dim": 16, "mlp_dims": (16,), "gru_layers": 1}


@pytest.fixture(scope="module")
def models(movielens_dir, tmp_path_factory):
    """(events, catalog, good bundle, bad bundle): the first 150 users of ML-100k; the bad model sees the
    same rows with every item replaced by a uniformly random one (the labels carry no signal)."""
    from reco.data.movielens import load_movielens
    from reco.offline.evaluation import leave_one_out
    from reco.offline.trainer import TrainConfig, interactions, train

    ml = load_movielens(movielens_dir)
    events = interactions(ml.events)
    events = events[events["user_id"].isin(events["user_id"].unique()[:150])].reset_index(drop=True)
    split = leave_one_out(events)
    rows = events.iloc[split.train_rows]
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2, n_negatives=16, seed=0, model=TINY)
    good = train(rows, ml.catalog, cfg, progress=False).bundle
    noise = rows.copy()
    noise["item_id"] = np.random.default_rng(0).choice(events["item_id"].unique(), size=len(rows))
    bad = train(noise, ml.catalog, cfg, progress=False).bundle
    return events, ml.catalog, split, good, bad


def _ranks(bundle, split):
    from reco.offline.evaluation import evaluate_bundle

    sessions, targets, _ = split.sessions("test")
    out: dict = {}
    metrics = evaluate_bundle(bundle, sessions, targets, per_user=out)["all"]
    return out["all"], metrics


def test_paired_bootstrap_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    champ = rng.exponential(0.1, 400) * (rng.random(400) < 0.3)
    cand = champ * 0.9 + rng.normal(0, 0.02, 400).clip(0)
    ours = G.paired_bootstrap("m", cand, champ, n_resamples=4000, seed=3)
    ref = st.bootstrap((cand, champ), lambda c, h, axis: c.mean(axis) / h.mean(axis) - 1, paired=True,
                       vectorized=True, n_resamples=4000, method="percentile",
                       rng=np.random.default_rng(4))  # fmt: skip
    assert ours.relative_change == pytest.approx(cand.mean() / champ.mean() - 1)
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert ours.ci[0] == pytest.approx(ref.confidence_interval.low, abs=0.05 * width)
    assert ours.ci[1] == pytest.approx(ref.confidence_interval.high, abs=0.05 * width)
    zero = G.paired_bootstrap("m", np.ones(5), np.zeros(5))
    assert np.isnan(zero.relative_change) and G.decide(zero.as_dict(), 0.05) is None  # undefined: no rejection


def test_gate_rejects_the_worse_real_model_and_passes_the_better(models) -> None:
    _, _, split, good, bad = models
    good_ranks, good_m = _ranks(good, split)
    bad_ranks, bad_m = _ranks(bad, split)
    assert good_m["ndcg@10"] > bad_m["ndcg@10"]  # the randomised-label model really is worse
    worse = G.compare_ranks(bad_ranks, good_ranks)
    better = G.compare_ranks(good_ranks, bad_ranks)
    same = G.compare_ranks(good_ranks, good_ranks)
    assert worse["ndcg@10"]["ci"][1] < -G.DEFAULT_MARGIN and G.decide(worse["ndcg@10"], G.DEFAULT_MARGIN)
    assert G.decide(better["ndcg@10"], G.DEFAULT_MARGIN) is None  # (vs a champion at ~0: +inf or undefined)
    assert better["ndcg@10"]["candidate"] > better["ndcg@10"]["champion"]
    assert same["ndcg@10"]["ci"] == [0.0, 0.0] and G.decide(same["ndcg@10"], 0.0) is None
    assert set(worse) == {"ndcg@10", "recall@10"}  # recall reported beside the gated metric
    assert worse["ndcg@10"]["candidate"] == pytest.approx(bad_m["ndcg@10"])
    assert worse["ndcg@10"]["n"] == len(split.sessions("test")[1])


def test_training_gate_decides_on_the_registered_champion(models, tmp_path) -> None:
    """Through the DAG's task functions: the good model is the registered champion; `evaluate` ranks the
    job's holdout with both (same users) and `gate` rejects the bad candidate with the interval in its
    reason, and passes it at a margin the interval cannot rule out."""
    from test_registry import lineage

    from reco.artifacts import registry
    from reco.pipeline import training_tasks as T

    events, _, _, good, bad = models
    uri, name = f"sqlite:///{tmp_path}/mlflow.db", "gate-test"
    client = registry.client_for(uri)
    registry.ensure_registered_model(client, name)
    run = client.create_run(registry.ensure_experiment(client, "gate-test")).info.run_id
    mv = registry.log_bundle(client, name, good, lineage(), run_id=run)
    registry.promote(client, name, registry.CHAMPION, mv.version, who="test", reason="champion")
    events.to_parquet(tmp_path / "events.parquet", index=False)
    bad.save(tmp_path / "cand")
    tset = {"events": str(tmp_path / "events.parquet")}
    evaluation = T.evaluate(uri, name, tset, {"candidate_dir": str(tmp_path / "cand")})
    assert evaluation["champion_version"] == str(mv.version) and evaluation["offpolicy"]["status"] == "none"
    cmp = evaluation["comparison"]["ndcg@10"]
    assert cmp["candidate"] < cmp["champion"] and cmp["ci"][1] < -0.05
    verdict = T.gate({"candidate_dir": str(tmp_path / "cand")}, evaluation)
    assert not verdict["passed"] and f"champion v{mv.version}: ndcg@10" in verdict["reason"]
    assert verdict["comparison"]["recall@10"].startswith("recall@10 ")
    lenient = T.gate({"candidate_dir": str(tmp_path / "cand")}, evaluation, margin=1.0)
    assert lenient["passed"], lenient
