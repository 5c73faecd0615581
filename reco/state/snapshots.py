"""The one codec of model weights as bytes: what the learner publishes to Redis (``P:weights:<arm>:<v>``
``blob``), what the API adopts, what the MLflow hand-off stores and the training DAG warm-starts from.

A snapshot is a torch ``state_dict`` written with ``torch.save``; it is read back with
``torch.load(weights_only=True)`` only, so a blob that carries pickled code is refused instead of run
(tests/test_security.py). torch is imported lazily: the key layout and the API's import path stay light.

>>> import torch
>>> blob = encode_weights({"w": torch.ones(2)})
>>> decode_weights(blob)["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["StaleToken", "decode_weights", "encode_weights"]


class StaleToken(RuntimeError):
    """A weights write under a fencing token older than the arm's newest: the writer lost its lease."""


def encode_weights(state: Mapping[str, Any]) -> bytes:
    """A state_dict as snapshot bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return buf.getvalue()


def decode_weights(source: bytes | str | Path) -> dict[str, Any]:
    """Snapshot bytes (or a file holding them) -> a state_dict on the CPU; never unpickles code."""
    import torch

    handle: Any = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    return torch.load(handle, weights_only=True, map_location="cpu")
