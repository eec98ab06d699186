"""Which code a report came from: the git commit and whether the tree was dirty, and a hash of
the source files that can be computed where no git is.

The GPU machine receives a copy of the working tree without `.git`, so there the commit comes
from a stamp written here just before the run (`python -m benchmarks.provenance`, into
`.whl/provenance.json`, which travels with the wheels), and the tree hash computed there says
whether the stamp belongs to the files that ran.

    python -m benchmarks.provenance          # writes .whl/provenance.json, prints it
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = os.path.join(ROOT, '.whl', 'provenance.json')
HASHED_DIRS = ('alexnet_jax', 'benchmarks', 'configs', 'scripts', 'tests')
HASHED_TOP = ('launch.py', 'pyproject.toml', 'requirements.txt')
HASHED_SUFFIXES = ('.py', '.json', '.txt', '.sh', '.toml')


def tree_hash(root: str = ROOT) -> str:
  """sha256 (first 16 hex digits) of the source files' paths and contents."""
  paths = [p for p in HASHED_TOP if os.path.isfile(os.path.join(root, p))]
  for d in HASHED_DIRS:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
      dirnames[:] = sorted(n for n in dirnames if n != '__pycache__' and not n.startswith('.'))
      paths += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames
                if f.endswith(HASHED_SUFFIXES)]
  h = hashlib.sha256()
  for rel in sorted(paths):
    h.update(rel.encode() + b'\0')
    with open(os.path.join(root, rel), 'rb') as f:
      h.update(f.read() + b'\0')
  return h.hexdigest()[:16]


def git(root: str = ROOT) -> dict | None:
  """{'commit', 'dirty', 'changed'} from git, or None where there is no repository or git."""
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                            text=True, timeout=20, check=True).stdout.strip()
    status = subprocess.run(['git', 'status', '--porcelain'], cwd=root, capture_output=True,
                            text=True, timeout=20, check=True).stdout.splitlines()
  except (OSError, subprocess.SubprocessError):
    return None
  return {'commit': commit, 'dirty': bool(status), 'changed': [s[3:] for s in status][:20]}


def provenance(root: str = ROOT, stamp: str = STAMP) -> dict:
  """The commit (from git, else from the stamp), the tree hash, and the command line."""
  here = tree_hash(root)
  info = {'command': shlex.join([sys.executable, *sys.argv]), 'cwd': os.getcwd(),
          'tree_hash': here}
  found = git(root)
  if found:
    info.update(found, source='git')
  elif os.path.exists(stamp):
    with open(stamp, encoding='utf-8') as f:
      stamped = json.load(f)
    info.update(commit=stamped.get('commit'), dirty=stamped.get('dirty'),
                changed=stamped.get('changed', []), source='stamp (.whl/provenance.json)',
                stamp_matches_tree=stamped.get('tree_hash') == here)
  else:
    info.update(commit=None, dirty=None, source='none: no git and no stamp')
  return info


def line(info: dict) -> str:
  """One line for a report's head."""
  if not info.get('commit'):
    return f"commit unknown ({info['source']}); tree hash {info['tree_hash']}"
  dirty = ('dirty: ' + ', '.join(info.get('changed') or [])) if info.get('dirty') else 'clean'
  text = f"commit {info['commit']} ({dirty}; from {info['source']}); tree hash {info['tree_hash']}"
  if info.get('stamp_matches_tree') is False:
    text += ' (NOT the stamped tree: the files changed after the stamp)'
  return text


def write_stamp(path: str = STAMP, root: str = ROOT) -> dict:
  found = git(root) or {'commit': None, 'dirty': None, 'changed': []}
  found['tree_hash'] = tree_hash(root)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(found, f, indent=1)
  return found


if __name__ == '__main__':
  print(json.dumps(write_stamp(), indent=1))
