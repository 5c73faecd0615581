"""The promotion gate on REAL trained models (tiny configs on synthetic sessions with a known sequential
pattern): a good model, one trained far fewer epochs and one trained on shuffled labels. The paired bootstrap
is checked against scipy; the gate rejects the bad candidates against the good champion (directly and
through the DAG's `evaluate` -> `gate` with an MLflow registry champion) and passes the reverse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from reco.offline import gate as G

N_ITEMS = 60
TINY = {"item_dim": 16, "hidden": 16, "attn_dim": 8, "mlp_dims": (16, 8), "category_dim": 4, "pop_dim": 4}


def _walks(n_users: int, seed: int, follow: float = 0.7) -> pd.DataFrame:
    """Each user's next item is the successor of the last one (cyclic) with probability `follow`, else any."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        cur, length = int(rng.integers(N_ITEMS)), int(rng.integers(12, 20))
        for t in range(length):
            rows.append((f"u{u}", f"i{1 + cur}", 1_000_000 + 3600 * t + u))
            cur = (cur + 1) % N_ITEMS if rng.random() < follow else int(rng.integers(N_ITEMS))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    ev["ts"] = pd.to_datetime(ev["ts"], unit="s", utc=True)
    return ev


@pytest.fixture(scope="module")
def models():
    """(events, split, {"good", "few_epochs", "shuffled"} bundles), all trained on the same training rows
    (the shuffled one with the item column permuted across rows: popularity kept, sequence signal gone)."""
    from reco.data.catalog import ItemCatalog
    from reco.offline.evaluation import leave_one_out
    from reco.offline.trainer import TrainConfig, train

    genres = ["Drama", "Comedy", "Action"]
    catalog = ItemCatalog.from_records([{"item_id": f"i{k}", "genres": [genres[k % 3]]} for k in range(1, N_ITEMS + 1)])
    events = _walks(300, seed=0)
    split = leave_one_out(events)
    rows = events.iloc[split.train_rows]
    base = {"epochs": 4, "batch_size": 8, "max_session_len": 8, "window_stride": 4, "n_negatives": 8, "lr": 1e-2,
            "threads": 1, "seed": 0, "model": TINY}  # fmt: skip
    shuffled = rows.copy()
    shuffled["item_id"] = np.random.default_rng(0).permutation(shuffled["item_id"].to_numpy())
    bundles = {
        "good": train(rows, catalog, TrainConfig(**base), progress=False).bundle,
        "few_epochs": train(rows, catalog, TrainConfig(**{**base, "epochs": 1, "lr": 1e-3}), progress=False).bundle,
        "shuffled": train(shuffled, catalog, TrainConfig(**base), progress=False).bundle,
    }
    return events, split, bundles


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


@pytest.mark.parametrize("bad", ["few_epochs", "shuffled"])
def test_gate_rejects_the_worse_real_model_and_passes_the_better(models, bad: str) -> None:
    _, split, bundles = models
    good_ranks, good_m = _ranks(bundles["good"], split)
    bad_ranks, bad_m = _ranks(bundles[bad], split)
    assert good_m["ndcg@10"] > 0.4 > bad_m["ndcg@10"]  # the good one learnt the pattern, the bad one did not
    worse = G.compare_ranks(bad_ranks, good_ranks)
    better = G.compare_ranks(good_ranks, bad_ranks)
    same = G.compare_ranks(good_ranks, good_ranks)
    assert worse["ndcg@10"]["ci"][1] < -G.DEFAULT_MARGIN and G.decide(worse["ndcg@10"], G.DEFAULT_MARGIN)
    assert better["ndcg@10"]["ci"][0] > 0 and G.decide(better["ndcg@10"], G.DEFAULT_MARGIN) is None
    assert same["ndcg@10"]["ci"] == [0.0, 0.0] and G.decide(same["ndcg@10"], 0.0) is None
    assert set(worse) == {"ndcg@10", "recall@10"}  # recall reported beside the gated metric
    assert worse["ndcg@10"]["candidate"] == pytest.approx(bad_m["ndcg@10"])
    assert worse["recall@10"]["champion"] == pytest.approx(good_m["recall@10"])
    assert worse["ndcg@10"]["n"] == len(split.sessions("test")[1])


def test_training_gate_decides_on_the_registered_champion(models, tmp_path) -> None:
    """Through the DAG's task functions: the good model is the registered champion; `evaluate` ranks the
    job's holdout with both (same users) and `gate` rejects the bad candidate with the interval in its
    reason, and passes it at a margin the interval cannot rule out."""
    from test_registry import lineage

    from reco.artifacts import registry
    from reco.pipeline import training_tasks as T

    events, _, bundles = models
    good, bad = bundles["good"], bundles["shuffled"]
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
