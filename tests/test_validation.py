"""GX event suite with row-level quarantine: each injected defect is quarantined with its reason, the
clean rows continue, the threshold rejects the batch, results are JSON-safe and the id is stable."""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pytest

from reco.data.lake import events_to_pandas, to_event_table
from reco.data.validation import (
    SchemaMismatch,
    ValidationFailed,
    enforce_threshold,
    validate_events,
    write_quarantine,
)

NOW = pd.Timestamp("2026-06-01", tz="UTC")


def batch(n: int = 40) -> pd.DataFrame:
    rows = [
        {
            "event_id": f"e{i}",
            "ts": f"2026-01-01T{i % 24:02d}:00:00Z",
            "user_id": f"u{i % 3}",
            "item_id": "1",
            "event_type": "purchase" if i == 0 else "click",
            "value": 9.5 if i == 0 else None,
            "position": 1,
            "propensity": 0.5,
        }
        for i in range(n)
    ]
    return events_to_pandas(to_event_table(rows))


def test_each_defect_is_quarantined_with_its_reason(tmp_path):
    df = batch()
    df.loc[1, "user_id"] = None
    df.loc[2, "ts"] = pd.Timestamp("2030-01-01", tz="UTC")
    df.loc[3, "event_type"] = "teleport"
    df.loc[4, "event_id"] = "e0"
    df.loc[5, "item_id"] = "999"
    df.loc[6, "value"] = 3.0
    df.loc[7, "propensity"] = 0.0
    df.loc[8, "position"] = 0
    df.loc[9, "ts"] = pd.Timestamp("2025-12-31 23:00", tz="UTC")
    vb = validate_events(df, "2026-01-01", "2026-01-02", ["1"], now=NOW, docs_dir=tmp_path / "docs")
    got = dict(zip(vb.quarantine["row_id"], vb.quarantine["reasons"], strict=True))
    assert got == {
        1: "user_id is null",
        2: "ts outside run interval; ts in the future",
        3: "event_type not allowed",
        4: "duplicate event_id",
        5: "unknown item_id",
        6: "value on a non-purchase event",
        7: "propensity not in (0, 1]",
        8: "position < 1",
        9: "ts outside run interval",
    }
    assert len(vb.clean) == 31 and "e0" in set(vb.clean["event_id"])  # the first e0 stays
    assert vb.result.bad_rows == 9 and not vb.result.gx_success
    json.dumps(vb.gx_result)  # numpy scalars converted
    assert (tmp_path / "docs" / "index.html").is_file()  # GX data docs
    with pytest.raises(ValidationFailed, match=r"9 of 40 rows are bad .*threshold 5.0%"):
        enforce_threshold(vb.result)
    again = validate_events(df, "2026-01-01", "2026-01-02", ["1"], now=NOW)
    assert again.result.validation_id == vb.result.validation_id


def test_clean_batch_passes_and_quarantine_rewrite_is_idempotent(tmp_path):
    vb = validate_events(batch(), "2026-01-01", "2026-01-02", ["1"], now=NOW)
    assert vb.result.bad_rows == 0 and vb.quarantine.empty
    enforce_threshold(vb.result)
    old = tmp_path / "date=2026-01-01" / "part-0.parquet"
    old.parent.mkdir()
    old.write_bytes(b"stale")
    assert write_quarantine(vb.quarantine, tmp_path, [date(2026, 1, 1)], date(2026, 1, 1)) == []
    assert not old.exists()


def test_schema_mismatch_is_a_batch_error():
    with pytest.raises(SchemaMismatch, match="missing=\\['value'\\]"):
        validate_events(batch().drop(columns=["value"]), "2026-01-01", "2026-01-02")
