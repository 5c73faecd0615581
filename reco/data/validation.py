"""Great Expectations validation of interaction events with row-level quarantine.

GX 1.x is used directly (its Airflow provider does not install next to Airflow 3.3) in an ephemeral
context: nothing is written to a GX project folder. Every row gets a `row_id`; the suite runs with
`unexpected_index_column_names=["row_id"]`, so each failed expectation names the exact rows that broke
it. Those rows go to a quarantine table with one reason string per row; the rest continue. When the
bad fraction exceeds a threshold the whole batch is rejected (`ValidationFailed`) with a clear message.

Two checks are batch level and cannot be quarantined row by row: a missing/extra column and a column
of the wrong type (the table cannot be trusted at all); they raise `SchemaMismatch`.

`great_expectations` is imported inside functions: it takes about 3 s to import.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reco.data.events import EVENT_COLUMNS, EVENT_SCHEMA, EventType

ROW_ID = "row_id"
#: Helper column: 0 for the first row of an event_id, 1.. for its repeats (only repeats are bad).
_OCCURRENCE = "event_id_occurrence"
SUITE_NAME = "reco_events"
DEFAULT_THRESHOLD = 0.05
QUARANTINE_FILE = "part-0.parquet"

#: pandas dtype families each lake column may arrive as (Arrow -> pandas turns a nullable int into float).
_TYPE_FAMILIES: dict[str, tuple[str, ...]] = {
    "string": ("O", "U", "T"),  # object / str / StringDtype all report kind O or T in pandas 3
    "timestamp": ("M",),
    "int": ("i", "u", "f"),
    "float": ("f", "i", "u"),
    "bool": ("b", "O"),
}


class SchemaMismatch(ValueError):
    """The batch's columns or types do not match the event schema; no row can be trusted."""


class ValidationFailed(RuntimeError):
    """Too many bad rows: the batch is rejected as a whole."""


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of one validation run. `validation_id` is stable: same data + suite + interval -> same id."""

    validation_id: str
    start: str
    end: str
    total_rows: int
    bad_rows: int
    threshold: float
    reasons: dict[str, int] = field(default_factory=dict)
    gx_success: bool = True
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def clean_rows(self) -> int:
        return self.total_rows - self.bad_rows

    @property
    def bad_fraction(self) -> float:
        return self.bad_rows / self.total_rows if self.total_rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clean_rows": self.clean_rows, "bad_fraction": self.bad_fraction}


@dataclass(frozen=True, eq=False)
class ValidatedBatch:
    clean: pd.DataFrame
    quarantine: pd.DataFrame  # row_id (position in the input) + event columns + `reasons` ("; "-joined)
    result: ValidationResult
    gx_result: dict[str, Any]  # JSON-safe GX suite result


def _utc(ts: datetime | date | str) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def check_schema(df: pd.DataFrame) -> None:
    """Raise `SchemaMismatch` unless `df` has exactly the event columns with compatible dtypes."""
    missing = [c for c in EVENT_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in EVENT_COLUMNS]
    if missing or extra:
        raise SchemaMismatch(f"event batch columns differ from the schema: missing={missing} extra={extra}")
    wrong = []
    for f in EVENT_SCHEMA:
        family = _family(f.type)
        if df[f.name].dtype.kind not in _TYPE_FAMILIES[family] and not df[f.name].isna().all():
            wrong.append(f"{f.name}: {df[f.name].dtype} (want {family})")
    if wrong:
        raise SchemaMismatch("event batch has columns of the wrong type: " + ", ".join(wrong))


def _family(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    return "string"


def _expectations(start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp, known_items: list[str] | None):
    """The suite, each expectation paired with the reason a failing row gets."""
    import great_expectations.expectations as gxe

    purchase = EventType.purchase.value
    pairs: list[tuple[Any, str]] = [
        (gxe.ExpectTableColumnsToMatchSet(column_set=[*EVENT_COLUMNS, ROW_ID, _OCCURRENCE], exact_match=True), ""),
        *[(gxe.ExpectColumnValuesToNotBeNull(column=c), f"{c} is null") for c in _REQUIRED],
        (
            gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=[e.value for e in EventType]),
            "event_type not allowed",
        ),
        (
            gxe.ExpectColumnValuesToBeBetween(column="ts", min_value=start, max_value=end, strict_max=True),
            "ts outside run interval",
        ),
        (gxe.ExpectColumnValuesToBeBetween(column="ts", max_value=now), "ts in the future"),
        (
            gxe.ExpectColumnValuesToBeBetween(column="propensity", min_value=0.0, max_value=1.0, strict_min=True),
            "propensity not in (0, 1]",
        ),
        (gxe.ExpectColumnValuesToBeBetween(column="position", min_value=1), "position < 1"),
        (gxe.ExpectColumnValuesToBeBetween(column="phase", min_value=1), "phase < 1"),
        (gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0.0), "value < 0"),
        (
            gxe.ExpectColumnValuesToBeNull(
                column="value", row_condition=f'event_type!="{purchase}"', condition_parser="pandas"
            ),
            "value on a non-purchase event",
        ),
        (gxe.ExpectColumnValuesToBeBetween(column=_OCCURRENCE, max_value=0), "duplicate event_id"),
    ]
    if known_items is not None:
        pairs.append((gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=known_items), "unknown item_id"))
    return pairs


_REQUIRED = ("event_id", "ts", "user_id", "item_id", "event_type")


def _jsonable(obj: Any) -> Any:
    """GX results hold numpy scalars and Timestamps; make them JSON-safe."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, pd.Timestamp | datetime | date):
        return obj.isoformat()
    if isinstance(obj, float) and np.isnan(obj):
        return None
    return obj


