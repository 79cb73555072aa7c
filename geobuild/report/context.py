"""What the report's pages are written from: one run's numbers and its sampled queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .datastats import DataStats, PlaceMix
from .runinfo import StageRow


@dataclass
class ReportContext:
    run_name: str
    gallery_name: str | None  # the gallery run's folder name when mined with --gallery (and it is here)
    gallery_recorded: bool  # mined with --gallery
    saved: dict[str, Any]  # summary.json of the last geobuild run
    pipeline: dict[str, Any]  # name and description of the pipeline file
    config: dict[str, Any]  # config.yaml without local paths
    stages: list[StageRow]
    stats: DataStats | None  # None: nothing mined yet
    gallery_mix: PlaceMix | None
    records: list[dict[str, Any]]  # the sampled queries (sample.query_records)
    page_size: int
    seed: int
