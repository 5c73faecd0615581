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
    from reco.artifacts.registry import ensure_experiment

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


def latest_online_run(client: Any, name: str, arm: str, base_version: str | None = None) -> tuple[str, str] | None:
    """(run_id, base_version) of the newest good online snapshot of `arm` (only those on `base_version`
    when given), without downloading anything; None when there is none."""
    exp = client.get_experiment_by_name(ONLINE_EXPERIMENT)
    if exp is None:
        return None
    query = f"tags.registered_model = '{name}' and tags.arm = '{arm}' and tags.status = 'good'"
    if base_version is not None:
        query += f" and tags.base_version = '{base_version}'"
    runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=1)  # fmt: skip
    if not runs:
        return None
    return runs[0].info.run_id, runs[0].data.tags["base_version"]


def download_online_weights(client: Any, run_id: str, dst: str | Path | None = None) -> Path:
    """Local path of a checkpoint run's `online/weights.pt` (load with `torch.load(weights_only=True)`)."""
    dst = Path(dst or tempfile.mkdtemp(prefix="reco-online-"))
    return Path(client.download_artifacts(run_id, WEIGHTS_ARTIFACT, str(dst)))


def latest_online_snapshot(
    client: Any, name: str, arm: str, dst: str | Path | None = None, base_version: str | None = None
) -> tuple[str, Path, str] | None:
    """The newest good online snapshot of `arm` for registered model `name`: (run_id, local path of
    weights.pt, base_version), or None when the learner never checkpointed one."""
    found = latest_online_run(client, name, arm, base_version)
    if found is None:
        return None
    run_id, base = found
    return run_id, download_online_weights(client, run_id, dst), base


class MlflowCheckpointer:
    """`OnlineLearner(checkpoint=...)` callback writing to a tracking URI (client created lazily)."""

    def __init__(self, tracking_uri: str, name: str):
        self.tracking_uri = tracking_uri
        self.name = name
        self._client: Any = None

    def __call__(self, arm: str, blob: bytes, meta: dict[str, Any]) -> None:
        if self._client is None:
            from reco.artifacts.registry import client_for

            self._client = client_for(self.tracking_uri)
        checkpoint_to_mlflow(self._client, self.name, arm, blob, meta)


class RegistryBases:
    """`OnlineLearner(rebase=...)` callback: the registry version each arm's alias points at now.

    `aliases` maps arm -> registry alias; `make_learner(bundle, version)` builds the `ArmLearner` of a
    newly aliased version (same learning parameters as the others). Called every `base_poll_s` by the
    learner: one alias lookup per arm, a download only when the alias moved.
    """

    def __init__(self, tracking_uri: str, name: str, aliases: dict[str, str], make_learner: Any):
        self.tracking_uri = tracking_uri
        self.name = name
        self.aliases = dict(aliases)
        self.make_learner = make_learner
        self._client: Any = None

    def __call__(self, arm: str, current_version: str) -> Any:
        from reco.artifacts import registry

        if self._client is None:
            self._client = registry.client_for(self.tracking_uri)
        mv = registry.alias_version(self._client, self.name, self.aliases[arm])
        if mv is None or str(mv.version) == str(current_version):
            return None
        bundle, mv = registry.load_bundle(self._client, self.name, str(mv.version))
        return self.make_learner(bundle, str(mv.version))
