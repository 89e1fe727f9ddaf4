"""The memorization–alignment frontier (minidiff.study.frontier) on constructed tables."""
import pytest

from minidiff.study import frontier

ArmPoint = frontier.ArmPoint


def _by_name(points):
  return {p.name: p for p in points}


HAND = [
    ArmPoint("A", "cfg", copy=0.30, alignment=0.90),
    ArmPoint("B", "cfg", copy=0.20, alignment=0.85),
    ArmPoint("C", "cfg", copy=0.25, alignment=0.80),  # dominated by B (better on both)
    ArmPoint("D", "late", copy=0.10, alignment=0.70, fd=12.0),
    ArmPoint("E", "late", copy=0.10, alignment=0.65),  # dominated by D (same copy, lower alignment)
    ArmPoint("F", "perturb", copy=0.20, alignment=0.85),  # tied with B on both axes: both kept
    ArmPoint("G", "perturb", copy=0.40, alignment=0.90),  # dominated by A (same alignment, more copy)
    ArmPoint("H", "perturb", copy=0.05, alignment=0.50),
]


def test_dominance():
  p = _by_name(HAND)
  assert frontier.dominates(p["B"], p["C"]) and not frontier.dominates(p["C"], p["B"])
  assert frontier.dominates(p["D"], p["E"])  # weakly better on copy, strictly on alignment
  assert frontier.dominates(p["A"], p["G"])  # weakly better on alignment, strictly on copy
  assert not frontier.dominates(p["B"], p["F"]) and not frontier.dominates(p["F"], p["B"])
  assert not frontier.dominates(p["A"], p["A"])
  assert not frontier.dominates(p["A"], p["H"]) and not frontier.dominates(p["H"], p["A"])


def test_pareto_front_hand_made():
  front = frontier.pareto_front(HAND)
  assert [p.name for p in front] == ["H", "D", "B", "F", "A"]
  assert [p.alignment for p in front] == sorted(p.alignment for p in front)
  assert [p.copy for p in front] == sorted(p.copy for p in front)  # the trade-off
  assert _by_name(front)["D"].fd == 12.0  # fd travels with the arm
  # Deterministic: the input order does not matter.
  assert frontier.pareto_front(HAND[::-1]) == front
  assert frontier.pareto_front([]) == []
  assert frontier.pareto_front(HAND[:1]) == HAND[:1]


def test_arm_point_rejects_nan():
  with pytest.raises(ValueError):
    ArmPoint("x", "cfg", copy=float("nan"), alignment=0.5)


HEADLINE = [
    ArmPoint("cfg w=0", "cfg", copy=0.10, alignment=0.60),
    ArmPoint("cfg w=1", "cfg", copy=0.42, alignment=0.91),
    ArmPoint("cfg w=3", "cfg", copy=0.55, alignment=0.95, fd=30.0),
    ArmPoint("interval [0.2,0.8]", "interval", copy=0.30, alignment=0.93),
    ArmPoint("interval [0.4,0.8]", "interval", copy=0.25, alignment=0.92),  # exactly at 0.95 − 0.03
    ArmPoint("interval [0.3,0.8]", "interval", copy=0.25, alignment=0.94),  # same copy, higher alignment
    ArmPoint("late k=20", "late_start", copy=0.05, alignment=0.70),
    ArmPoint("late k=10", "late_start", copy=0.08, alignment=0.88),  # 0.07 below: out of tolerance
]


def test_reference_alignment():
  assert frontier.reference_alignment(HEADLINE) == 0.95
  assert frontier.reference_alignment(HEADLINE, family="late_start") == 0.88
  with pytest.raises(ValueError):
    frontier.reference_alignment(HEADLINE, family="missing")


def test_best_at_alignment_headline():
  reference = frontier.reference_alignment(HEADLINE)
  best = frontier.best_at_alignment(HEADLINE, reference_alignment=reference, tolerance=0.03)
  assert list(best) == ["cfg", "interval", "late_start"]  # order of first appearance
  assert best["cfg"].name == "cfg w=3"  # w=1 (0.91) is below 0.92
  assert best["interval"].name == "interval [0.3,0.8]"  # copy tie → higher alignment
  assert best["late_start"] is None  # no late-start arm within tolerance
  # A looser tolerance admits the late start and cfg w=1.
  loose = frontier.best_at_alignment(HEADLINE, reference_alignment=reference, tolerance=0.1)
  assert (loose["cfg"].name, loose["late_start"].name) == ("cfg w=1", "late k=10")
  # Explicit families: in the given order, an absent family maps to None.
  chosen = frontier.best_at_alignment(HEADLINE, reference_alignment=reference,
                                      families=["late_start", "missing", "cfg"])
  assert list(chosen) == ["late_start", "missing", "cfg"]
  assert chosen["missing"] is None and chosen["cfg"].name == "cfg w=3"


def test_best_at_alignment_boundary_and_name_ties():
  twins = [ArmPoint("b", "x", copy=0.2, alignment=0.9), ArmPoint("a", "x", copy=0.2, alignment=0.9)]
  assert frontier.best_at_alignment(twins, reference_alignment=0.9)["x"].name == "a"
  # The threshold 0.95 − 0.03 is 0.9199999999999999 in floats; 0.92 still counts as within tolerance.
  edge = [ArmPoint("edge", "x", copy=0.1, alignment=0.92)]
  assert frontier.best_at_alignment(edge, reference_alignment=0.95)["x"].name == "edge"
  assert frontier.best_at_alignment(edge, reference_alignment=0.96)["x"] is None
  with pytest.raises(ValueError):
    frontier.best_at_alignment(edge, reference_alignment=0.95, tolerance=-0.01)
