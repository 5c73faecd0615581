"""Task results through XCom: Airflow stores them as strict JSON, which has no NaN or infinity, while an
evaluation can hold them (a relative change against a champion whose metric is 0). `to_xcom` wraps every
non-finite float, `from_xcom` restores it, so the next task sees exactly what the previous one returned.

>>> out = to_xcom({"ci": [float("nan"), 1.0], "n": 3, "x": float("-inf")})
>>> import json; json.loads(json.dumps(out, allow_nan=False))["ci"][0]
{'__float__': 'nan'}
>>> back = from_xcom(out)
>>> back["ci"][0] != back["ci"][0], back["x"], back["n"]
(True, -inf, 3)
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["from_xcom", "to_xcom"]

_KEY = "__float__"


def to_xcom(obj: Any) -> Any:
    """`obj` with every NaN / infinity replaced by {"__float__": "nan" | "inf" | "-inf"}."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {_KEY: repr(obj)}
    if isinstance(obj, dict):
        return {k: to_xcom(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_xcom(v) for v in obj]
    return obj


def from_xcom(obj: Any) -> Any:
    """The inverse of `to_xcom`."""
    if isinstance(obj, dict):
        if set(obj) == {_KEY}:
            return float(obj[_KEY])
        return {k: from_xcom(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_xcom(v) for v in obj]
    return obj
