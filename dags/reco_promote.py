"""reco_promote (manual): move `champion` or an `arm-*` alias to a version, or roll it back.

Who/why/previous version are recorded on the version and in the alias history of the registered
model (`reco.artifacts.registry`). One task, one `reco.pipeline.promote_tasks` call.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="reco_promote",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "execution_timeout": timedelta(minutes=10)},
    params={
        "action": Param("promote", type="string", enum=["promote", "rollback"]),
        "source": Param(None, type=["null", "string"], description="version number or alias (promote only)"),
        "target_alias": Param("champion", type="string", pattern="^(champion|arm-[a-z0-9_-]{1,40})$"),
        "reason": Param("", type="string", minLength=1, description="why (recorded on the version)"),
        "tracking_uri": Param(None, type=["null", "string"], description="empty = RECO_MLFLOW_TRACKING_URI"),
    },
    tags=["reco", "registry"],
    doc_md=__doc__,
)
def reco_promote() -> None:
    @task
    def move() -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from reco.artifacts.registry import RegistryError
        from reco.pipeline.promote_tasks import move_alias
        from reco.settings import RecoSettings

        ctx = get_current_context()
        p = ctx["params"]
        settings = RecoSettings()
        who = (ctx["dag_run"].conf or {}).get("who") or getattr(ctx["dag_run"], "triggering_user_name", None)
        try:
            return move_alias(
                p.get("tracking_uri") or settings.tracking_uri,
                settings.registered_model,
                p["action"],
                p["target_alias"],
                p.get("source"),
                p["reason"],
                who or "airflow",
            )
        except (RegistryError, ValueError) as e:  # a wrong request: retrying cannot help
            raise AirflowFailException(str(e)) from e

    move()


promote_dag = reco_promote()
