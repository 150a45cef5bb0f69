"""Numbers as table cells: the same text in the terminal, Markdown, CSV and the HTML page."""

from __future__ import annotations

from typing import Any

from ..results.aggregate import SeedStats


def _num(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}%"


def _stats(s: SeedStats, digits: int = 3, pct: bool = False) -> str:
    """``mean ± std`` (``±`` only with two seeds or more)."""
    if s.mean is None:
        return ""
    if pct:
        return _pct(s.mean) + (f" ± {100 * s.std:.1f}" if s.std is not None else "")
    return f"{s.mean:.{digits}f}" + (f" ± {s.std:.{digits}f}" if s.std is not None else "")


def _plain(value: Any) -> Any:
    return "" if value is None else value


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])
