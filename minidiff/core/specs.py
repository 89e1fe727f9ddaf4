"""Spec parsing: guidance specs, prompt-perturbation specs and their `guidance+perturbation` pairs.

A guidance spec is `name[:param=value[:param=value]]`, e.g. `static:tau=600:w_post=3`; a text spec
may add a prompt perturbation of Somepalli et al. 2023 after a "+", e.g. `cfg+random_tokens:k=4`.
Parsing checks names, parameters and ranges and builds the rules (minidiff.core.registry) and
the perturbation parameters; it runs nothing. The perturbations themselves (inserting words,
drawing the embedding noise) are minidiff.study.perturbation's. A leaf of the core: the config
layer validates `config.study.guidance` with it.

Sweeps: a parameter may carry a list or an inclusive range, each combination one arm:
`cfg:w=1,2,3` (3 arms), `static:tau=200:800:100` (7), `opposite:tau=400,500:s=1,2` (4). In a
comma-separated list a piece that starts with a number continues the previous parameter's list.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Any, Sequence

from minidiff.core import registry, rule

# Every name a guidance spec may start with (minidiff.core.registry: one class per name).
STRATEGY_NAMES: tuple[str, ...] = registry.RULE_NAMES
strategy_params = registry.rule_params
make_strategy = registry.make_rule


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _is_number(s: str) -> bool:
  return bool(_NUMBER.match(s.strip()))


def _fmt(v: float) -> str:
  return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _range(lo: str, hi: str, step: str, where: str) -> list[str]:
  a, b, d = float(lo), float(hi), float(step)
  if d <= 0 or b < a:
    raise ValueError(f"Sweep {where!r}: a range lo:hi:step needs step > 0 and hi ≥ lo, "
                     f"got {lo}:{hi}:{step}.")
  n = int(round((b - a) / d))
  if abs(a + n * d - b) > 1e-9 * max(1.0, abs(b)):
    raise ValueError(f"Sweep {where!r}: {lo}:{hi}:{step} does not reach hi={hi} in whole steps.")
  return [_fmt(a + i * d) for i in range(n + 1)]


def _parse_part(part: str, where: str) -> tuple[str, list[tuple[str, list[str]]]]:
  """'static:tau=200:800:100:w_post=3' → ('static', [('tau', [200 … 800]), ('w_post', ['3'])])."""
  name, *rest = part.split(":")
  params: list[tuple[str, list[str]]] = []
  numbers: list[str] = []  # bare numbers after a param=value: a range lo:hi:step
  def close():
    if numbers:
      key, values = params[-1]
      if len(values) != 1 or len(numbers) != 2:
        raise ValueError(f"Spec {where!r}: a range is param=lo:hi:step (three numbers), got "
                         f"{key}={':'.join(values + numbers)}.")
      params[-1] = (key, _range(values[0], *numbers, where))
      numbers.clear()
  for piece in rest:
    if "=" in piece:
      close()
      key, value = piece.split("=", 1)
      params.append((key.strip(), [v.strip() for v in value.split(",")]))
    elif _is_number(piece) and params:
      numbers.append(piece)
    else:
      raise ValueError(f"Spec {where!r}: expected param=value, got {piece!r}.")
  close()
  return name, params


def _join(name: str, params: list[tuple[str, str]]) -> str:
  return ":".join([name] + [f"{k}={v}" for k, v in params])


def split_specs(text: str) -> list[str]:
  """Splits a comma-separated list of (sweep) specs; a piece starting with a number continues the
  previous spec's last parameter list (`cfg:w=1,3,static` → ['cfg:w=1,3', 'static'])."""
  specs: list[str] = []
  for piece in (p.strip() for p in text.split(",")):
    if not piece:
      continue
    head = piece.split(":", 1)[0].split("+", 1)[0]  # `3+random_tokens:k=4` continues a list too
    if _is_number(head) and specs:
      specs[-1] += "," + piece
    elif _is_number(head):
      raise ValueError(f"Guidance list {text!r} starts with a number ({piece!r}); start with a "
                       f"strategy name, e.g. cfg:w={piece}.")
    else:
      specs.append(piece)
  return specs


