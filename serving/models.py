"""Model manager: one `ServedModel` per experiment arm, loaded from the MLflow registry by alias, hot-swapped.

* Start: each arm's alias (`arm-<name>`) is resolved and loaded; the bundle is also written to a local
  cache (`<cache>/<arm>/<version>/` plus a `CURRENT` pointer, both replaced atomically). When the
  registry cannot be reached, the arm is served from its cached bundle.
* Poll (every `poll_s`): a changed alias -> the new version is loaded and precomputed off the request
  path, then put in place with one dict assignment. Requests read the reference once at their start,
  so a request in flight finishes on the model it started with; nothing is locked on the request path.
* Online weights (every `weights_poll_s`): a newer snapshot published by the learner for the arm's
  current base version (`store.latest_weights_version` / `get_weights`, a torch state_dict loaded with
  `weights_only=True`) is loaded into a copy of the base model and swapped the same way.
* Fencing: an online snapshot written under an older lease token (`meta["token"]`, see
  `reco.state.lease`) than one this process already served is refused (`on_refused(arm, "stale")`).
* Smoke test: a registry version and an online snapshot are put in place only when
  `reco.artifacts.smoke.smoke_check` passes (finite weights, one finite scored batch). A refused one is logged
  once, counted (`on_refused`), never cached, and the arm keeps serving what it had.
* Simulated time (`RECO_SIMULATED_CLOCK`, demo and tests): the poll thread adopts no online weights;
  `adopt_epoch` does, synchronously, at the first request of each epoch of the simulator's clock.
* `ready` is true once every arm has a model.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from reco.artifacts.smoke import smoke_check
from reco.experiments.phases import PhaseLog, phase_of
from reco.ranking.recommend import ServedModel

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    """Where arm models come from (the MLflow registry in production)."""

    def current_version(self, alias: str) -> str:
        """The version the alias points at now; raises when the registry cannot answer."""
        ...

    def load(self, alias: str, version: str) -> Any:
        """The `ModelBundle` of that version."""
        ...


class RegistrySource:
    """`ModelSource` over the MLflow registry through `reco.artifacts.registry` (imported lazily: mlflow is heavy)."""

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        # MLflow's client retries a dead server with exponential backoff for minutes by default; the
        # server must fall back to its cached models within seconds instead (env overrides win).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self._client: Any = None

    def _mlflow(self) -> Any:
        if self._client is None:
            from reco.artifacts.registry import client_for

            self._client = client_for(self.tracking_uri)
        return self._client

    def phases(self, experiment: str) -> list[Any]:
        """The experiment's phases, recorded as tags of the registered model (`reco.experiments.phases`)."""
        return PhaseLog(self._mlflow(), self.model_name).phases(experiment)

    def current_version(self, alias: str) -> str:
        from reco.artifacts.registry import get_version

        return str(get_version(self._mlflow(), self.model_name, alias).version)

    def load(self, alias: str, version: str) -> Any:
        import tempfile

        from reco.artifacts.registry import load_bundle

        # The bundle is read fully into memory, so the download folder can go right away.
        with tempfile.TemporaryDirectory(prefix="reco-serve-") as tmp:
            bundle, _ = load_bundle(self._mlflow(), self.model_name, version, Path(tmp))
        return bundle