def _fingerprint(df: pd.DataFrame, *parts: str) -> str:
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    for p in parts:
        h.update(p.encode())
    return h.hexdigest()[:16]


def validate_events(
    df: pd.DataFrame,
    start: datetime | date | str,
    end: datetime | date | str,
    known_item_ids: Iterable[str] | None = None,
    *,
    now: datetime | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    docs_dir: Path | None = None,
) -> ValidatedBatch:
    """Run the event suite on `df` (interval `[start, end)`), split clean and quarantined rows.

    Raises `SchemaMismatch` for a batch-level schema problem and `ValidationFailed` when the bad
    fraction exceeds `threshold`. `docs_dir`, when given, receives GX's HTML data docs.
    """
    import great_expectations as gx

    check_schema(df)
    start_ts, end_ts = _utc(start), _utc(end)
    now_ts = _utc(now or datetime.now(UTC))
    batch = df.reset_index(drop=True).copy()
    batch[ROW_ID] = np.arange(len(batch), dtype=np.int64)
    batch[_OCCURRENCE] = batch.groupby("event_id", dropna=False, sort=False).cumcount()
    known = None if known_item_ids is None else sorted(set(known_item_ids))
    pairs = _expectations(start_ts, end_ts, now_ts, known)

    ctx = gx.get_context(mode="ephemeral")
    if docs_dir is not None:
        _add_docs_site(ctx, docs_dir)
    asset = ctx.data_sources.add_pandas("reco").add_dataframe_asset("events")
    bd = asset.add_batch_definition_whole_dataframe("interval")
    suite = ctx.suites.add(gx.ExpectationSuite(name=SUITE_NAME, expectations=[e for e, _ in pairs]))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="events", data=bd, suite=suite))
    rf = {"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]}
    if docs_dir is not None:
        from great_expectations.checkpoint import UpdateDataDocsAction

        cp = ctx.checkpoints.add(
            gx.Checkpoint(
                name="events",
                validation_definitions=[vd],
                actions=[UpdateDataDocsAction(name="docs")],
                result_format=rf,
            )
        )
        suite_result = next(iter(cp.run(batch_parameters={"dataframe": batch}).run_results.values()))
    else:
        suite_result = vd.run(batch_parameters={"dataframe": batch}, result_format=rf)

    # GX reorders results; match them back to reasons by the id each expectation got in the suite.
    reason_by_id = {exp.id: reason for exp, (_, reason) in zip(suite.expectations, pairs, strict=True)}
    row_reasons = _row_reasons(suite_result, reason_by_id)
    # Expectation ids are random uuids: the id hashes the data, the suite's reasons, the catalogue and interval.
    vid = _fingerprint(
        df, SUITE_NAME, json.dumps([r for _, r in pairs]), json.dumps(known), start_ts.isoformat(), end_ts.isoformat()
    )
    bad_ids = sorted(row_reasons)
    bad_mask = batch[ROW_ID].isin(bad_ids).to_numpy()
    quarantine = batch.loc[bad_mask, [ROW_ID, *EVENT_COLUMNS]].copy()
    quarantine["reasons"] = ["; ".join(row_reasons[int(i)]) for i in batch.loc[bad_mask, ROW_ID]]
    clean = batch.loc[~bad_mask, list(EVENT_COLUMNS)].reset_index(drop=True)
    result = ValidationResult(
        validation_id=vid,
        start=start_ts.isoformat(),
        end=end_ts.isoformat(),
        total_rows=len(batch),
        bad_rows=int(bad_mask.sum()),
        threshold=threshold,
        reasons=dict(Counter(r for rs in row_reasons.values() for r in rs)),
        gx_success=bool(suite_result.success),
    )
    return ValidatedBatch(clean, quarantine.reset_index(drop=True), result, _jsonable(suite_result.to_json_dict()))


def _add_docs_site(ctx: Any, docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    ctx.add_data_docs_site(
        site_name="reco",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )


def _row_reasons(suite_result: Any, reason_by_id: dict[str | None, str]) -> dict[int, list[str]]:
    """row_id -> reasons (in suite order), from each failed expectation's `unexpected_index_list`."""
    order = {reason: i for i, reason in enumerate(reason_by_id.values())}
    out: dict[int, list[str]] = {}
    for er in suite_result.results:
        reason = reason_by_id[er.expectation_config.id]
        if er.exception_info and er.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {er.expectation_config.type} errored: {er.exception_info}")
        if er.success or not reason:
            continue
        for entry in er.result.get("unexpected_index_list") or []:
            out.setdefault(int(entry[ROW_ID]), []).append(reason)
    return {row: sorted(rs, key=order.__getitem__) for row, rs in out.items()}


def enforce_threshold(result: ValidationResult) -> None:
    """Raise `ValidationFailed` when the bad fraction is above the threshold."""
    if result.bad_fraction > result.threshold:
        top = ", ".join(f"{k}: {v}" for k, v in sorted(result.reasons.items(), key=lambda kv: -kv[1]))
        raise ValidationFailed(
            f"validation {result.validation_id}: {result.bad_rows} of {result.total_rows} rows are bad "
            f"({result.bad_fraction:.1%} > threshold {result.threshold:.1%}) for [{result.start}, {result.end}); "
            f"reasons: {top}"
        )


def write_quarantine(
    quarantine: pd.DataFrame,
    root: Path,
    days: Iterable[date],
    fallback_day: date,
    row_days: Iterable[date] | None = None,
) -> list[Path]:
    """Rewrite `root/date=D/part-0.parquet` for every day of the run (idempotent: a rerun replaces it,
    a day that is now clean loses its old file). A row goes to `row_days` (aligned with the rows: the
    partition it was read from) when given, else to its own ts day when that day belongs to the run,
    else to `fallback_day` (null or out-of-interval timestamps)."""
    days = list(days)
    if row_days is not None:
        row_day = pd.Series(list(row_days), index=quarantine.index, dtype=object)
    elif len(quarantine):
        ts = pd.to_datetime(quarantine["ts"], utc=True, errors="coerce")
        row_day = ts.dt.date.where(ts.dt.date.isin(days), fallback_day)
    else:
        row_day = pd.Series([], dtype=object)
    written = []
    for d in days:
        path = root / f"date={d.isoformat()}" / QUARANTINE_FILE
        part = quarantine[(row_day == d).to_numpy()] if len(quarantine) else quarantine
        if part.empty:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False), tmp)
        tmp.replace(path)
        written.append(path)
    return written


