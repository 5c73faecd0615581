"""Hand-off from the online learner to the training DAG, through the pipeline task functions (no Airflow)
and a real MLflow server: `reco_training` warm-starts from the newest good online snapshot of the arm's
current version and records it in lineage; the snapshot's run id is part of the job's fingerprint."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch
from serving_helpers import register_version, tiny_bundle, tiny_catalog

from reco.artifacts import registry
from reco.online.handoff import checkpoint_to_mlflow
from reco.online.model import state_to_bytes
from reco.pipeline import training_tasks as T

pytestmark = pytest.mark.integration

# The architecture of serving_helpers.tiny_bundle, so that the warm start is accepted. mlp_dims is a tuple:
# reco.offline.trainer compares architectures with ==, and a JSON list (16, 8) -> [16, 8] is refused.
MODEL = {"item_dim": 8, "hidden": 8, "attn_dim": 8, "category_dim": 4, "pop_dim": 4, "context_dim": 4,
         "mlp_dims": (16, 8)}  # fmt: skip


def _training_set(tmp_path, snapshot_id: str) -> dict:
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    rows = [
        {"event_id": f"e{u}-{k}", "ts": t0 + timedelta(minutes=10 * k + u), "user_id": f"u{u}",
         "session_id": f"s{u}", "item_id": str(int(rng.integers(1, 41))), "event_type": "view"}
        for u in range(20) for k in range(6)
    ]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "events.parquet", index=False)
    tiny_catalog(40).to_parquet(tmp_path / "catalog.parquet")
    return {"job_dir": str(tmp_path), "events": str(tmp_path / "events.parquet"),
            "catalog": str(tmp_path / "catalog.parquet"), "snapshot_id": snapshot_id, "rows": len(rows),
            "validation_id": "val-1", "validation_bad_rows": 0}  # fmt: skip


def _snapshot_state(seed: int) -> dict[str, torch.Tensor]:
    state = tiny_bundle(seed=0).model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {k: (v + 0.5 * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v
            for k, v in state.items()}  # fmt: skip


def test_training_warm_starts_from_the_online_snapshot_and_records_it(mlflow_server, tmp_path) -> None:
    name = f"handoff-{uuid.uuid4().hex[:8]}"
    client = registry.client_for(mlflow_server)
    parent = register_version(mlflow_server, name, tiny_bundle(seed=0), "base", ("arm-treatment",))
    assert T.online_parent(mlflow_server, name, "treatment", parent) is None  # learner never checkpointed

    snap = _snapshot_state(seed=1)
    run_a = checkpoint_to_mlflow(client, name, "treatment", state_to_bytes(snap), {"base_version": parent,
                                                                                  "snapshot": 5})  # fmt: skip
    # A newer snapshot on another base version (or arm) is not this arm's current hand-off.
    checkpoint_to_mlflow(client, name, "treatment", state_to_bytes(snap), {"base_version": "999", "snapshot": 9})
    checkpoint_to_mlflow(client, name, "control", state_to_bytes(snap), {"base_version": parent, "snapshot": 9})
    assert T.online_parent(mlflow_server, name, "treatment", parent) == run_a

    # The warm-start bundle is the parent version carrying the snapshot's weights.
    init, note = T._warm_init(client, name, parent, run_a)
    assert run_a in note
    assert all(torch.equal(init.model.state_dict()[k], v) for k, v in snap.items())

    ts = _training_set(tmp_path, "snap-data-1")
    cand = T.train(mlflow_server, name, "treatment", ts, epochs=1, config={"model": MODEL})
    assert cand["existing_version"] is None and cand["parent_version"] == parent
    assert cand["parent_online_run"] == run_a and run_a in cand["warm_start"]
    assert cand["fingerprint"] == registry.fingerprint("snap-data-1", cand["train_config"], parent, run_a)
    evaluation = {"skipped": False, "candidate": {"ndcg@10": 0.1}}
    reg = T.register(mlflow_server, name, ts, cand, evaluation, {"passed": True, "reason": "passed"}, {})
    tags = registry.get_version(client, name, reg["version"]).tags
    assert (tags["parent_version"], tags["parent_online_run"]) == (parent, run_a)
    assert tags["fingerprint"] == cand["fingerprint"]

    # A rerun with the same snapshot finds that version; a newer snapshot is a new job.
    again = T.train(mlflow_server, name, "treatment", ts, epochs=1, config={"model": MODEL})
    assert again["existing_version"] == reg["version"]
    run_b = checkpoint_to_mlflow(client, name, "treatment", state_to_bytes(_snapshot_state(seed=2)),
                                 {"base_version": parent, "snapshot": 6})  # fmt: skip
    assert T.online_parent(mlflow_server, name, "treatment", parent) == run_b
    assert registry.fingerprint("snap-data-1", cand["train_config"], parent, run_b) != cand["fingerprint"]
