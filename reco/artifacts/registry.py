"""MLflow registry glue: log, register, find, load and alias `ModelBundle`s.

One registered model holds the ranker (name from `RecoSettings.registered_model`). A version's
artifact is an MLflow pyfunc model whose `artifacts/bundle/` is the saved `ModelBundle` directory
(config.json, weights.pt state_dict, items.json, catalog.parquet, meta.json) plus
`item_embeddings.npy`; loading downloads that directory and calls `ModelBundle.load` (torch
`weights_only=True`): model weights are never unpickled. The pyfunc wrapper's class is referenced
by module path, so `mlflow models serve` can run a version too.

Each version is an MLflow 3 LoggedModel (the pyfunc directory, with a signature and an input example,
linked to the training run), registered with a description saying what changed, on which data and what
the gate said. The run holds the training config as params, the per-epoch curves (loss, validation
metrics) as metric steps, the evaluation metrics, and the training data as an MLflow dataset input
(`TrainingData`: the lake partition's source, schema, profile and digest).

Aliases, not stages: `champion` and `arm-<name>`. Every move records who/why/previous version on the
version and as one tag of the model's alias-history run (`move.<alias>.<ns>`, JSON; the registered model
tag `alias-history-run` names the run), which is what `alias_history` and `rollback` read. A run holds any
number of tags, so the history is unbounded (the former single registered-model tag, capped at 5,000
characters, held about 28 moves; it is still read, as the oldest part of the history). Each version
carries lineage tags (see `Lineage`) and a `fingerprint` tag: the hash of data snapshot + training config
+ parent version, so a rerun finds its version instead of adding one.

Every function takes an `MlflowClient` (or builds one from a URI with `client_for`); nothing touches
MLflow's global tracking URI, so the same code runs against a tracking server and a `sqlite:///` URI.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from reco.data.events import DEFAULT_DEVICE

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow import MlflowClient
    from reco.artifacts.bundle import ModelBundle

CHAMPION = "champion"
ARTIFACT_PATH = "model"
BUNDLE_ARTIFACT = "bundle"
HISTORY_TAG = "alias-history.{alias}"  # legacy: one registered-model tag per alias (read, no longer written)
HISTORY_RUN_TAG = "alias-history-run"  # registered-model tag: id of the run whose tags are the moves
HISTORY_EXPERIMENT = "reco-registry"
MOVE_TAG = "move.{alias}.{seq:020d}"
MODEL_NAME_IN_RUN = "ranker"  # the LoggedModel's name


class RegistryError(LookupError):
    """A model version or alias that does not exist, or an alias that cannot be moved."""


def arm_alias(arm: str) -> str:
    """Alias of an experiment arm.

    >>> arm_alias("treatment")
    'arm-treatment'
    """
    return f"arm-{arm}"


def client_for(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def code_revision(repo: Path | None = None) -> str:
    """The git commit of the code (or "unknown" outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def fingerprint(
    snapshot_id: str, config: Mapping[str, Any], parent_version: str | None, parent_online_run: str | None = None
) -> str:
    """Identity of a training job: same data + config + warm-start parent (+ the online snapshot the
    weights came from, when there was one) -> same fingerprint.

    >>> fingerprint("s1", {"epochs": 1}, None) == fingerprint("s1", {"epochs": 1}, None)
    True
    >>> fingerprint("s1", {"epochs": 1}, None) == fingerprint("s1", {"epochs": 1}, "3")
    False
    >>> fingerprint("s1", {"epochs": 1}, "3") == fingerprint("s1", {"epochs": 1}, "3", "run-a")
    False
    """
    doc: dict[str, Any] = {"snapshot": snapshot_id, "config": config, "parent": parent_version}
    if parent_online_run:  # absent otherwise, so fingerprints of versions without one are unchanged
        doc["parent_online_run"] = parent_online_run
    blob = json.dumps(doc, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Lineage:
    """What every registered version says about where it came from."""

    data_snapshot_id: str
    data_rows: int
    validation_id: str
    validation_bad_rows: int
    parent_version: str | None
    metrics: Mapping[str, float]
    train_config: Mapping[str, Any]
    code_revision: str = "unknown"
    extra: Mapping[str, str] = field(default_factory=dict)
    parent_online_run: str | None = None  # MLflow run id of the online snapshot the weights started from

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.data_snapshot_id, self.train_config, self.parent_version, self.parent_online_run)

    def tags(self) -> dict[str, str]:
        tags = {
            "data_snapshot_id": self.data_snapshot_id,
            "data_rows": str(self.data_rows),
            "validation_id": self.validation_id,
            "validation_bad_rows": str(self.validation_bad_rows),
            "parent_version": self.parent_version or "none",
            "code_revision": self.code_revision,
            "train_config": json.dumps(dict(self.train_config), sort_keys=True, default=str),
            "metrics": json.dumps({k: float(v) for k, v in self.metrics.items()}, sort_keys=True),
            "fingerprint": self.fingerprint,
        }
        if self.parent_online_run:
            tags["parent_online_run"] = self.parent_online_run
        tags.update({f"metric.{metric_name(k)}": _num(v) for k, v in self.metrics.items()})
        tags.update(self.extra)
        return tags


def metric_name(key: str) -> str:
    """MLflow metric names allow no "@".

    >>> metric_name("ndcg@10")
    'ndcg_at_10'
    """
    return key.replace("@", "_at_")


def _num(v: float) -> str:
    return "nan" if v != v else f"{float(v):.6g}"


LINEAGE_TAGS = (
    "data_snapshot_id",
    "data_rows",
    "validation_id",
    "validation_bad_rows",
    "parent_version",
    "code_revision",
    "train_config",
    "metrics",
    "fingerprint",
)


# --------------------------------------------------------------------------- pyfunc wrapper


class RankerPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of a bundle: one row per request (session items, candidates) -> candidate scores."""

    def load_context(self, context: Any) -> None:
        from reco.artifacts.bundle import ModelBundle

        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT])
        self.scorer = self.bundle.frozen_scorer()  # the server's scorer: same scores, precomputed item tables

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        out = []
        index_of = self.bundle.index_of
        for row in model_input.to_dict("records"):
            page = row.get("page_type") or "home"
            device = row.get("device") or DEFAULT_DEVICE
            res = self.scorer.score(index_of(list(row["session_item_ids"])), index_of(list(row["candidate_item_ids"])),
                                    page, device)  # fmt: skip
            out.append(res.scores.astype(float).tolist())
        return pd.DataFrame({"scores": out})


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema(
        [
            ColSpec(Array(DataType.string), "session_item_ids"),
            ColSpec(Array(DataType.string), "candidate_item_ids"),
            ColSpec(DataType.string, "page_type", required=False),
            ColSpec(DataType.string, "device", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(Array(DataType.double), "scores")]))


# --------------------------------------------------------------------------- logging / registering


def ensure_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="reco session-aware ranker")
        except MlflowException:  # created concurrently
            client.get_registered_model(name)


def find_by_fingerprint(client: MlflowClient, name: str, fp: str) -> ModelVersion | None:
    """The oldest version of `name` whose `fingerprint` tag is `fp` (None when there is none)."""
    ensure_registered_model(client, name)
    found = client.search_model_versions(f"name='{name}' and tags.fingerprint='{fp}'")
    return min(found, key=lambda v: int(v.version)) if found else None


@dataclass(frozen=True)
class TrainingData:
    """What a version was trained on, logged as an MLflow dataset input of its run: `frame` (the rows, or a
    sample of them: MLflow keeps the schema, a profile and a digest), `source` (where they live, e.g. the
    lake partition's folder) and a `name` such as ``lake 2026-01-01..2026-01-07``."""

    frame: pd.DataFrame
    source: str
    name: str


def describe(lineage: Lineage, rejected_reason: str | None = None) -> str:
    """The version's description in the registry UI: what changed, which data, what the gate said.

    >>> lin = Lineage("lake-2026-01-01", 1200, "val-1", 3, "4", {"ndcg@10": 0.1084}, {"epochs": 5},
    ...               extra={"warm_start": "warm from v4", "gate": "passed"})
    >>> text = describe(lin)
    >>> text[:58]
    'warm from v4 (parent v4). Data: lake-2026-01-01, 1,200 row'
    >>> text[text.index("Gate"):]
    'Gate: passed. Offline: ndcg@10 0.1084. Config: epochs=5.'
    """
    warm = lineage.extra.get("warm_start") or ("warm start" if lineage.parent_version else "cold start")
    parent = f" (parent v{lineage.parent_version})" if lineage.parent_version else ""
    gate = lineage.extra.get("gate") or "not run"
    verdict = f"REJECTED: {rejected_reason}" if rejected_reason else gate
    metrics = ", ".join(f"{k} {_num(v)}" for k, v in sorted(lineage.metrics.items())) or "none"
    config = ", ".join(f"{k}={v}" for k, v in sorted(lineage.train_config.items()) if not isinstance(v, dict))
    return (
        f"{warm}{parent}. Data: {lineage.data_snapshot_id}, {lineage.data_rows:,} rows; validation "
        f"{lineage.validation_id}, {lineage.validation_bad_rows:,} bad rows quarantined. Gate: {verdict}. "
        f"Offline: {metrics}. Config: {config}."
    )[:4900]


def _params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flat MLflow params of a (nested) training config.

    >>> _params({"epochs": 5, "model": {"dim": 64}})
    {'epochs': '5', 'model.dim': '64'}
    """
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


def _epoch_metrics(history: Any) -> list[Any]:
    """Per-epoch curves of `bundle.meta["history"]` as MLflow metric steps (step = epoch)."""
    from mlflow.entities import Metric

    now = int(datetime.now(UTC).timestamp() * 1000)
    out = []
    for row in history or []:
        epoch = int(row.get("epoch", len(out) + 1))
        for k, v in row.items():
            if k != "epoch" and isinstance(v, int | float) and v == v:
                out.append(Metric(f"epoch_{metric_name(k)}", float(v), now, epoch))
    return out


def _input_example(bundle: ModelBundle) -> pd.DataFrame:
    items = [str(i) for i in bundle.item_ids[1:6]]
    return pd.DataFrame(
        {
            "session_item_ids": [items[:2]],
            "candidate_item_ids": [items[2:]],
            "page_type": ["home"],
            "device": ["mobile"],
        }
    )


def _log_run(
    client: MlflowClient, run_id: str, lineage: Lineage, bundle: ModelBundle, data: TrainingData | None
) -> None:
    """Params, per-epoch curves, evaluation metrics and the training data of a version's run."""
    from mlflow.entities import Metric, Param

    existing = client.get_run(run_id).data.params
    params = [Param(k, v) for k, v in _params(lineage.train_config).items() if k not in existing]
    now = int(datetime.now(UTC).timestamp() * 1000)
    metrics = [Metric(metric_name(k), float(v), now, 0) for k, v in lineage.metrics.items() if v == v]
    # MLflow rejects NaN metrics on some backends; the `metrics` tag still records "nan"
    metrics += _epoch_metrics(bundle.meta.get("history"))
    for i in range(0, max(len(params), len(metrics)), 500):  # log_batch takes at most 1,000 entities
        client.log_batch(run_id, metrics=metrics[i : i + 500], params=params[i : i + 500])
    if data is not None:
        from mlflow.entities import DatasetInput, InputTag

        tags = [InputTag(key="mlflow.data.context", value="training")]
        client.log_inputs(run_id, datasets=[DatasetInput(_dataset_entity(data), tags=tags)])


#: What MLflow 3 warns while it builds a dataset input from a local path and a frame of integer ids, neither of
#: which says anything about this run: a local path resolves to one of two identical classes (the local artifact
#: repository is registered under two schemes), and the inferred schema's integer columns cannot hold missing
#: values (the hint is about pyfunc inputs at inference; the version's signature is explicit, `_signature`).
_DATASET_NOISE = (
    "The specified dataset source can be interpreted in multiple ways",
    "Hint: Inferred schema contains integer",
)


def _dataset_entity(data: TrainingData) -> Any:
    """`data` as an MLflow dataset entity (source, schema, profile, digest), without the two warnings of
    `_DATASET_NOISE` in every training run's log. The entity is built here too: MLflow infers the schema then."""
    import mlflow.data

    with warnings.catch_warnings():
        for text in _DATASET_NOISE:
            warnings.filterwarnings("ignore", message=re.escape(text), category=UserWarning)
        return mlflow.data.from_pandas(data.frame, source=data.source, name=data.name)._to_mlflow_entity()


def log_bundle(
    client: MlflowClient,
    name: str,
    bundle: ModelBundle,
    lineage: Lineage,
    *,
    run_id: str,
    rejected_reason: str | None = None,
    data: TrainingData | None = None,
) -> ModelVersion:
    """Log `bundle` as a LoggedModel (pyfunc) of run `run_id` and register it as a new version of `name`,
    tagged with its lineage (and `rejected=<reason>` for a candidate that failed the gate), described,
    with the run's params, curves, metrics and (given `data`) its training dataset.

    Idempotent: when a version with the same fingerprint exists it is returned and nothing is logged.
    """
    existing = find_by_fingerprint(client, name, lineage.fingerprint)
    if existing is not None:
        return existing
    run = client.get_run(run_id)
    tags = lineage.tags()
    if rejected_reason:
        tags["rejected"] = rejected_reason
    _log_run(client, run_id, lineage, bundle, data)
    logged = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME_IN_RUN, source_run_id=run_id, model_type="pyfunc",
        params=_params(lineage.train_config), tags={"fingerprint": lineage.fingerprint, "registered_model": name},
    )  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="reco-bundle-") as tmp:
            bundle_dir = Path(tmp) / BUNDLE_ARTIFACT
            bundle.save(bundle_dir)
            # Embeddings travel with the artifact so consumers (retrieval indexes) need no torch forward.
            np.save(bundle_dir / "item_embeddings.npy", bundle.item_embeddings(), allow_pickle=False)
            model_dir = Path(tmp) / ARTIFACT_PATH
            mlflow.pyfunc.save_model(
                path=str(model_dir),
                python_model=RankerPyfunc(),
                artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                signature=_signature(),
                input_example=_input_example(bundle),
                pip_requirements=["reco"],
            )
            client.log_model_artifacts(logged.model_id, str(model_dir))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    logged = client.finalize_logged_model(logged.model_id, "READY")
    ensure_registered_model(client, name)
    tags["logged_model_id"] = logged.model_id
    # The source is the LoggedModel's artifact location (not `models:/<id>`, which the registry resolves
    # through the global tracking URI that this module never sets).
    return client.create_model_version(
        name, source=logged.artifact_location, run_id=run_id, tags=tags,
        description=describe(lineage, rejected_reason), model_id=logged.model_id,
    )  # fmt: skip


