"""The package's shape, checked from the source with `ast` (imports inside functions included):
subpackages in layers that import only downward, no import cycle, no reach into another
package's private names, the jitted steps independent of the data layer, nothing importing
the training loop, no module over 400 lines and no class over 200, and no `sys.path` edits."""

import ast
import pathlib

import pytest

from tests import helpers

PACKAGE = helpers.ROOT / 'alexnet_jax'
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200
MAX_LOOP_LINES = 80
# Lowest first: a package imports only from its own layer and the layers before it.
LAYERS = (('errors', 'xla_cpu', 'cli'), ('model',), ('parallel',), ('data',), ('checkpoint',),
          ('weights',), ('outputs',), ('train',))


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(helpers.ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in PACKAGE.rglob('*.py')}


def imports(path: pathlib.Path, known) -> list[tuple[str, list[str]]]:
  """[(package module imported, names taken from it)] of one file."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [(a.name, []) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        full = f'{node.module}.{a.name}'
        found.append((full, []) if full in known else (node.module, [a.name]))
  return [(m, names) for m, names in found if m.split('.')[0] == 'alexnet_jax']


def import_graph() -> dict[str, set[str]]:
  """{module: package modules it imports}, for every module of alexnet_jax."""
  known = modules()
  graph = {}
  for name, path in known.items():
    edges = set()
    for target, _ in imports(path, known):
      while target and target not in known:  # `pkg.attr`
        target = target.rpartition('.')[0]
      if target and target != name and not name.startswith(target + '.') and (
          target != 'alexnet_jax'):
        edges.add(target)
    graph[name] = edges
  return graph


def package_of(module: str) -> str:
  return module.split('.')[1]


def layer_of(module: str) -> int:
  return next(i for i, names in enumerate(LAYERS) if package_of(module) in names)


def test_every_package_has_a_layer():
  assert {package_of(m) for m in modules() if m != 'alexnet_jax'} == {
      p for names in LAYERS for p in names}


def test_imports_go_only_downward():
  upward = [f'{m} -> {t}' for m, edges in import_graph().items() if m != 'alexnet_jax'
            for t in edges if layer_of(t) > layer_of(m)]
  assert upward == []


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


def _private_reaches(path: pathlib.Path, package: str, known) -> list[str]:
  """Private names (`_x`) this file takes from a module of another package: imported, or
  read as an attribute of a module it imported."""
  found, aliases = [], {}
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        full = f'{node.module}.{a.name}'
        if full in known:
          aliases[a.asname or a.name] = full
        elif node.module in known and a.name.startswith('_') and (
            package_of(node.module) != package):
          found.append(f'{node.module}.{a.name}')
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith('_')
        and not node.attr.startswith('__')):
      target = aliases[node.value.id]
      if package is None or package_of(target) != package:
        found.append(f'{target}.{node.attr}')
  return found


def test_no_package_reaches_into_another_packages_private_names():
  known = modules()
  reaches = {name: r for name, path in known.items() if name != 'alexnet_jax'
             if (r := _private_reaches(path, package_of(name), known))}
  for path in [helpers.ROOT / 'launch.py', *(helpers.ROOT / 'scripts').glob('*.py'),
               *(helpers.ROOT / 'benchmarks').glob('*.py'), *(helpers.ROOT / 'configs').glob('*.py')]:
    if (r := _private_reaches(path, None, known)):
      reaches[str(path.relative_to(helpers.ROOT))] = r
  assert reaches == {}


def test_the_steps_do_not_depend_on_the_data_layer():
  graph = import_graph()
  seen, todo = set(), ['alexnet_jax.train.steps']
  while todo:
    for nxt in graph[todo.pop()]:
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  assert not {m for m in seen if m.startswith('alexnet_jax.data')}
  assert 'alexnet_jax.model.pixels' in graph['alexnet_jax.train.steps']


def test_nothing_in_the_package_imports_the_training_loop():
  graph = import_graph()
  assert [m for m, edges in graph.items() if 'alexnet_jax.train.loop' in edges] == []


def test_modules_classes_and_the_loop_stay_short():
  sources = list(PACKAGE.rglob('*.py')) + [helpers.ROOT / 'launch.py'] + [
      p for d in ('benchmarks', 'scripts') for p in (helpers.ROOT / d).glob('*.py')]
  long = {str(p.relative_to(helpers.ROOT)): n for p in sources
          if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
  assert long == {}
  classes = {f'{p.relative_to(helpers.ROOT)}:{n.name}': n.end_lineno - n.lineno + 1
             for p in sources for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.ClassDef) and n.end_lineno - n.lineno + 1 > MAX_CLASS_LINES}
  assert classes == {}
  tree = ast.parse((PACKAGE / 'train' / 'loop.py').read_text())
  loop = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name == 'train_and_evaluate')
  assert loop.end_lineno - loop.lineno + 1 <= MAX_LOOP_LINES


def test_nothing_edits_sys_path():
  """The package is installed (pyproject.toml) and scripts run as `python -m`."""
  edits = [f'{p.relative_to(helpers.ROOT)}:{n.lineno}' for p in helpers.ROOT.rglob('*.py')
           if '.git' not in p.parts and p.name != 'conftest.py'
           for n in ast.walk(ast.parse(p.read_text()))
           if isinstance(n, ast.Attribute) and n.attr == 'path'
           and isinstance(n.value, ast.Name) and n.value.id == 'sys']
  assert edits == []


def test_nothing_imports_jaxs_private_modules():
  """jax._src is JAX's private code: a release may rename what it holds without a word (the
  cluster registry once turned multi-host auto-detection off that way)."""
  uses = [f'{p.relative_to(helpers.ROOT)}:{n.lineno}'
          for p in [*PACKAGE.rglob('*.py'), helpers.ROOT / 'launch.py',
                    *(helpers.ROOT / 'scripts').glob('*.py')]
          for n in ast.walk(ast.parse(p.read_text()))
          if (isinstance(n, ast.ImportFrom) and (n.module or '').startswith('jax._src'))
          or (isinstance(n, ast.Import) and any(a.name.startswith('jax._src') for a in n.names))]
  assert uses == []
