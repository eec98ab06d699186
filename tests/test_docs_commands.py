"""Every command in the README and in docs/ runs as written, as far as it can be run without
the data and the hours it names: `python launch.py ...` parses with launch.py's own flags,
its config file loads with every `--config.<field>=<value>` applied by ml_collections, and the
model and data fields pass their checks (paths excepted: /data/imagenet is the reader's);
`python -m <module> ...` names a module of this repository and only flags it defines;
`pip install -r <file>`, `bash <script>`, `sbatch <file>` and `kubectl apply -f <file>` name
files that exist. The commands that a test runs for real (the main command, the exports, the
preparation) are run there (tests/test_launch.py, test_export.py, test_imagenet_prep.py)."""

from __future__ import annotations

import ast
import re
import shlex

import pytest

from tests import helpers

DOCS = [helpers.ROOT / 'README.md', *sorted((helpers.ROOT / 'docs').glob('*.md'))]
SHELL_BLOCK = re.compile(r'^```(?:bash|sh|shell|console)\n(.*?)^```', re.M | re.S)
# Commands of other programs that the documents show without files of ours to check.
OTHERS = {'tensorboard', 'xprof', 'ls', 'cd', 'export', 'nvidia-smi', 'git', 'cat', 'tail',
          'apt-get', 'curl', 'cp', 'mkdir', 'rm', 'tar', 'du', 'df'}
# Modules of other packages that the documents run with `python -m`.
OTHER_MODULES = {'pytest', 'pip', 'venv', 'tensorboard'}
ABSL_BUILTIN = {'help', 'helpfull', 'helpshort', 'helpxml', 'flagfile', 'undefok',
                'logtostderr', 'alsologtostderr', 'verbosity', 'v', 'log_dir', 'stderrthreshold'}


def commands() -> list[tuple[str, list[str]]]:
  """(where, argv) of every command in the documents' shell blocks."""
  found = []
  for doc in DOCS:
    for block in SHELL_BLOCK.findall(doc.read_text(encoding='utf-8')):
      text = re.sub(r'\\\n\s*', ' ', block)
      for line in text.splitlines():
        tokens = shlex.split(line, comments=True)
        command = []
        for token in tokens + [';']:
          if token in ('&&', ';', '||', '|'):
            while command and re.match(r'^[A-Z_][A-Z0-9_]*=', command[0]):
              command.pop(0)  # VAR=value before the command
            if command:
              found.append((f'{doc.name}: {" ".join(command)[:90]}', command))
            command = []
          else:
            command.append(token)
  return found


COMMANDS = commands()


def test_the_documents_have_commands():
  assert len(COMMANDS) > 40
  assert any(argv[:2] == ['python', 'launch.py'] for _, argv in COMMANDS)


def defined_flags(module: str) -> set[str]:
  """The flag names a module of this repository defines (absl DEFINE_* and argparse)."""
  path = helpers.ROOT / (module.replace('.', '/') + '.py')
  assert path.is_file(), f'python -m {module}: no such module in the repository'
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
      continue
    func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, 'id', '')
    if func.startswith('DEFINE_'):
      names.add(node.args[0].value)
    elif func == 'add_argument':
      names.update(a.value.lstrip('-') for a in node.args if isinstance(a, ast.Constant))
  return names


def check_module(module: str, args: list[str]) -> None:
  names = defined_flags(module) | ABSL_BUILTIN
  for arg in args:
    if arg == '--':
      break  # scripts.ablations passes the rest to every run
    if not arg.startswith('--'):
      continue
    name = arg[2:].split('=', 1)[0]
    assert name in names or (name.startswith('no') and name[2:] in names), (
        f'python -m {module}: no flag --{name}')


# ml_collections loads a config file with importlib's deprecated load_module().
@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
@pytest.mark.parametrize('where,argv', COMMANDS, ids=[w for w, _ in COMMANDS])
def test_the_command_runs_as_written(where, argv):
  del where
  program, args = argv[0], argv[1:]
  if program in ('python', 'python3'):
    if args[:1] == ['launch.py']:
      helpers.launch_config(*args[1:])
    elif args[:1] == ['-m'] and args[1] not in OTHER_MODULES:
      check_module(args[1], args[2:])
    else:
      assert args[:1] in (['-c'], ['-m']), f'python {args[:1]}: not a command this project documents'
  elif program == 'pip':
    for i, arg in enumerate(args):
      if arg == '-r':
        assert (helpers.ROOT / args[i + 1]).is_file(), args[i + 1]
  elif program in ('bash', 'sbatch'):
    script = next(a for a in args if not a.startswith('-'))
    assert (helpers.ROOT / script).is_file(), script
  elif program == 'kubectl':
    assert (helpers.ROOT / args[args.index('-f') + 1]).is_file()
  else:
    assert program in OTHERS, f'{program}: a command the documents use that this test cannot check'
