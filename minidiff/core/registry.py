"""Every guidance rule by its spec name: one registry, read by the specs, the CLI, the study, the API.

A rule registers itself by declaring `name`, `family` and `help` on its class (see
minidiff.core.rule); its parameters are its dataclass fields. This module imports the modules that
define the built-in rules and every module of `minidiff.core.rules` (where a new rule is one file),
then answers: which names exist (`RULE_NAMES`), a rule's parameters with their defaults
(`rule_params`), its family and help, and builds one from (command-line) strings (`make_rule`).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from minidiff.core import guidance, mitigations, rule, transitions  # noqa: F401 (they register)
from minidiff.core import rules as _rules_package


def _load_rule_files() -> None:
  for info in sorted(pkgutil.iter_modules(_rules_package.__path__), key=lambda m: m.name):
    importlib.import_module(f"{_rules_package.__name__}.{info.name}")


_load_rule_files()
RULES: dict[str, type[rule.Rule]] = rule.registered()
# The peers' mitigations are listed last (in help texts and in the docs' table).
MITIGATION_NAMES: tuple[str, ...] = tuple(n for n in mitigations.MITIGATIONS if n in RULES)
RULE_NAMES: tuple[str, ...] = tuple(n for n in RULES if n not in MITIGATION_NAMES) + MITIGATION_NAMES


def rule_class(name: str) -> type[rule.Rule]:
  """The class registered as `name`; ValueError listing the names for an unknown one."""
  if name not in RULES:
    raise ValueError(f"Unknown guidance strategy {name!r}; choose one of {RULE_NAMES} "
                     f"(python sample.py --help lists their parameters).")
  return RULES[name]


def rule_params(name: str) -> dict[str, Any]:
  """The spec parameters of rule `name` with their defaults (its init fields, in order)."""
  cls = rule_class(name)
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.init and not f.kw_only and f.default is not dataclasses.MISSING}


def family_of(name: str) -> str:
  """The frontier family of rule `name`'s arms (e.g. "cfg" for none, conditional and cfg)."""
  return rule_class(name).family


def help_of(name: str) -> str:
  """One line: what rule `name` does."""
  return rule_class(name).help


def _coerce(value: Any, default: Any) -> Any:
  """A command-line string as the type of the field's default ("600" → 600 for an int field)."""
  if not isinstance(value, str) or isinstance(default, str):
    return value
  as_float = float(value)
  if isinstance(default, int) and not isinstance(default, bool):
    if not rule.is_integer(as_float):
      raise ValueError(f"expected an integer, got {value!r}")
    return int(as_float)
  return as_float


def make_rule(name: str, **overrides: Any) -> rule.Rule:
  """Builds rule `name` with keyword overrides, e.g. make_rule("static", tau=600, w_post=3).

  String values (from a command line) become the parameter's type. Raises ValueError for unknown
  names, unknown parameters or bad values (the rule's own checks).
  """
  params = rule_params(name)
  unknown = sorted(set(overrides) - set(params))
  if unknown:
    raise ValueError(f"Strategy {name!r} has no parameter(s) {unknown}; valid: {sorted(params)}.")
  kw = {}
  for k, v in overrides.items():
    try:
      kw[k] = _coerce(v, params[k])
    except ValueError as e:
      raise ValueError(f"Strategy {name!r}: bad value {k}={v!r}: {e}.") from None
  return RULES[name](**kw)
