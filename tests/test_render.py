"""The hand-written recommendation body (`serving.render.response_json`) is `RecommendationResponse`'s
own serialisation, byte for byte, for random pipeline results (the schema is what OpenAPI documents)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from reco.ranking.recommend import RecoItem, RecoResult
from serving.render import response_json
from serving.schemas import RecommendationResponse, RecommendedItem

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # no lone surrogates: not JSON text
_finite = st.floats(allow_nan=False, allow_infinity=False)

_items = st.builds(
    RecoItem,
    item_id=_text,
    score=_finite,
    reason=_text,
    source=st.sampled_from(["session_similar", "context_similar", "trending", "popular", "new_items"]),
    position=st.integers(1, 100),
    is_exploration=st.booleans(),
    propensity=st.floats(0.0, 1.0),
    category=_text,
)
_results = st.builds(
    RecoResult,
    request_id=_text,
    user_id=_text,
    items=st.lists(_items, max_size=6),
    model_version=_text,
    online_snapshot=st.none() | st.integers(0, 2**53),
    latency_ms=st.floats(0.0, 1e6),
    experiment_group=_text,
    alias=_text,
    degraded=st.lists(_text, max_size=3),
    candidates_per_source=st.dictionaries(_text, st.integers(0, 500), max_size=3),
)


def _schema(result: RecoResult) -> RecommendationResponse:
    items = [
        RecommendedItem(item_id=it.item_id, score=it.score, reason=it.reason, source=it.source,
                        position=it.position, is_exploration=it.is_exploration, propensity=it.propensity)
        for it in result.items
    ]  # fmt: skip
    return RecommendationResponse(
        request_id=result.request_id,
        user_id=result.user_id,
        items=items,
        model_version=result.model_version,
        online_snapshot=result.online_snapshot,
        latency_ms=result.latency_ms,
        experiment_group=result.experiment_group,
        alias=result.alias,
        degraded=result.degraded,
    )


@settings(max_examples=300, derandomize=True, deadline=None)
@given(_results)
def test_the_hand_written_body_is_the_schemas_serialisation(result: RecoResult) -> None:
    body = response_json(result)
    expected = _schema(result)
    assert body == expected.model_dump_json().encode()
    assert RecommendationResponse.model_validate_json(body) == expected


def test_the_body_has_every_field_of_the_schema_in_its_order() -> None:
    item = RecoItem("i1", 0.25, "Trending now", "trending", 1, False, 1.0, "Drama")
    result = RecoResult("r1", "u1", [item], "3", None, 1.5, "control", "arm-control", [])
    body = json.loads(response_json(result))
    assert list(body) == list(RecommendationResponse.model_fields)
    assert list(body["items"][0]) == list(RecommendedItem.model_fields)
