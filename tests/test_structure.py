"""The package's shape: the import graph has no cycle, the jitted steps do not depend on the
data layer, nothing in the package imports the training loop, and no module outgrows a
reader (checked from the source with `ast`, imports inside functions included)."""

import ast
import pathlib

import pytest

from tests import helpers

PACKAGE = helpers.ROOT / 'alexnet_jax'
MAX_MODULE_LINES = 400
MAX_LOOP_LINES = 80


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(helpers.ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph() -> dict[str, set[str]]:
  """{module: package modules it imports}, for every module of alexnet_jax."""
  modules = {module_name(p): p for p in PACKAGE.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
      for target in targets:
        while target and target not in modules:  # `from pkg import module` or `pkg.attr`
          target = target.rpartition('.')[0]
        if target and target != name and not name.startswith(target + '.') and (
            target != 'alexnet_jax'):
          edges.add(target)
    graph[name] = edges
  return graph


def test_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 20
  state = {}

  def visit(node, path):
    state[node] = 'open'
    for nxt in graph[node]:
      if state.get(nxt) == 'open':
        pytest.fail('import cycle: ' + ' -> '.join(path[path.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 'done'

  for node in graph:
    if node not in state:
      visit(node, [node])


def reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()]:
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def test_the_steps_do_not_depend_on_the_data_layer():
  graph = import_graph()
  assert not {m for m in reachable(graph, 'alexnet_jax.steps') if m.startswith('alexnet_jax.data')}
  assert 'alexnet_jax.pixels' in graph['alexnet_jax.steps']


def test_nothing_in_the_package_imports_the_training_loop():
  graph = import_graph()
  assert [m for m, edges in graph.items() if 'alexnet_jax.train' in edges] == []


def test_modules_and_the_loop_stay_short():
  long = {module_name(p): n for p in PACKAGE.rglob('*.py')
          if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
  assert long == {}
  tree = ast.parse((PACKAGE / 'train.py').read_text())
  loop = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name == 'train_and_evaluate')
  assert loop.end_lineno - loop.lineno + 1 <= MAX_LOOP_LINES
