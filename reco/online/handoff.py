"""Hand-off to the training DAG: the learner's last good snapshot per arm, kept in MLflow.

Each checkpoint is a finished MLflow run in the experiment `reco-online` with tags `registered_model`,
`arm`, `base_version` (the registry version the online weights started from), `snapshot` (accepted
updates since that base) and `status=good`, and two artifacts: `online/weights.pt` (a state_dict,
loadable with `torch.load(weights_only=True)` into the base version's architecture) and
`online/meta.json`. `reco_training` calls `latest_online_snapshot` to warm-start from it and records the
run id as the parent in lineage.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

ONLINE_EXPERIMENT = "reco-online"
WEIGHTS_ARTIFACT = "online/weights.pt"


def checkpoint_to_mlflow(client: Any, name: str, arm: str, blob: bytes, meta: dict[str, Any]) -> str:
    """Log one snapshot (weights bytes + meta) as a run; returns the run id."""
    from reco.registry import ensure_experiment

    exp_id = ensure_experiment(client, ONLINE_EXPERIMENT)
    tags = {
        "registered_model": name,
        "arm": arm,
        "base_version": str(meta.get("base_version", "")),
        "snapshot": str(meta.get("snapshot", "")),
        "status": "good",
    }
    run = client.create_run(exp_id, tags=tags, run_name=f"online-{arm}-v{tags['base_version']}-s{tags['snapshot']}")
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="reco-online-") as tmp:
        folder = Path(tmp) / "online"
        folder.mkdir()
        (folder / "weights.pt").write_bytes(blob)
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        client.log_artifacts(run_id, str(folder), "online")
    for key in ("holdout_logloss", "base_logloss"):
        if isinstance(meta.get(key), int | float):
            client.log_metric(run_id, key, float(meta[key]))
    client.set_terminated(run_id)
    return run_id


def latest_online_snapshot(
    client: Any, name: str, arm: str, dst: str | Path | None = None
) -> tuple[str, Path, str] | None:
    """The newest good online snapshot of `arm` for registered model `name`: (run_id, local path of
    weights.pt, base_version), or None when the learner never checkpointed one."""
    exp = client.get_experiment_by_name(ONLINE_EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.registered_model = '{name}' and tags.arm = '{arm}' and tags.status = 'good'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    dst = Path(dst or tempfile.mkdtemp(prefix="reco-online-"))
    local = client.download_artifacts(run.info.run_id, WEIGHTS_ARTIFACT, str(dst))
    return run.info.run_id, Path(local), run.data.tags["base_version"]


class MlflowCheckpointer:
    """`OnlineLearner(checkpoint=...)` callback writing to a tracking URI (client created lazily)."""

    def __init__(self, tracking_uri: str, name: str):
        self.tracking_uri = tracking_uri
        self.name = name
        self._client: Any = None

    def __call__(self, arm: str, blob: bytes, meta: dict[str, Any]) -> None:
        if self._client is None:
            from reco.registry import client_for

            self._client = client_for(self.tracking_uri)
        checkpoint_to_mlflow(self._client, self.name, arm, blob, meta)
