"""The memorization–alignment frontier of a study's arms.

Each arm (a guidance strategy at one setting) is a point: its copy rate on the memorized conditions
(lower is better) and its alignment, the evaluation classifier's class accuracy (higher is better).
`pareto_front` keeps the arms no other arm beats on both; `best_at_alignment` answers the headline
question "at (about) the alignment of the best CFG arm, how low does each family push copying?".

Only the standard library is used.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

_ROUND_OFF = 1e-12  # Slack on the alignment threshold so that e.g. 0.95 − 0.03 admits 0.92.


@dataclasses.dataclass(frozen=True)
class ArmPoint:
  """One arm of a study on the frontier plot.

  Attributes:
    name: the arm's label (unique within a table).
    family: the strategy family, e.g. "cfg", "interval", "late_start".
    copy: copy rate on the memorized conditions (lower is better).
    alignment: class accuracy of the samples (higher is better).
    fd: Fréchet distance to the reference set, when measured (carried along, not compared).
  """
  name: str
  family: str
  copy: float
  alignment: float
  fd: float | None = None

  def __post_init__(self):
    if not (math.isfinite(self.copy) and math.isfinite(self.alignment)):
      raise ValueError(f"Arm {self.name!r} needs finite copy and alignment; "
                       f"got copy={self.copy}, alignment={self.alignment}.")


def dominates(p: ArmPoint, q: ArmPoint) -> bool:
  """Whether p dominates q: p is at least as good on both axes and strictly better on one.

  "Good" means a lower copy rate and a higher alignment; fd and the names are ignored. Two arms with
  equal (copy, alignment) do not dominate each other.
  """
  weakly = p.copy <= q.copy and p.alignment >= q.alignment
  return weakly and (p.copy < q.copy or p.alignment > q.alignment)


def _front_order(p: ArmPoint) -> tuple:
  return (p.alignment, p.copy, p.name, p.family)


def pareto_front(points: Sequence[ArmPoint]) -> list[ArmPoint]:
  """The non-dominated arms (see `dominates`), sorted by increasing alignment.

  Along the front the copy rate increases with alignment (the trade-off). Arms tied on both axes are
  all kept and ordered by name, then family, so the result does not depend on the input order.

  Args:
    points: the study's arms.

  Returns:
    The front, lowest alignment first.
  """
  front = [p for p in points if not any(dominates(q, p) for q in points)]
  return sorted(front, key=_front_order)


def reference_alignment(points: Sequence[ArmPoint], *, family: str = "cfg") -> float:
  """The highest alignment among the arms of `family` (normally the best CFG arm).

  Raises:
    ValueError: when no arm belongs to `family`.
  """
  alignments = [p.alignment for p in points if p.family == family]
  if not alignments:
    raise ValueError(f"No arm of family {family!r}; families present: "
                     f"{sorted({p.family for p in points})}.")
  return max(alignments)


def best_at_alignment(points: Sequence[ArmPoint], *, reference_alignment: float,
                      tolerance: float = 0.03,
                      families: Sequence[str] | None = None) -> dict[str, ArmPoint | None]:
  """Per family, the least-copying arm whose alignment is within `tolerance` of the reference.

  An arm is eligible when alignment ≥ reference_alignment − tolerance (up to 1e-12 of float
  round-off). Among eligible arms the lowest copy rate wins; ties go to the higher alignment, then
  to the name in sort order.

  Args:
    points: the study's arms.
    reference_alignment: the alignment to match, normally `reference_alignment(points)`.
    tolerance: how much alignment an arm may give up (absolute, in accuracy units).
    families: the families to report, in this order; by default those of `points` in order of first
      appearance. A family with no arm at all also maps to None.

  Returns:
    family → best eligible arm, or None when none of its arms is within tolerance.
  """
  if tolerance < 0:
    raise ValueError(f"tolerance must be non-negative; got {tolerance}.")
  if families is None:
    families = list(dict.fromkeys(p.family for p in points))
  threshold = reference_alignment - tolerance - _ROUND_OFF
  best: dict[str, ArmPoint | None] = {}
  for family in families:
    eligible = [p for p in points if p.family == family and p.alignment >= threshold]
    best[family] = min(eligible, key=lambda p: (p.copy, -p.alignment, p.name), default=None)
  return best