class ModelCache:
    """Last good bundle per arm on local disk: `<root>/<arm>/<version>/` and `<root>/<arm>/CURRENT`."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def save(self, arm: str, version: str, bundle: Any) -> None:
        arm_dir = self.root / arm
        final = arm_dir / version
        if not (final / "meta.json").exists():
            tmp = arm_dir / f".{version}.tmp-{os.getpid()}-{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            bundle.save(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.replace(final)
        pointer = arm_dir / f".CURRENT.tmp-{os.getpid()}-{threading.get_ident()}"
        pointer.write_text(version)
        pointer.replace(arm_dir / "CURRENT")  # atomic: a crash never leaves a half-written pointer
        self._prune(arm_dir, version)

    def _prune(self, arm_dir: Path, current: str) -> None:
        versions = sorted(
            (p for p in arm_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in versions[self.keep :]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, arm: str) -> tuple[str, Any] | None:
        from reco.artifacts.bundle import ModelBundle

        pointer = self.root / arm / "CURRENT"
        if not pointer.is_file():
            return None
        version = pointer.read_text().strip()
        return version, ModelBundle.load(self.root / arm / version)


class ModelManager:
    """Holds the current `ServedModel` of every arm; thread-safe for readers without locks.

    `arms` maps arm name -> registry alias. `store` (optional) supplies online weight snapshots and the
    shared interaction count for epsilon decay (`on_interactions(arm, n)`). `on_change(arm, model)` is
    called after every swap (metrics).
    """

    def __init__(
        self,
        arms: Mapping[str, str],
        source: ModelSource | None,
        cache: ModelCache,
        *,
        store: Any | None = None,
        poll_s: float = 30.0,
        weights_poll_s: float = 2.0,
        build: Callable[..., ServedModel] = ServedModel.build,
        on_change: Callable[[str, ServedModel], None] = lambda arm, model: None,
        on_interactions: Callable[[str, int], None] = lambda arm, n: None,
        on_refused: Callable[[str, str], None] = lambda arm, kind: None,
        phases: Callable[[], Sequence[Any]] | None = None,
        on_poll: Callable[[], bool] = lambda: False,
        simulated: bool = False,
    ) -> None:
        self.arms = dict(arms)
        # Simulated time (`adopt_epoch`): online weights are adopted at the simulator's ticks, never by the poll.
        self.simulated = simulated
        self._epoch = -1
        # The experiment's phases (`reco.experiments.phases`), read at every registry poll: impressions
        # are stamped with the phase that pins their arm to the version that served them.
        self._read_phases = phases
        self._phases: tuple[Any, ...] = ()
        self.source = source
        self.cache = cache
        self.store = store
        self.poll_s = poll_s
        self.weights_poll_s = weights_poll_s
        self._build = build
        self._on_change = on_change
        self._on_interactions = on_interactions
        self._on_refused = on_refused
        self._on_poll = on_poll  # True: what `build` reads changed (the item catalogue): rebuild every arm
        # What the smoke test refused, per arm, so a bad version or snapshot is neither re-downloaded nor
        # re-logged at every poll: registry version, and (base version, snapshot) of online weights.
        self._refused_version: dict[str, str] = {}
        self._refused_snapshot: dict[str, tuple[str, int]] = {}
        self._tokens: dict[str, int] = {}  # per arm, the newest lease token of a snapshot served
        self._models: dict[str, ServedModel] = {}
        self._base: dict[str, ServedModel] = {}  # registry weights, to rebuild online snapshots on
        self._refresh_lock = threading.Lock()  # one refresher at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry_ok = False

    # --- readers (request path) ---

    def get(self, arm: str) -> ServedModel | None:
        return self._models.get(arm)

    def any(self) -> ServedModel | None:
        """Some loaded model (the first arm's that has one): the fallback of an arm without a model."""
        for arm in self.arms:
            if (m := self._models.get(arm)) is not None:
                return m
        return None

    @property
    def ready(self) -> bool:
        return all(arm in self._models for arm in self.arms)

    def phase_of(self, arm: str, version: str) -> int | None:
        """The experiment phase of an impression of `arm` served by registry `version` (None: no phase)."""
        return phase_of(self._phases, arm, version)

    def versions(self) -> dict[str, str | None]:
        return {arm: (m.version if (m := self._models.get(arm)) else None) for arm in self.arms}

    # --- refresh (start-up and the poll thread) ---

    def refresh(self) -> dict[str, str]:
        """Check every arm's alias; load what changed. Returns arm -> newly loaded version."""
        changed: dict[str, str] = {}
        with self._refresh_lock:
            ok = True
            for arm, alias in self.arms.items():
                try:
                    version = self._refresh_arm(arm, alias)
                except Exception as exc:  # registry down or a broken version: keep serving what we have
                    ok = False
                    log.warning("model refresh for arm %s (%s) failed: %s", arm, alias, exc)
                    if arm not in self._models:
                        self._load_cached(arm)
                    continue
                if version is not None:
                    changed[arm] = version
            self.registry_ok = ok and self.source is not None
            if self._read_phases is not None:
                try:
                    self._phases = tuple(self._read_phases())
                except Exception as exc:  # registry down: keep the phases we know
                    log.warning("reading the experiment phases failed: %s", exc)
        return changed

    def _refresh_arm(self, arm: str, alias: str) -> str | None:
        if self.source is None:
            if arm not in self._models:
                self._load_cached(arm)
            return None
        version = self.source.current_version(alias)
        current = self._base.get(arm)
        if current is not None and current.version == version:
            return None
        if self._refused_version.get(arm) == version:
            return None  # refused before (already logged and counted)
        bundle = self.source.load(alias, version)
        if (problem := smoke_check(bundle)) is not None:
            self._refused_version[arm] = version
            self._on_refused(arm, "registry")
            log.error("arm %s: registry version %s (%s) refused, keeps serving %s: %s", arm, version, alias,
                      current.version if current is not None else "the cache", problem)  # fmt: skip
            if arm not in self._models:
                self._load_cached(arm)
            return None
        model = self._build(bundle, version)
        self._install(arm, model, base=True)
        try:
            self.cache.save(arm, version, bundle)
        except OSError as exc:  # a full disk must not stop serving the new version
            log.warning("could not cache model %s v%s: %s", arm, version, exc)
        log.info("arm %s now serves %s version %s", arm, alias, version)
        return version

    def _load_cached(self, arm: str) -> None:
        try:
            cached = self.cache.load(arm)
        except Exception as exc:
            log.error("cached model of arm %s is unusable: %s", arm, exc)
            return
        if cached is None:
            log.error("arm %s has no model: registry unavailable and no cached bundle", arm)
            return
        version, bundle = cached
        self._install(arm, self._build(bundle, version), base=True)
        log.warning("arm %s serves cached version %s (registry unavailable)", arm, version)

    def rebuild(self) -> list[str]:
        """Rebuild every arm's current model from its bundle (the item catalogue changed: new items,
        availability) off the request path and swap it in; returns the arms rebuilt."""
        done = []
        with self._refresh_lock:
            for arm in self.arms:
                current = self._models.get(arm)
                if current is None:
                    continue
                try:
                    model = self._build(current.bundle, current.version, online_snapshot=current.online_snapshot)
                    base = self._base.get(arm)
                    if base is current:
                        self._base[arm] = model
                    elif base is not None:
                        self._base[arm] = self._build(base.bundle, base.version)
                except Exception as exc:  # keep serving the model we have
                    log.warning("arm %s not rebuilt for the new catalogue: %s", arm, exc)
                    continue
                self._install(arm, model, base=False)
                done.append(arm)
        return done

    def _install(self, arm: str, model: ServedModel, *, base: bool) -> None:
        if base:
            self._base[arm] = model
        self._models[arm] = model  # the swap: one reference assignment
        self._on_change(arm, model)

    def refresh_weights(self) -> dict[str, int]:
        """Adopt newer online weight snapshots; returns arm -> snapshot now served."""
        if self.store is None:
            return {}
        changed: dict[str, int] = {}
        with self._refresh_lock:
            for arm in self.arms:
                try:
                    if (snap := self._refresh_arm_weights(arm)) is not None:
                        changed[arm] = snap
                    self._on_interactions(arm, int(self.store.interactions(arm)))
                except Exception as exc:  # Redis down or a bad blob: keep the current weights
                    log.warning("online weights for arm %s not refreshed: %s", arm, exc)
        return changed

    def _refresh_arm_weights(self, arm: str) -> int | None:
        base = self._base.get(arm)
        current = self._models.get(arm)
        if base is None or current is None:
            return None
        latest = self.store.latest_weights_version(arm)
        if latest is None or latest == current.online_snapshot:
            return None
        snap = self.store.get_weights(arm, latest)
        if snap is None:
            return None
        meta_base = snap.meta.get("base_version")
        if meta_base is not None and str(meta_base) != base.version:
            return None  # trained on another registry version: not for this model
        refused_key = (base.version, int(snap.version))
        if self._refused_snapshot.get(arm) == refused_key:
            return None
        token = int(snap.meta.get("token") or 0)
        if token < self._tokens.get(arm, 0):
            # Written under an older lease than a snapshot already served: a stale writer (fenced in Redis
            # too, `RedisStore.put_weights`); never go back to it.
            self._refused_snapshot[arm] = refused_key
            self._on_refused(arm, "stale")
            log.error("arm %s: online snapshot %s refused: fencing token %s is older than the %s already served",
                      arm, snap.version, token, self._tokens[arm])  # fmt: skip
            return None
        bundle = with_weights(base.bundle, snap.blob)
        if (problem := smoke_check(bundle)) is not None:
            # The learner checks before publishing, but the server does not trust what it reads from Redis.
            self._refused_snapshot[arm] = refused_key
            self._on_refused(arm, "online")
            log.error("arm %s: online snapshot %s on version %s refused: %s", arm, snap.version, base.version, problem)
            return None
        self._install(arm, self._build(bundle, base.version, online_snapshot=int(snap.version)), base=False)
        self._tokens[arm] = max(token, self._tokens.get(arm, 0))
        log.info("arm %s serves online snapshot %s on version %s", arm, snap.version, base.version)
        return int(snap.version)

    def adopt_epoch(self, epoch: int) -> None:
        """Simulated time: before the first request of a new epoch of the simulator's clock, adopt the snapshots
        the learner published at that tick (`reco.state.simclock`), on the request, before it is served. So
        what a request is served with depends on simulated time only, in every worker. Per request this is one
        comparison of ints."""
        if epoch <= self._epoch:
            return
        self.refresh_weights()
        self._epoch = epoch

    # --- background polling ---

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="reco-model-poll", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        import time

        next_registry = time.monotonic() + self.poll_s
        while not self._stop.wait(min(self.poll_s, self.weights_poll_s)):
            if time.monotonic() >= next_registry:
                self.refresh()
                next_registry = time.monotonic() + self.poll_s
            if not self.simulated:
                self.refresh_weights()
            try:
                if self._on_poll():
                    self.rebuild()
            except Exception as exc:  # Redis down: the catalogue stays as it was
                log.warning("catalogue poll failed: %s", exc)


def with_weights(bundle: Any, blob: bytes) -> Any:
    """A copy of `bundle` whose model carries the state_dict in `blob` (torch.save bytes).

    Loaded with `weights_only=True` (no pickled code runs); shapes must match the base model exactly.
    """
    from reco.state.snapshots import decode_weights

    state = decode_weights(blob)
    model = copy.deepcopy(bundle.model)
    model.load_state_dict(state)
    model.eval()
    return type(bundle)(model=model, item_ids=list(bundle.item_ids), catalog=bundle.catalog, meta=dict(bundle.meta))
