"""Ray executor: each unit of a stage is a Ray task, scheduled by the stage's ``resources``.

Without an address a local Ray instance is started (loopback only, no dashboard); with
``address="auto"`` or ``HOST:PORT`` the executor joins an existing cluster, whose nodes must see the
run folder at the same path (a shared filesystem). Units are the stage's own, so a run can be
started with the local executor and finished with this one, or the other way round.

Failures are retried at two levels: Ray re-runs a task whose worker process died (``max_retries``),
and the executor resubmits a unit that raised an exception (except :class:`GeobuildError`, a user
error that would fail again), each at most ``retries`` times, before the unit is reported failed.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

from ..errors import GeobuildError, require
from ..log import get_logger, progress
from ..commit import execute_unit
from ..runfolder import RunFolder
from .base import SystemFailure, retryable

log = get_logger("executor.ray")


def _run_unit(stage, run_root: str, unit: str) -> dict[str, Any]:
    """The Ray task: execute and commit one unit (ledger, stats, marker last)."""
    return execute_unit(stage, RunFolder(run_root), unit)


class RayExecutor:
    """Run units as Ray tasks, at most ``workers`` at a time (default: as many as resources allow)."""

    def __init__(
        self,
        address: str | None = None,
        retries: int = 2,
        workers: int | None = None,
        num_cpus: int | None = None,
        object_store_memory: int | None = 256 * 1024**2,
    ):
        self.address = address
        self.retries = max(0, int(retries))
        self.workers = None if workers is None else max(1, int(workers))
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------
    def _ray(self):
        if self.address is None:
            # before Ray is imported: bind the local instance to 127.0.0.1 instead of the node IP
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray = require("ray", "ray")
        if ray.is_initialized():
            return ray
        if self.address is None:
            try:  # Ray imported earlier by someone else: the constant is already read, set it too
                from ray._private import ray_constants

                ray_constants.ENABLE_RAY_CLUSTER = False
            except Exception:  # noqa: BLE001 - private API; the env var above is the main switch
                pass
            cpus = self.num_cpus or self.workers or os.cpu_count() or 1
            log.info("starting a local Ray instance (%d CPUs, loopback only)", cpus)
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                object_store_memory=self.object_store_memory,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            log.info("joining the Ray cluster at %s", self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                    "; if it uses token authentication (Ray's default when a token exists), set RAY_AUTH_MODE=token "
                    "and RAY_AUTH_TOKEN (or ~/.ray/auth_token) to its token"
                )
                raise GeobuildError(f"cannot join the Ray cluster at {self.address} ({exc}); is `ray start --head` running?{hint}") from exc
        self._started = True
        return ray

    def close(self) -> None:
        """Shut down the Ray instance (or the connection) this executor started."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- scheduling -------------------------------------------------------------------------
    def _options(self, ray, stage) -> dict[str, Any]:
        """Ray task options from ``stage.resources``: ``num_gpus`` GPUs per unit (dropped, with a
        warning, when the cluster has fewer), or ``num_gpus_if_available`` GPUs (``device: auto``)
        when the cluster has them, silently none otherwise; CPUs capped at the cluster's."""
        from ..stage import GPU_IF_AVAILABLE

        res = dict(getattr(stage, "resources", None) or {"num_cpus": 1})
        opts: dict[str, Any] = {
            "num_cpus": float(res.pop("num_cpus", 1)),
            "num_gpus": float(res.pop("num_gpus", 0)),
            "max_retries": self.retries,
            "retry_exceptions": False,
        }
        optional_gpus = float(res.pop(GPU_IF_AVAILABLE, 0) or 0)
        if "memory" in res:
            opts["memory"] = res.pop("memory")
        if res:
            opts["resources"] = res
        cluster = ray.cluster_resources()
        have_gpus = cluster.get("GPU", 0)
        if opts["num_gpus"] > 0 and have_gpus < opts["num_gpus"]:
            log.warning("%s asks for %s GPU per unit but the Ray cluster has %s; running its units on CPU", stage.name, opts["num_gpus"], have_gpus)
            opts["num_gpus"] = 0.0
        elif opts["num_gpus"] == 0 and optional_gpus > 0 and have_gpus >= optional_gpus:
            log.info("%s (device auto): the Ray cluster has %s GPUs; %s GPU per unit", stage.name, have_gpus, optional_gpus)
            opts["num_gpus"] = optional_gpus
        have_cpus = cluster.get("CPU", 0)
        if opts["num_cpus"] > have_cpus:
            log.warning("%s asks for %s CPUs per unit but the Ray cluster has %s; asking for %s", stage.name, opts["num_cpus"], have_cpus, have_cpus)
            opts["num_cpus"] = float(have_cpus)
        return opts

    def map_units(self, stage, run: RunFolder, units: list[str]) -> Iterator[tuple[str, Any]]:
        """Submit every unit as a task; yield ``(unit, stats | exception)`` as they finish."""
        if not units:
            return
        ray = self._ray()
        task = ray.remote(_run_unit)
        opts = self._options(ray, stage)
        stage_ref = ray.put(stage)
        root = str(run.root)
        queue = list(units)
        cap = self.workers or len(units)
        tries = {u: 0 for u in units}
        pending: dict[Any, str] = {}
        bar = progress(total=len(units), desc=f"{stage.name} (ray)", unit="unit")

        def submit(unit: str) -> None:
            pending[task.options(name=f"{stage.name}:{unit}", **opts).remote(stage_ref, root, unit)] = unit

        try:
            while queue or pending:
                while queue and len(pending) < cap:
                    submit(queue.pop(0))
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                unit = pending.pop(ref)
                try:
                    outcome: Any = ray.get(ref)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported per unit
                    outcome = _unwrap(exc)
                    if tries[unit] < self.retries and retryable(outcome):
                        tries[unit] += 1
                        log.warning("%s unit %s failed (%s); retry %d/%d", stage.name, unit, _short(outcome), tries[unit], self.retries)
                        time.sleep(0.2 * tries[unit])
                        submit(unit)
                        continue
                yield unit, outcome
                bar.update(1)
        finally:
            bar.close()
            for ref in pending:  # interrupted: do not leave tasks running for nobody
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass


def _unwrap(exc: BaseException) -> BaseException:
    """The exception the unit raised (RayTaskError wraps it), or Ray's own (worker crashed, ...)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and type(exc).__name__.startswith("RayTaskError"):
        return cause
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not set(ln.strip()) <= set("^~ ")]
    if len(lines) > 1:  # Ray's own errors carry a remote traceback: keep the last line
        return RayUnitError(f"{type(exc).__name__}: {lines[-1]}")
    return exc


class RayUnitError(SystemFailure):
    """A Ray system error (worker crashed, task unpicklable, node lost), in one line."""


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
