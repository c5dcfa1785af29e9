"""Survey reports: the bundled notebooks (``reports/notebooks``) executed by papermill and rendered to HTML."""

from __future__ import annotations

from .report import ReportError, notebook_path, report

__all__ = ["report", "ReportError", "notebook_path"]
