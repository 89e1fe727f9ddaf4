"""The package's imports go one way: no circles, and no import against the layer order.

Walks every module of minidiff with `ast` (imports inside functions included) and checks each
`minidiff` import against LAYERS. A layer is a subpackage (or a top-level module); it may import
itself and the layers listed for it, nothing else. Fails naming the file, line and import.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "minidiff")

# layer -> the layers it may import (besides itself). The order, bottom up:
#   core, data, runtime  <  theory (core), metrics (data), nn (data)  <  config (core, data, nn)
#   <  train (+ config, metrics)  <  study (+ train)  <  api (the public entry: load / sample)
LAYERS: dict[str, set[str]] = {
    "runtime": set(),
    "core": set(),
    "data": set(),
    "theory": {"core"},
    "metrics": {"data"},
    "nn": {"data"},
    "config": {"core", "data", "nn"},
    "train": {"core", "data", "nn", "config", "metrics"},  # the monitor measures copying
    "study": {"core", "data", "nn", "config", "train", "metrics"},
    "api": {"core", "data", "nn", "config", "train", "metrics", "study"},
}


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
  return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _modules() -> dict[str, str]:
  """{dotted module name: file path} of every module of the package."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        out[_module_name(path)] = path
  return out


def _imports(path: str, name: str, modules: dict[str, str]) -> list[tuple[int, str, str]]:
  """(line, imported minidiff module, the import as written) of every import in the file."""
  tree = ast.parse(open(path).read(), path)
  is_package = path.endswith("__init__.py")
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "minidiff":
          out.append((node.lineno, a.name, f"import {a.name}"))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against this module's package
        parts = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([base] if base else []))
      if base.split(".")[0] != "minidiff":
        continue
      written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
      for a in node.names:  # `from minidiff.core import specs` imports the module minidiff.core.specs
        sub = f"{base}.{a.name}"
        out.append((node.lineno, sub if sub in modules else base, written))
  return out


def _layer(module: str) -> str | None:
  """The layer of a module: its subpackage, or the top-level module's name (None: the package root)."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def _graph() -> tuple[dict[str, str], dict[str, list[tuple[int, str, str]]]]:
  modules = _modules()
  return modules, {m: _imports(p, m, modules) for m, p in modules.items()}


def layer_violations(modules, graph) -> list[str]:
  """Every import that goes against LAYERS, as 'file:line: import (layer a may not import layer b)'."""
  bad = []
  for module, imports in graph.items():
    src = _layer(module)
    for line, target, written in imports:
      dst = _layer(target)
      if src is None or dst is None or dst == src:
        continue  # the package root re-exports lazily; a layer may import itself
      if src not in LAYERS or dst not in LAYERS:
        bad.append(f"{os.path.relpath(modules[module], ROOT)}:{line}: {written} (layer {src!r} or "
                   f"{dst!r} is not in tests/test_layers.py LAYERS: add it there)")
      elif dst not in LAYERS[src]:
        bad.append(f"{os.path.relpath(modules[module], ROOT)}:{line}: {written} (layer {src!r} may "
                   f"not import layer {dst!r}; it may import {sorted(LAYERS[src]) or 'nothing of ours'})")
  return bad


def import_circles(modules, graph) -> list[str]:
  """Every circle of module imports, each as 'a.py:line: import -> b.py:line: import -> ... -> a'."""
  edges = {m: [(t, line, w) for line, t, w in imps if t in graph and t != m] for m, imps in graph.items()}
  circles, seen = [], set()
  state: dict[str, int] = {}  # 1 = on the current path, 2 = done
  path: list[tuple[str, int, str]] = []

  def visit(m: str) -> None:
    state[m] = 1
    for t, line, written in edges[m]:
      path.append((m, line, written))
      if state.get(t) == 1:
        cycle = path[[p[0] for p in path].index(t):]
        key = frozenset(p[0] for p in cycle)
        if key not in seen:
          seen.add(key)
          circles.append(" -> ".join(f"{os.path.relpath(modules[a], ROOT)}:{ln}: {w}"
                                     for a, ln, w in cycle) + f" -> {t}")
      elif t not in state:
        visit(t)
      path.pop()
    state[m] = 2

  for m in sorted(edges):
    if m not in state:
      visit(m)
  return circles


def test_no_import_circles():
  modules, graph = _graph()
  circles = import_circles(modules, graph)
  assert not circles, "Import circles (imports inside functions count):\n" + "\n".join(circles)


def test_imports_follow_the_layer_order():
  modules, graph = _graph()
  assert {_layer(m) for m in modules} - {None} == set(LAYERS), "a layer is missing from LAYERS"
  bad = layer_violations(modules, graph)
  assert not bad, "Imports against the layer order:\n" + "\n".join(bad)


def test_the_walk_sees_imports_inside_functions():
  modules, graph = _graph()
  targets = {t for imps in graph.values() for _, t, _ in imps}
  assert "minidiff.core.specs" in {t for _, t, _ in graph["minidiff.config"]}
  assert "minidiff.metrics.detection" in {t for _, t, _ in graph["minidiff.study.evaluation"]}
  assert targets


def test_importing_minidiff_is_light():
  """`import minidiff` loads neither JAX, matplotlib nor the trainer; re-exports resolve lazily."""
  code = ("import sys, minidiff; heavy = [m for m in ('jax', 'matplotlib', 'minidiff.train.trainer') "
          "if m in sys.modules]; assert not heavy, heavy; print('ok')")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
