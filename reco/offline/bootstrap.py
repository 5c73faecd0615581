"""The first model of a fresh stack (`reco bootstrap`, the compose service `bootstrap`): train the ranker on
MovieLens-100k, register it, point `champion` and every arm's alias at it.

Idempotent: with a champion in the registry nothing is trained; arms without an alias get the champion's
version (an arm added to the experiment config later starts from it). The daily `reco_training` DAG then
warm-starts from these aliases.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WHO = "reco bootstrap"
EXPERIMENT = "reco-bootstrap"


@dataclass
class BootstrapResult:
    version: str
    trained: bool
    moved: list[str] = field(default_factory=list)  # aliases pointed at `version` by this call
    metrics: dict[str, float] = field(default_factory=dict)


def bootstrap(
    tracking_uri: str,
    model_name: str,
    data_dir: str | Path,
    aliases: Sequence[str],
    *,
    epochs: int = 5,
    seed: int = 0,
    threads: int = 1,
) -> BootstrapResult:
    """Train + register + alias the first version (or only fill in missing aliases); `aliases`: the arms'
    registry aliases (`ExperimentConfig.aliases`), `champion` is always set."""
    from reco.artifacts import registry

    client = registry.client_for(tracking_uri)
    registry.ensure_registered_model(client, model_name)
    champion = registry.alias_version(client, model_name, registry.CHAMPION)
    if champion is not None:
        version, trained, metrics = str(champion.version), False, {}
    else:
        version, metrics = _train_and_register(client, model_name, Path(data_dir), epochs, seed, threads)
        trained = True
    moved = []
    for alias in dict.fromkeys([registry.CHAMPION, *aliases]):
        current = registry.alias_version(client, model_name, alias)
        if current is None:
            registry.promote(client, model_name, alias, version, who=WHO, reason="first model (MovieLens-100k)")
            moved.append(alias)
    return BootstrapResult(version=version, trained=trained, moved=moved, metrics=metrics)


def _train_and_register(
    client: Any, model_name: str, data_dir: Path, epochs: int, seed: int, threads: int
) -> tuple[str, dict[str, float]]:
    from reco.artifacts import registry
    from reco.data.movielens import INTER_FILE, SHA256, load_movielens
    from reco.offline.evaluation import evaluate_split, leave_one_out
    from reco.offline.trainer import TrainConfig, interactions, train

    ml = load_movielens(data_dir)  # verifies the files' sha256
    events = interactions(ml.events)
    split = leave_one_out(events)
    valid_sessions, valid_targets, _ = split.sessions("valid")
    cfg = TrainConfig(epochs=epochs, seed=seed, threads=threads)
    log.info("bootstrap: training on %d MovieLens-100k events, %d epochs", len(events), epochs)
    result = train(events.iloc[split.train_rows], ml.catalog, cfg, progress=False,
                   validation=(valid_sessions, valid_targets))  # fmt: skip
    test = evaluate_split(result.bundle, split, "test")
    metrics = {k: float(v) for k, v in test["model"]["all"].items()}
    lineage = registry.Lineage(
        data_snapshot_id=f"movielens-100k:{SHA256[INTER_FILE][:16]}",
        data_rows=len(events),
        validation_id="movielens-100k (sha256-verified files)",
        validation_bad_rows=0,
        parent_version=None,
        metrics=metrics,
        train_config=asdict(cfg),
        code_revision=registry.code_revision(),
        extra={"warm_start": "cold", "gate": "bootstrap: first model, no champion to compare", "source": "bootstrap"},
    )
    run_id = client.create_run(registry.ensure_experiment(client, EXPERIMENT), run_name="bootstrap").info.run_id
    data = registry.TrainingData(events, source=str(Path(data_dir).resolve()), name="movielens-100k (leave-one-out)")
    mv = registry.log_bundle(client, model_name, result.bundle, lineage, run_id=run_id, data=data)
    client.set_terminated(run_id)
    return str(mv.version), metrics
