"""``geobuild report``: a static site (HTML, thumbnails, small scripts) to look at what a run built."""

from .build import ReportConfig, ReportResult, build_report

__all__ = ["ReportConfig", "ReportResult", "build_report"]
