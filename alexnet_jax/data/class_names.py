"""Class names a person can read, beside the labels a dataset carries.

ImageNet's labels are WordNet ids (`n01440764`), in sorted order: tfds's imagenet2012, Caffe's
and torchvision's networks all number the 1,000 classes so. `imagenet_classes.txt` beside this
module holds each id with its readable name ("tench"); a model zoo's synsets file (Caffe's
`synset_words.txt`: "n01440764 tench, Tinca tinca") gives the same, in its own order and
words (`read_synsets`). A folder's class names are readable already and stay as they are.
"""

from __future__ import annotations

import functools
import pathlib
import re
from typing import Sequence

from alexnet_jax.errors import UserError

IMAGENET_FILE = pathlib.Path(__file__).with_name('imagenet_classes.txt')
# A checkpoint's meta key for readable names beside its `class_names` (the labels), written
# where they come from a model zoo's synsets file.
META_KEY = 'readable_names'
_WNID = re.compile(r'n\d{8}')


class SynsetsError(UserError):
  """A synsets file that cannot be read as one class a line."""


@functools.cache
def _imagenet() -> tuple[tuple[str, str], ...]:
  with open(IMAGENET_FILE, encoding='utf-8') as f:
    rows = [line.rstrip('\n').split('\t') for line in f if line.strip()
            and not line.startswith('#')]
  return tuple((wnid, name) for wnid, name in rows)


def imagenet_wnids() -> list[str]:
  """ILSVRC-2012's 1,000 WordNet ids, in the order of the networks' outputs."""
  return [wnid for wnid, _ in _imagenet()]


def imagenet_names() -> dict[str, str]:
  """{WordNet id: readable name} of ILSVRC-2012's 1,000 classes."""
  return dict(_imagenet())


def readable(labels: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
  """A readable name for each label: `names` where a checkpoint carries them, else ImageNet's
  name of a WordNet id, else the label itself (a folder's class)."""
  if names is not None and len(names) == len(labels):
    return [str(n) for n in names]
  table = imagenet_names()
  return [table.get(label, label) for label in labels]


def read_synsets(path: str) -> tuple[list[str], list[str]]:
  """(WordNet ids, readable names) of a synsets file, one class a line in output order:
  `wnid name` (Caffe's synset_words.txt), `wnid<TAB>name` (imagenet_classes.txt) or `wnid`
  alone (tfds's labels.txt; the names are then ImageNet's)."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = [line.strip() for line in f if line.strip() and not line.startswith('#')]
  except (OSError, UnicodeDecodeError) as e:
    raise SynsetsError(f'--synsets={path} cannot be read ({e}).') from None
  wnids, names = [], []
  table = imagenet_names()
  for number, line in enumerate(lines, 1):
    wnid, _, name = line.partition('\t') if '\t' in line else line.partition(' ')
    if not _WNID.fullmatch(wnid):
      raise SynsetsError(f'--synsets={path}: line {number} ({line[:60]!r}) does not start with '
                         'a WordNet id such as n01440764.')
    wnids.append(wnid)
    names.append(name.strip() or table.get(wnid, wnid))
  return wnids, names
