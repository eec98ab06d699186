"""What every entrypoint (launch.py, scripts/) does with its flags and its errors alike: absl's
parser with its errors, and ml_collections' tracebacks for a bad config file or an unknown
config field, turned into one line `error: <sentence>` and exit 1; a UserError raised by the
command likewise. A bug keeps its traceback."""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import sys

from absl import app
from absl import flags

from alexnet_jax.errors import UserError


def last_line(line: str, code: int):
  """Prints `line` as the run's last line on stderr and exits with `code`. What native
  threads would print while the interpreter shuts down (tensorstore's tracebacks of a failed
  save's pending writes) goes to /dev/null: the line has said what happened."""
  print(line, file=sys.stderr, flush=True)
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
  sys.exit(code)


def fail(message: str, code: int = 1):
  last_line(f'error: {message}', code)


def config_path(argv) -> str | None:
  """The value of --config in `argv`, if any."""
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_config_file(path: str) -> None:
  """The config file exists, parses and defines get_config(), or one sentence says which
  (ml_collections would report each as a traceback)."""
  file = path if os.path.exists(path) else path.split(':')[0]  # `file.py:argument`
  if not os.path.isfile(file):
    fail(f'--config={path}: there is no such file.')
  try:
    with open(file, encoding='utf-8') as f:
      tree = ast.parse(f.read(), filename=file)
  except SyntaxError as e:
    fail(f'--config={path}: {e.msg} at line {e.lineno}: {(e.text or "").strip()!r}.')
  except (OSError, UnicodeDecodeError) as e:
    fail(f'--config={path} cannot be read ({e}).')
  if not any(isinstance(n, ast.FunctionDef) and n.name == 'get_config' for n in tree.body):
    fail(f'--config={path} defines no get_config() function returning the config.')
  try:  # as ml_collections will, so that an error in the file is told apart from a bad flag
    spec = importlib.util.spec_from_file_location('_config_check', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arguments = path[len(file) + 1:].split(',') if path != file else []
    module.get_config(*arguments)
  # The config file is the user's code: whatever it raises is the user's to fix, told in one
  # sentence with its type and message.
  except Exception as e:  # pylint: disable=broad-except
    fail(f'--config={path}: get_config() failed ({type(e).__name__}: '
         f'{str(e).splitlines()[0] if str(e) else ""}).')


def _unknown_field(argv, e: BaseException) -> str:
  """The sentence for an unknown --config.<field> (ml_collections raises AttributeError or
  KeyError, with close matches)."""
  text = str(e).replace('\\n', ' ').replace("\\'", "'")
  name = re.search(r"'([A-Za-z0-9_]+)'", text)
  name = name.group(1) if name else text
  arg = next((a.split('=')[0] for a in argv if a.startswith('--config.')
              and re.search(rf'[.]{re.escape(name)}(=|$)', a.split('=')[0])), name)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  return f'{arg} is not a config field' + (f' (did you mean {hint.group(1)}?).' if hint
                                           else '.')


def parse_flags(argv, flag_values=flags.FLAGS):
  """absl's parser (the flags_parser of `app.run`), with its errors turned into one line."""
  path = config_path(argv)
  if path:
    check_config_file(path)
  try:
    parsed = flag_values(argv)
  except flags.Error as e:
    fail(str(e).rstrip('.') + '.')
  except (AttributeError, KeyError) as e:  # an unknown --config.<field>
    fail(_unknown_field(argv, e))
  if 'config' in flag_values:
    try:
      flag_values.config  # pylint: disable=pointless-statement
    # Loading runs the user's config file and applies the overrides to it: its failures are
    # the user's (a value of the wrong type, a field locked by the file).
    except Exception as e:  # pylint: disable=broad-except
      cause = e
      while cause.__cause__ is not None:
        cause = cause.__cause__
      fail(f'--config={path}: loading it failed ({type(cause).__name__}: '
           f'{str(cause).splitlines()[0] if str(cause) else ""}).')
  return parsed


def load_config(path: str, overrides=()):
  """The config of `--config=path` with `--config.<field>=<value>` `overrides` applied, as
  launch.py would load it, or one line and exit 1 (for scripts that pass flags on to
  launch.py: a mistyped field is named before any run starts)."""
  from ml_collections import config_flags
  argv = ['load_config', f'--config={path}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  parse_flags(argv, flag_values)
  return flag_values.config


def run(main, flags_parser=parse_flags):
  """`app.run(main)` with this module's parser, and a UserError from `main` as one line."""

  @functools.wraps(main)
  def funnel(argv):
    try:
      return main(argv)
    except UserError as e:
      fail(str(e))

  app.run(funnel, flags_parser=flags_parser)
