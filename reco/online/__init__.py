"""Online learning between DAG runs: one process (`reco learn`) consumes the event stream, joins served
impressions with their feedback, updates each arm's model in small steps under guardrails, and publishes
versioned weight snapshots that every API worker hot-swaps.

Modules, one responsibility each: `join` (reward join in event time), `history` (the served session
rebuilt from the stream), `examples` (training rows and the replay buffer), `model` (what the learner
needs from a model), `guardrails` (holdout, revert rule), `arm` (one arm's updates, each checked on the
holdout before it can be published), `learner` (stream, acknowledgements, publication, the per-arm leases
that make it the one writer), `control` (request contexts, pause/resume, counters: operations of
`RedisStore`, whose keys live in `reco.state.keys`), `handoff` (MLflow checkpoints for the training DAG,
registry polling for base-version changes).
"""

from reco.online.arm import ArmLearner, StepReport
from reco.online.control import is_paused, pause, read_request_contexts, resume, write_request_context
from reco.online.handoff import RegistryBases, checkpoint_to_mlflow, latest_online_run, latest_online_snapshot
from reco.online.join import RewardJoiner
from reco.online.learner import OnlineLearner
from reco.online.model import ArmModel, DotScorer, from_bundle

__all__ = [
    "ArmLearner",
    "ArmModel",
    "DotScorer",
    "OnlineLearner",
    "RegistryBases",
    "RewardJoiner",
    "StepReport",
    "checkpoint_to_mlflow",
    "from_bundle",
    "is_paused",
    "latest_online_run",
    "latest_online_snapshot",
    "pause",
    "read_request_contexts",
    "resume",
    "write_request_context",
]
