"""Report tables: how a study's numbers are written into report.md cells (class and text studies)."""
from __future__ import annotations

from typing import Any


def format_cell(v: Any, pct: bool = False) -> str:
  """A report table cell: — for None, a percentage, or 3 significant digits."""
  if v is None:
    return "—"
  return f"{100 * v:.1f}%" if pct else (f"{v:.3g}" if isinstance(v, float) else str(v))