def get_version(client: MlflowClient, name: str, ref: str | int) -> ModelVersion:
    """A version by number (`"3"`, 3) or alias (`"champion"`, `"arm-treatment"`)."""
    from mlflow.exceptions import MlflowException

    ref = str(ref)
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as e:
        raise RegistryError(f"model {name!r} has no version or alias {ref!r}") from e


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at, or None."""
    try:
        return get_version(client, name, alias)
    except RegistryError:
        return None


def load_bundle(
    client: MlflowClient, name: str, ref: str | int, dst: Path | None = None
) -> tuple[ModelBundle, ModelVersion]:
    """Download a version's bundle directory (by number or alias) and load it without unpickling."""
    import mlflow.artifacts

    from reco.artifacts.bundle import ModelBundle

    mv = get_version(client, name, ref)
    dst = Path(dst or tempfile.mkdtemp(prefix="reco-model-"))
    uri = f"{mv.source.rstrip('/')}/artifacts/{BUNDLE_ARTIFACT}"
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=client.tracking_uri)
    bundle = ModelBundle.load(local)
    bundle.meta = {**bundle.meta, "version": mv.version, "registered_model": name}
    return bundle, mv


# --------------------------------------------------------------------------- aliases


@dataclass(frozen=True)
class AliasMove:
    alias: str
    version: str
    previous: str | None
    who: str
    reason: str
    action: str  # promote | rollback
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _history_run(client: MlflowClient, name: str, *, create: bool) -> str | None:
    """The run whose tags are `name`'s alias moves (created on the first move)."""
    run_id = client.get_registered_model(name).tags.get(HISTORY_RUN_TAG)
    if run_id or not create:
        return run_id
    exp = ensure_experiment(client, HISTORY_EXPERIMENT)
    found = client.search_runs([exp], f"tags.`reco.alias_history_of` = '{name}'", order_by=["attributes.start_time"])
    if found:  # created by a concurrent first move, or the registered-model tag was lost
        run_id = found[0].info.run_id
    else:
        run = client.create_run(exp, run_name=f"alias history of {name}", tags={"reco.alias_history_of": name})
        run_id = run.info.run_id
        client.set_terminated(run_id)  # a finished run still takes tags
    client.set_registered_model_tag(name, HISTORY_RUN_TAG, run_id)
    return run_id