def interval_days(start: datetime | date | str, end: datetime | date | str) -> list[date]:
    """Calendar days (UTC) that `[start, end)` touches.

    >>> interval_days("2026-01-01", "2026-01-03")
    [datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)]
    """
    s, e = _utc(start), _utc(end)
    days, d = [], s.date()
    while pd.Timestamp(d, tz="UTC") < e:
        days.append(d)
        d += timedelta(days=1)
    return days


def render_html(result: ValidationResult, quarantine: pd.DataFrame, limit: int = 200) -> str:
    """A small self-contained summary page (GX's data docs hold the full per-expectation view)."""
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in sorted(result.reasons.items()))
    sample = quarantine.head(limit).to_html(index=False, escape=True) if len(quarantine) else "<p>none</p>"
    return (
        f"<html><head><meta charset='utf-8'><title>validation {result.validation_id}</title></head><body>"
        f"<h1>Event validation {result.validation_id}</h1>"
        f"<p>interval [{result.start}, {result.end}): {result.total_rows} rows, {result.bad_rows} quarantined "
        f"({result.bad_fraction:.2%}, threshold {result.threshold:.0%})</p>"
        f"<h2>Reasons</h2><table border=1><tr><th>reason</th><th>rows</th></tr>{rows}</table>"
        f"<h2>Quarantined rows (first {limit})</h2>{sample}</body></html>"
    )
