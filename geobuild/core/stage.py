"""The stage contract: units of work, one process call per unit, and the hooks of a stage's rules.

A :class:`Stage` names its units (usually one per shard, ``00000`` ...) and processes one unit at a
time. :func:`geobuild.core.runner.run_stage` runs it the same way for ``geobuild run`` and for the
single-stage command: ``preflight`` and ``check_inputs`` (before anything is recorded), the recorded configuration
(``on_reset`` when ``--overwrite`` redoes the stage), ``prepare``, the units that are not done, then
``finalize`` and ``after``. :func:`geobuild.core.commit.execute_unit` commits each unit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterator

from .runfolder import RunFolder


@dataclass
class UnitResult:
    """What a unit reports: counters for the stats JSON and the ledger rows of its rejects."""

    stats: dict[str, Any] = field(default_factory=dict)
    ledger: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Accounting:
    """How a stage's per-unit stats add up, for ``geobuild verify``: ``inputs`` = ``outputs`` +
    ``rejected`` (stats keys; ``outputs`` lists alternatives, the first present counts;
    ``rejected`` None: every input row is in the ledger, with status ``ok`` for the outputs), the
    ledger holds the rejected rows, and ``inputs`` equals the ``upstream`` = (stage, stats key) of
    the same unit when given."""

    inputs: str
    outputs: tuple[str, ...]
    rejected: str | None
    upstream: tuple[str, str] | None = None


@dataclass
class StageSummary:
    """What one run of a stage did: units done now, skipped (done before), failed (with a message)."""

    stage: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


class Stage:
    """Base class for stages. Subclasses are picklable dataclasses holding their config as ``cfg``."""

    name: ClassVar[str] = "stage"
    #: how the unit stats add up (``geobuild verify``); None: not checked
    accounting: ClassVar[Accounting | None] = None

    @property
    def resources(self) -> dict[str, float]:
        """What a unit needs, for executors that schedule it (Ray): one CPU, and one GPU when the
        config's ``device`` asks for one (see :func:`device_resources`)."""
        return device_resources(str(getattr(getattr(self, "cfg", None), "device", "cpu")))

    # -- the units ----------------------------------------------------------------------------
    def units(self, run: RunFolder) -> list[str]:
        """Deterministic, sorted list of unit names for this run."""
        raise NotImplementedError

    def process(self, run: RunFolder, unit: str) -> UnitResult:
        """Do one unit: write its outputs atomically and return its stats and ledger rows."""
        raise NotImplementedError

    def depends_on(self, run: RunFolder, unit: str) -> list[tuple[str, str]]:
        """The ``(stage, unit)`` pairs of earlier stages of this run whose outputs ``unit`` reads.
        Their output digests go into the marker; when one of them is redone with other bytes,
        ``unit`` is stale and is redone too. Default: none."""
        return []

    def output_folders(self, run: RunFolder) -> list:
        """Folders outside the run folder this stage writes (their stale temporaries are removed
        before it runs). Default: none."""
        return []

    def input_paths(self) -> dict[str, str | None]:
        """Keys of the recorded configuration that name files or folders from outside the run
        (-> their paths). A moved or copied input with the same content is no configuration change."""
        return {}

    def config(self) -> Any:
        """The configuration recorded in the run's config.yaml under this stage's name: the config's
        ``recorded()`` (what determines the outputs) when it has one, else the whole config."""
        cfg = getattr(self, "cfg", None)
        if cfg is None:
            return {}
        recorded = getattr(cfg, "recorded", None)
        return recorded() if callable(recorded) else asdict(cfg)

    # -- the stage's rules (hooks) ---------------------------------------------------------------
    def preflight(self, run: RunFolder, overwrite: bool = False) -> None:
        """Fail before any work of a whole pipeline: what comes from outside the run (input files,
        models, tokens). ``geobuild run`` calls it for every stage before the first one starts."""

    def check_inputs(self, run: RunFolder, overwrite: bool = False) -> None:
        """Fail before this stage records its configuration: the outputs of earlier stages it reads."""

    def on_reset(self, run: RunFolder) -> None:
        """The stage's markers were removed (``--overwrite``): forget what depends on them."""

    def prepare(self, run: RunFolder) -> None:
        """After the configuration is recorded, before the units: remove leftovers, redo stale units."""

    def run_units(self, run: RunFolder, executor: Any, todo: list[str]) -> Iterator[tuple[str, Any]]:
        """Run the ``todo`` units, yielding ``(unit, stats | exception)``; default: on ``executor``."""
        return executor.map_units(self, run, todo)

    def finalize(self, run: RunFolder, summary: StageSummary) -> None:
        """Called once after every unit succeeded (e.g. write sizes.json, merge stats)."""

    def after(self, run: RunFolder, summary: StageSummary) -> None:
        """Called after ``finalize``: checks of the finished outputs, what the next stage must redo."""


#: a resources key for executors that schedule GPUs (Ray): this many GPUs per unit when the cluster
#: has them, else none (and no warning); how ``device: auto`` asks for a GPU
GPU_IF_AVAILABLE = "num_gpus_if_available"


def device_resources(device: str, num_cpus: float = 1.0) -> dict[str, float]:
    """A unit's resources for a stage running on ``device``: one GPU on ``cuda``/``cuda:N``; on
    ``auto`` one GPU if the cluster has any (decided by the executor, see :data:`GPU_IF_AVAILABLE`);
    none otherwise (``cpu``)."""
    res = {"num_cpus": float(num_cpus), "num_gpus": 1.0 if str(device).startswith("cuda") else 0.0}
    if device == "auto":
        res[GPU_IF_AVAILABLE] = 1.0
    return res