def expand_spec(spec: str) -> list[str]:
  """All arms of one (sweep) spec, in order: the first parameter varies slowest."""
  parts = []
  for part in spec.split("+"):
    name, params = _parse_part(part.strip(), spec)
    for key, values in params:
      if any(not v.strip() for v in values):
        raise ValueError(f"Spec {spec!r}: empty value in {key}={','.join(values)}.")
    parts.append((name, params))
  lists = [v for _, params in parts for _, v in params]
  arms = []
  for combo in itertools.product(*lists):
    chosen = iter(combo)
    pieces = []
    for name, params in parts:
      pieces.append(_join(name, [(k, next(chosen)) for k, _ in params]))
    arms.append("+".join(pieces))
  return arms


def expand_specs(text: str) -> list[str]:
  """Every arm of a comma-separated list of sweep specs, duplicates refused."""
  arms = [arm for spec in split_specs(text) for arm in expand_spec(spec)]
  seen = set()
  dups = [a for a in arms if a in seen or seen.add(a)]
  if dups:
    raise ValueError(f"Guidance arms repeat: {sorted(set(dups))}; give each arm once.")
  return arms


def slug(label: str) -> str:
  """A file-name-safe form of a spec label: `static:tau=600` → `static_tau600`."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace(":", "_").replace("=", "").replace("+", "_"))


@dataclasses.dataclass(frozen=True)
class GuidanceSpec:
  label: str  # the spec as written, e.g. "static:tau=600"
  strategy: rule.Rule

  @property
  def slug(self) -> str:
    """A file-name-safe form of the label."""
    return slug(self.label)


def _split(specs: str | Sequence[str]) -> list[str]:
  """Every arm of the specs: a string is a comma-separated list of (sweep) specs; each item of a
  sequence is one (sweep) spec."""
  if isinstance(specs, str):
    return expand_specs(specs)
  return [arm for item in specs if item.strip() for arm in expand_spec(item.strip())]


def parse_guidance(specs: str | Sequence[str], *, T: int, overrides: dict[str, str] | None = None  # noqa: N803
                   ) -> list[GuidanceSpec]:
  """Parses comma-separated guidance specs; `overrides` apply to every strategy that has the field.

  Raises ValueError (before anything is compiled) for unknown strategies or parameters and for
  values out of range, e.g. τ outside [0, T).
  """
  items = _split(specs)
  if not items:
    raise ValueError("No guidance strategy given; choose from " + ", ".join(STRATEGY_NAMES))
  overrides = dict(overrides or {})
  used = set()
  out = []
  for item in items:
    name, *params = item.split(":")
    kw = {}
    for p in params:
      if "=" not in p:
        raise ValueError(f"Guidance spec {item!r}: expected param=value, got {p!r}.")
      k, v = p.split("=", 1)
      kw[k] = v
    valid = strategy_params(name)  # raises for unknown names
    for k, v in overrides.items():
      if k in valid and k not in kw:
        kw[k] = v
        used.add(k)
    strategy = make_strategy(name, **kw)
    try:
      strategy.validate(T)
    except ValueError as e:
      raise ValueError(f"Guidance spec {item!r}: {e}") from None
    out.append(GuidanceSpec(item, strategy))
  unused = set(overrides) - used
  if unused:
    raise ValueError(f"Override(s) {sorted(unused)} match no parameter of {items}.")
  labels = [s.label for s in out]
  if len(set(labels)) != len(labels):
    raise ValueError(f"Guidance specs repeat: {labels}.")
  return out


@dataclasses.dataclass(frozen=True)
class EmbeddingNoise:
  """Gaussian noise of standard deviation `lam` on the text embedding (the encoder's output)."""

  lam: float = 0.1

  def validate(self) -> None:
    if not (math.isfinite(self.lam) and self.lam >= 0):
      raise ValueError(f"embedding_noise: lam={self.lam} must be a finite number ≥ 0.")


@dataclasses.dataclass(frozen=True)
class _Insertion:
  """Inserts k new words at random positions of the prompt (between, before or after its words)."""

  k: int = 4

  name = "insertion"

  def validate(self) -> None:
    if int(self.k) != self.k or self.k < 1:
      raise ValueError(f"{self.name}: k={self.k} must be an integer ≥ 1.")


@dataclasses.dataclass(frozen=True)
class RandomTokens(_Insertion):
  """k random vocabulary words (Somepalli et al.'s "random token addition")."""

  name = "random_tokens"


@dataclasses.dataclass(frozen=True)
class RepeatWords(_Insertion):
  """k words of the prompt repeated (Somepalli et al.'s "caption word repetition")."""

  name = "repeat_words"


@dataclasses.dataclass(frozen=True)
class RandomNumbers(_Insertion):
  """k random integers in [0, 10⁶) (Somepalli et al.'s "random numbers addition")."""

  name = "random_numbers"


Perturbation = EmbeddingNoise | RandomTokens | RepeatWords | RandomNumbers
PERTURBATIONS = {"embedding_noise": EmbeddingNoise, "random_tokens": RandomTokens,
                 "repeat_words": RepeatWords, "random_numbers": RandomNumbers}


def make_perturbation(spec: str) -> Perturbation:
  """Parses `name[:param=value]`, e.g. `embedding_noise:lam=0.1` or `random_tokens:k=4`.

  Raises ValueError for unknown names or parameters and for values out of range.
  """
  name, *params = spec.strip().split(":")
  if name not in PERTURBATIONS:
    raise ValueError(f"Unknown prompt perturbation {name!r}; choose one of {', '.join(PERTURBATIONS)}.")
  cls = PERTURBATIONS[name]
  fields = {f.name: f.type for f in dataclasses.fields(cls)}
  kw = {}
  for p in params:
    if "=" not in p:
      raise ValueError(f"Perturbation {spec!r}: expected param=value, got {p!r}.")
    k, v = p.split("=", 1)
    if k not in fields:
      raise ValueError(f"Perturbation {name!r} has no parameter {k!r}; it has {sorted(fields)}.")
    try:
      kw[k] = float(v) if k == "lam" else int(v)
    except ValueError as e:
      raise ValueError(f"Perturbation {spec!r}: {k}={v!r} is not a number.") from e
  perturbation = cls(**kw)
  perturbation.validate()
  return perturbation


@dataclasses.dataclass(frozen=True)
class TextSpec:
  """A guidance strategy and an optional prompt perturbation; `label` as written."""

  label: str
  guidance: GuidanceSpec
  perturbation: Perturbation | None

  @property
  def strategy(self) -> rule.Rule:
    return self.guidance.strategy

  @property
  def slug(self) -> str:
    return slug(self.label)


def parse_specs(specs: str | Sequence[str], *, T: int, overrides: dict[str, str] | None = None  # noqa: N803
                ) -> list[TextSpec]:
  """Parses comma-separated `guidance[+perturbation]` specs (ValueError before any compile)."""
  items = _split(specs)
  if not items:
    raise ValueError("No guidance strategy given; choose from " + ", ".join(STRATEGY_NAMES))
  parts = [item.split("+", 1) for item in items]
  bases = list(dict.fromkeys(p[0].strip() for p in parts))  # each guidance spec parsed once
  by_base = {g.label: g for g in parse_guidance(bases, T=T, overrides=overrides)}
  out = [TextSpec(item, by_base[p[0].strip()], make_perturbation(p[1]) if len(p) > 1 else None)
         for item, p in zip(items, parts)]
  labels = [s.label for s in out]
  if len(set(labels)) != len(labels):
    raise ValueError(f"Specs repeat: {labels}.")
  return out
