"""The simulator's view of the API: two calls, over HTTP like any client (`HttpApi`), or in-process.

`EVENT_TIME_HEADER` carries the simulated time of a recommendation request, so that a server configured
to honour it (the demo) stamps the impressions with the simulated time, like the feedback events the
simulator sends; a server that ignores it stamps wall time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from reco.data.events import DEFAULT_DEVICE

EVENT_TIME_HEADER = "X-Reco-Event-Time"
#: The epoch of the simulated clock (`reco.sim.clock.ClockedApi`), honoured by a server with RECO_SIMULATED_CLOCK.
SIM_EPOCH_HEADER = "X-Reco-Sim-Epoch"


class Api(Protocol):
    def recommend(
        self, user_id: str, *, session_id: str, page_type: str, context_item_id: str | None, limit: int, ts: datetime
    ) -> dict[str, Any]: ...

    def send_events(self, events: Sequence[dict[str, Any]]) -> None: ...


class ApiError(RuntimeError):
    """The API answered with an error status (message names status and detail)."""


class HttpApi:
    """`POST /v1/recommendations` and `POST /v1/events` (with `X-API-Key`) through one httpx client."""

    def __init__(
        self, base_url: str, api_key: str | None = None, timeout_s: float = 10.0, device: str = DEFAULT_DEVICE
    ):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.device = device
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)
        self._epoch: str | None = None

    def adopt_epoch(self, epoch: int) -> None:
        """Send `epoch` of the simulated clock with every recommendation request from now on."""
        self._epoch = str(epoch)

    def recommend(
        self, user_id: str, *, session_id: str, page_type: str, context_item_id: str | None, limit: int, ts: datetime
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": user_id, "session_id": session_id, "page_type": page_type,
                                "device": self.device, "limit": limit}  # fmt: skip
        if context_item_id is not None:
            body["context_item_id"] = context_item_id
        headers = {EVENT_TIME_HEADER: ts.isoformat()}
        if self._epoch is not None:
            headers[SIM_EPOCH_HEADER] = self._epoch
        r = self._http.post("/v1/recommendations", json=body, headers=headers)
        if r.status_code != 200:
            raise ApiError(f"POST /v1/recommendations -> {r.status_code}: {r.text[:300]}")
        return r.json()

    def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        r = self._http.post("/v1/events", json={"events": list(events)})
        if r.status_code not in (200, 202):  # the API answers 202 Accepted
            raise ApiError(f"POST /v1/events -> {r.status_code}: {r.text[:300]}")

    def close(self) -> None:
        self._http.close()
