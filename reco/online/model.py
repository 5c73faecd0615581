"""What the learner needs from a model: a torch module, the item vocabulary, and a logit function.

`ArmModel.forward(module, batch)` returns one logit per example (click = 1). The default calls
`module(session, lengths, items)`; `from_bundle` adapts the project's `ModelBundle`/`SessionAwareRanker`.
`DotScorer` is a deliberately small model with the same contract, used by the doctests, the unit tests
and as a fallback when no registered ranker exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from reco.online.examples import Examples
from reco.state.snapshots import decode_weights, encode_weights


class Batch(NamedTuple):
    session: torch.Tensor  # (B, W) long, right-padded with 0; W = the longest session in the batch
    lengths: torch.Tensor  # (B,) long
    items: torch.Tensor  # (B,) long
    positions: torch.Tensor  # (B,) long
    page: torch.Tensor  # (B,) long
    device: torch.Tensor  # (B,) long
    labels: torch.Tensor  # (B,) float


def to_batch(ex: Examples) -> Batch:
    """Tensors of `ex`; the session columns are cut to the batch's longest session (the GRU's cost is
    linear in the width, and padding never changes the ranker's output)."""
    width = max(1, int(ex.lengths.max())) if len(ex) else 1
    return Batch(
        torch.from_numpy(np.ascontiguousarray(ex.session[:, :width])),
        torch.from_numpy(ex.lengths),
        torch.from_numpy(ex.items),
        torch.from_numpy(ex.positions),
        torch.from_numpy(ex.page),
        torch.from_numpy(ex.device),
        torch.from_numpy(ex.labels),
    )


def _default_forward(module: nn.Module, batch: Batch) -> torch.Tensor:
    return module(batch.session, batch.lengths, batch.items)


@dataclass
class ArmModel:
    """The base model of one arm. `index_of[item_id]` is the embedding row (>= 1; 0 is padding)."""

    module: nn.Module
    index_of: Mapping[str, int]
    base_version: str
    forward: Callable[[nn.Module, Batch], torch.Tensor] = _default_forward
    context_index: Callable[[str, str], tuple[int, int]] | None = None
    min_session: int = 0  # examples with fewer known session items are not learned from


class DotScorer(nn.Module):
    """logit = <mean session embedding, item embedding> + item bias (an empty session scores by bias).

    >>> torch.manual_seed(0) and None
    >>> m = DotScorer(n_items=5, dim=4)
    >>> m(torch.tensor([[1, 2, 0]]), torch.tensor([2]), torch.tensor([3])).shape
    torch.Size([1])
    """

    def __init__(self, n_items: int, dim: int = 16):
        super().__init__()
        self.n_items = n_items
        self.dim = dim
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.bias = nn.Embedding(n_items + 1, 1)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.zeros_(self.bias.weight)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, session: torch.Tensor, lengths: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        emb = self.item(session).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(torch.float32)
        return (emb * self.item(items)).sum(-1) + self.bias(items).squeeze(-1)


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """A state_dict as the bytes published to Redis (`reco.state.snapshots`, the one weights codec)."""
    return encode_weights(state)


def state_from_bytes(blob: bytes) -> dict[str, torch.Tensor]:
    return decode_weights(blob)


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def logits_numpy(model: ArmModel, ex: Examples, module: nn.Module | None = None, chunk: int = 4096) -> np.ndarray:
    """Logits of `ex` under `module` (default: the arm's module), no gradients, in chunks."""
    mod = module if module is not None else model.module
    out = []
    with torch.inference_mode():
        for s in range(0, len(ex), chunk):
            out.append(model.forward(mod, to_batch(ex.take(slice(s, s + chunk)))).float().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def from_bundle(bundle: Any, base_version: str | None = None) -> ArmModel:
    """Adapt a `reco.artifacts.bundle.ModelBundle` whose model is a `SessionAwareRanker`.

    The ranker scores (session, candidates) -> logits (B, C); online learning scores one candidate per
    example (C = 1) with the request's page type and device. Its encoder needs at least one session item
    (an all-padding session yields NaN), hence `min_session=1`.
    """
    module = bundle.model
    index_of = {iid: i for i, iid in enumerate(bundle.item_ids) if i > 0}
    version = str(base_version if base_version is not None else bundle.meta.get("version", "unknown"))

    def forward(m: nn.Module, b: Batch) -> torch.Tensor:
        logits, _ = m(b.session, b.items.unsqueeze(1), b.page, b.device)
        return logits[:, 0]

    return ArmModel(module, index_of, version, forward, context_index=module.context_index, min_session=1)