def alias_history(client: MlflowClient, name: str, alias: str) -> list[dict[str, Any]]:
    """Moves of `alias`, oldest first (the legacy registered-model tag's moves, then the history run's)."""
    legacy_raw = client.get_registered_model(name).tags.get(HISTORY_TAG.format(alias=alias))
    moves = json.loads(legacy_raw) if legacy_raw else []
    run_id = _history_run(client, name, create=False)
    if run_id:
        prefix = f"move.{alias}."
        tags = client.get_run(run_id).data.tags
        moves += [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(prefix))]
    return moves


def _record(client: MlflowClient, name: str, move: AliasMove) -> None:
    run_id = _history_run(client, name, create=True)
    seq = time.time_ns()  # keys sort in time order; two moves of one alias never share a nanosecond here
    client.set_tag(run_id, MOVE_TAG.format(alias=move.alias, seq=seq), json.dumps(move.to_dict())[:7900])


def _move(client: MlflowClient, name: str, alias: str, version: str, who: str, reason: str, action: str) -> AliasMove:
    prev = alias_version(client, name, alias)
    mv = get_version(client, name, version)
    move = AliasMove(
        alias=alias,
        version=str(mv.version),
        previous=None if prev is None else str(prev.version),
        who=who,
        reason=reason[:1000],
        action=action,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    client.set_registered_model_alias(name, alias, mv.version)
    for k, v in {
        "promoted_by": who,
        "promote_reason": reason,
        "previous_version": move.previous or "none",
        "promoted_at": move.at,
    }.items():
        client.set_model_version_tag(name, mv.version, f"{alias}.{k}", v)
    _record(client, name, move)
    return move


def promote(client: MlflowClient, name: str, alias: str, version: str | int, *, who: str, reason: str) -> AliasMove:
    """Point `alias` at `version` (a number, or another alias to copy), recording who/why/previous.

    A version tagged `rejected` (it failed the gate) is refused.
    """
    mv = get_version(client, name, version)
    if mv.tags.get("rejected"):
        raise RegistryError(f"version {mv.version} of {name!r} was rejected ({mv.tags['rejected']}); not promoting")
    return _move(client, name, alias, str(mv.version), who, reason, "promote")


def rollback(client: MlflowClient, name: str, alias: str, *, who: str, reason: str) -> AliasMove:
    """Point `alias` back at the version it had before its current one."""
    history = alias_history(client, name, alias)
    current = alias_version(client, name, alias)
    if current is None:
        raise RegistryError(f"alias {alias!r} of {name!r} is not set; nothing to roll back")
    # The promotion that set the current version says what was there before it (rollbacks walk back the
    # promotion chain, they are not undone by a second rollback).
    last = next(
        (h for h in reversed(history) if h["version"] == str(current.version) and h["action"] == "promote"), None
    )
    if last is None or last["previous"] is None:
        raise RegistryError(f"alias {alias!r} of {name!r} has no previous version to roll back to")
    return _move(client, name, alias, last["previous"], who, reason, "rollback")
