"""Reports from result files alone (no torch): terminal tables, Markdown, CSV, and ``--html``'s page and plots."""

from .core import Report, build_report, write_report
from .terminal import print_report

__all__ = ["Report", "build_report", "print_report", "write_report"]
