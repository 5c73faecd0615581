"""`ArmLearner`: mini-batch online updates of one arm's model, with its guardrails.

Every `update_every` fresh labelled examples (a seeded `holdout_fraction` of them goes to the holdout
instead) the learner takes one step on a mini-batch of the newest `batch_size` of them plus `replay`
rows sampled from the replay buffer (all fresh rows then enter the buffer): one forward and one
backward, BCE on the logit, optional inverse-propensity weights (clipped at `ips_clip`, normalised to
mean 1), gradient-norm clipping. A non-finite loss or gradient skips the step and restores the last good
weights.

Every step is checked on the holdout before it can be published (only the last good snapshot is ever
published): the updated weights are accepted as the new last good snapshot only when their holdout
log-loss is within `margin` of the last good snapshot's *and* of the base's, both scored on the same,
current holdout rows. Otherwise the update is refused (outcome "reverted", counted in `reverts`): the
weights go back to the last good snapshot (not the base) and the optimizer's moments are reset. So a
finite but harmful update (flipped labels, a learning-rate spike) is never served, and nothing served is
worse than the last good snapshot by more than `margin`. While the holdout holds fewer than `min_holdout`
rows nothing is accepted (the base stays published). As the holdout rolls, the last good snapshot itself is
compared with the base; worse by more than `margin` on `patience` consecutive checks, the arm goes back to
the base weights (outcome "reverted_to_base").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from reco.online.examples import Examples, ReplayBuffer
from reco.online.guardrails import Holdout, RevertRule, log_loss
from reco.online.model import ArmModel, all_finite, clone_state, logits_numpy, to_batch


@dataclass
class StepReport:
    step: int
    n_fresh: int
    loss: float
    outcome: str  # "ok" | "unchecked" | "skipped_nonfinite" | "restored" | "reverted" | "reverted_to_base"
    holdout_before: float = float("nan")  # the last good snapshot's holdout log-loss (the reference)
    holdout_after: float = float("nan")  # the updated weights' log-loss on the same rows
    holdout_base: float = float("nan")  # the base weights' log-loss on the same rows


@dataclass
class ArmCounters:
    examples: int = 0
    holdout: int = 0
    steps: int = 0
    skipped_nonfinite: int = 0
    restored: int = 0
    reverts: int = 0  # updates refused by the holdout check (back to the last good snapshot)
    reverts_to_base: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class ArmLearner:
    """Online learner of one arm (River-shaped: parameters stored as given, learned state private).

    >>> from reco.online.model import DotScorer
    >>> torch.manual_seed(0) and None
    >>> model = ArmModel(DotScorer(n_items=3, dim=4), {"a": 1, "b": 2, "c": 3}, base_version="1")
    >>> learner = ArmLearner(model, lr=0.05, update_every=8, batch_size=8, holdout_fraction=0.5, min_holdout=4,
    ...                      max_session=2, seed=0)
    >>> z, items = np.zeros(16, np.int64), np.array([2, 3] * 8)   # item 2 is clicked, item 3 is not
    >>> ex = Examples(np.array([[1, 0]] * 16), np.ones(16, np.int64), items, np.ones(16, np.int64), z, z,
    ...               np.ones(16, np.float32), (items == 2).astype(np.float32), np.full(16, np.nan, np.float32),
    ...               np.arange(16))
    >>> [r.outcome for r in learner.learn_many(ex)], learner.snapshot_step
    (['ok'], 1)
    """

    def __init__(
        self,
        model: ArmModel,
        lr: float = 1e-3,
        update_every: int = 512,
        batch_size: int = 512,
        replay: int = 128,
        buffer_size: int = 50_000,
        grad_clip: float = 1.0,
        ips: bool = False,
        ips_clip: float = 10.0,
        holdout_fraction: float = 0.1,
        holdout_size: int = 1024,
        min_holdout: int = 200,
        margin: float = 0.01,
        patience: int = 3,
        max_session: int = 20,
        seed: int | None = 0,
    ):
        self.model = model
        self.lr = lr
        self.update_every = update_every
        self.batch_size = batch_size
        self.replay = replay
        self.buffer_size = buffer_size
        self.grad_clip = grad_clip
        self.ips = ips
        self.ips_clip = ips_clip
        self.holdout_fraction = holdout_fraction
        self.holdout_size = holdout_size
        self.min_holdout = min_holdout
        self.margin = margin
        self.patience = patience
        self.max_session = max_session
        self.seed = seed

        self._rng = np.random.default_rng(seed)
        self._buffer = ReplayBuffer(buffer_size, max_session, seed=None if seed is None else seed + 1)
        self._holdout = Holdout(holdout_size, max_session)
        self._rule = RevertRule(margin, patience)
        self._base_module = copy.deepcopy(model.module).eval()
        self._base_state = clone_state(model.module)
        self._good_state = self._base_state
        self._good_module = copy.deepcopy(model.module).eval()  # the last good snapshot, to score the holdout
        self._good_losses = (float("nan"), float("nan"))  # (good, base) log-loss at the last check
        self._opt = torch.optim.Adam(model.module.parameters(), lr=lr)
        self._fresh: list[Examples] = []
        self._n_fresh = 0
        self._snapshot_step = 0
        self.counters = ArmCounters()
        model.module.eval()

    # -- public state ------------------------------------------------------------------------------------
    @property
    def snapshot_step(self) -> int:
        """Number of accepted updates since the base (0 = base weights)."""
        return self._snapshot_step

    @property
    def n_fresh(self) -> int:
        return self._n_fresh

    def oldest_fresh_tag(self) -> int | None:
        """Tag of the oldest example not yet in a step (None: every example given has been used)."""
        for part in self._fresh:
            if len(part):
                return int(part.tag[0])
        return None

    def good_state(self) -> dict[str, torch.Tensor]:
        """The last weights that passed every guardrail (what gets published)."""
        return self._good_state

    def holdout_losses(self) -> tuple[float, float]:
        """(last good snapshot, base) log-loss on the current holdout."""
        rows = self._holdout.rows()
        if len(rows) == 0:
            return float("nan"), float("nan")
        good = log_loss(logits_numpy(self.model, rows, module=self._good_module), rows.labels)
        return good, log_loss(rows.base_logit, rows.labels)

    def good_losses(self) -> tuple[float, float]:
        """(last good snapshot, base) log-loss as of the last holdout check (no forward pass)."""
        return self._good_losses

    def holdout(self) -> Examples:
        """The rows of the current holdout (with the base model's logits in `base_logit`)."""
        return self._holdout.rows()

    def set_learning_rate(self, lr: float) -> None:
        """Change the optimizer's step size until the next reset (a revert or resume uses `lr` again):
        an operator's knob, and how the tests inject a learning-rate spike."""
        for group in self._opt.param_groups:
            group["lr"] = lr

    # -- learning ----------------------------------------------------------------------------------------
    def learn_many(self, ex: Examples) -> list[StepReport]:
        """Add labelled examples; take one step per `update_every` fresh rows."""
        if len(ex) == 0:
            return []
        ex = ex.with_width(self.max_session)
        to_holdout = self._rng.random(len(ex)) < self.holdout_fraction
        if to_holdout.any():
            held = ex.take(to_holdout)
            held.base_logit[:] = logits_numpy(self.model, held, module=self._base_module)
            # A row the base model cannot score (absurd feature values) would make every check NaN.
            held = held.take(np.isfinite(held.base_logit))
            self._holdout.add(held)
            self.counters.holdout += len(held)
        train = ex.take(~to_holdout)
        self.counters.examples += len(train)
        self._fresh.append(train)
        self._n_fresh += len(train)
        reports = []
        while self._n_fresh >= self.update_every:
            fresh = Examples.concat(self._fresh)
            due, rest = fresh.take(slice(0, self.update_every)), fresh.take(slice(self.update_every, None))
            self._fresh, self._n_fresh = [rest], len(rest)
            reports.append(self._step(due))
        return reports

    def resume_from(self, state: dict[str, torch.Tensor], snapshot_step: int) -> None:
        """Continue from a published snapshot of the same base (a restarted learner)."""
        self._load(state)
        self._set_good(clone_state(self.model.module))
        self._snapshot_step = snapshot_step

    def rewind(self) -> None:
        """Forget the unpublished progress, as a restarted process would: the examples waiting for a step
        are dropped (their stream entries are still pending and come back) and the weights go back to the
        base (`resume_from` the last published snapshot follows). Replay buffer and holdout are kept."""
        self._fresh, self._n_fresh = [], 0
        self._load(self._base_state)
        self._set_good(self._base_state)
        self._snapshot_step = 0
        self._rule.reset()

    def revert_to_base(self) -> None:
        """Back to the base weights (optimizer moments reset); also used by a manual admin revert."""
        self._load(self._base_state)
        self._set_good(self._base_state)
        self._snapshot_step = 0
        self._rule.reset()
        self.counters.reverts_to_base += 1

    def _set_good(self, state: dict[str, torch.Tensor]) -> None:
        self._good_state = state
        self._good_module.load_state_dict(state)

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        self.model.module.load_state_dict(state)
        self._opt = torch.optim.Adam(self.model.module.parameters(), lr=self.lr)

    def _weights(self, batch: Examples) -> torch.Tensor | None:
        if not self.ips:
            return None
        w = np.minimum(1.0 / np.clip(batch.propensity, 1e-12, 1.0), self.ips_clip)
        return torch.from_numpy((w / w.mean()).astype(np.float32))

    def _step(self, fresh: Examples) -> StepReport:
        newest = fresh.take(slice(max(0, len(fresh) - self.batch_size), None))
        batch = Examples.concat([newest, self._buffer.sample(self.replay)])
        self._buffer.add(fresh)
        self.counters.steps += 1
        step = self.counters.steps
        module = self.model.module
        module.train()
        self._opt.zero_grad(set_to_none=True)
        t = to_batch(batch)
        logits = self.model.forward(module, t)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t.labels, weight=self._weights(batch))
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            return self._skip(step, len(fresh), loss_value)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)
        if not math.isfinite(float(grad_norm)):
            return self._skip(step, len(fresh), loss_value)
        self._opt.step()
        module.eval()
        return self._guard(step, len(fresh), loss_value)

    def _skip(self, step: int, n: int, loss: float) -> StepReport:
        self._opt.zero_grad(set_to_none=True)
        self.model.module.eval()
        self._load(self._good_state)
        self.counters.skipped_nonfinite += 1
        return StepReport(step, n, loss, "skipped_nonfinite")

    def _guard(self, step: int, n: int, loss: float) -> StepReport:
        """The holdout check every update passes before it can be published (see the module docstring)."""
        if not all_finite(self.model.module):
            self._load(self._good_state)
            self.counters.restored += 1
            return StepReport(step, n, loss, "restored")
        rows = self._holdout.rows()
        if len(rows) < max(1, self.min_holdout):
            return StepReport(step, n, loss, "unchecked")  # learned, not yet publishable
        after = log_loss(logits_numpy(self.model, rows), rows.labels)
        good = log_loss(logits_numpy(self.model, rows, module=self._good_module), rows.labels)
        base = log_loss(rows.base_logit, rows.labels)
        report = StepReport(step, n, loss, "ok", good, after, base)
        if not math.isfinite(after):
            self._load(self._good_state)
            self.counters.restored += 1
            report.outcome = "restored"
            return report
        if after > min(good, base) + self.margin:
            self._load(self._good_state)  # a finite but harmful update: back to the last good snapshot
            self.counters.reverts += 1
            report.outcome = "reverted"
            self._good_losses = (good, base)
            return self._drift(report, good, base)
        self._set_good(clone_state(self.model.module))
        self._snapshot_step += 1
        self._good_losses = (after, base)
        return self._drift(report, after, base)

    def _drift(self, report: StepReport, good: float, base: float) -> StepReport:
        """The holdout rolls: a last good snapshot worse than the base for `patience` checks -> the base."""
        if self._rule.check(good, base):
            self.revert_to_base()
            self._good_losses = (base, base)
            report.outcome = "reverted_to_base"
        return report
