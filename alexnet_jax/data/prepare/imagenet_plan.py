"""What the ImageNet preparation stores, in which order: every image of the two tars with
its label and place, and the shards.

The order is tfds's: a split's images sorted by the md5 hash of their file name salted with
the split's name (`tensorflow_datasets.core.hashing`), as tfds's imagenet2012 builder writes
them. So record i of the store is record i of a tfds-prepared imagenet2012 (and of the
store built from one), whatever the number of processes that wrote it; the shards are
contiguous runs of that order. Labels are tfds's: a training image's is its class tar's
wnid, a validation image's comes from tfds's `validation_labels.txt`, listed in the order of
the sorted file names.

The index (names, offsets, sizes, labels in that order) is cached beside the shards being
written, so a resumed preparation does not read the tars' headers again.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from alexnet_jax.data.prepare import shard_writer
from alexnet_jax.data.prepare import tar_index
from alexnet_jax.errors import BadDataError

SHARD_IMAGES = 1000  # images a shard: about 5 s of one core's work, 50 MB of JPEG
LABELS = 'datasets/imagenet2012/labels.txt'  # in tfds's package: the 1,000 wnids
VALIDATION_LABELS = 'datasets/imagenet2012/validation_labels.txt'


def class_names() -> list[str]:
  """ILSVRC-2012's 1,000 wnids, in tfds's label order."""
  import tensorflow_datasets as tfds
  return tfds.core.tfds_path(LABELS).read_text().strip().splitlines()


@dataclasses.dataclass(frozen=True)
class Split:
  """A split's images in the store's order."""
  name: str
  tar: str
  names: list
  offsets: np.ndarray  # int64
  sizes: np.ndarray  # int64
  labels: np.ndarray  # int64

  def __len__(self):
    return len(self.names)

  def shards(self, per_shard: int = SHARD_IMAGES) -> list[tuple]:
    """Each shard's members, (name, offset, size, label), in order."""
    rows = list(zip(self.names, self.offsets.tolist(), self.sizes.tolist(),
                    self.labels.tolist()))
    return [tuple(rows[i:i + per_shard]) for i in range(0, len(rows), per_shard)]


def fingerprint(tars: dict[str, str]) -> dict:
  """What identifies the tars (size and modification time of each)."""
  return {split: [os.path.basename(p), os.path.getsize(p), os.stat(p).st_mtime_ns]
          for split, p in tars.items()}


def _ordered(name: str, tar: str, rows: list, labels: list) -> Split:
  """`rows` (name, offset, size) sorted by tfds's hash of the name, salted by the split."""
  from tensorflow_datasets.core import hashing
  if not rows:
    raise BadDataError(f'{tar} holds no images; use the tar as image-net.org distributes it.')
  hasher = hashing.Hasher(name)
  keys = [hasher.hash_key(r[0]) for r in rows]
  order = sorted(range(len(rows)), key=keys.__getitem__)
  for a, b in zip(order, order[1:]):
    if keys[a] == keys[b]:
      raise BadDataError(f'{tar} holds two images named {rows[a][0]}; each file name must be '
                         'unique (tfds orders and labels images by it).')
  return Split(name, tar, [rows[i][0] for i in order],
               np.array([rows[i][1] for i in order], np.int64),
               np.array([rows[i][2] for i in order], np.int64),
               np.array([labels[i] for i in order], np.int64))


def train_split(tar: str, class_names: list[str], pool, progress) -> Split:
  """The train tar's images: its class tars' headers read in parallel by `pool` (a process
  pool), a progress line every few seconds."""
  classes = tar_index.class_tars(tar)
  index = {n: i for i, n in enumerate(class_names)}
  unknown = [c.name for c in classes if c.name[:-len('.tar')] not in index]
  if unknown or not classes:
    raise BadDataError(
        f'{tar} holds {"no class tars" if not classes else f"the class tar {unknown[0]}"}, '
        f'not one of ILSVRC-2012\'s 1,000 (<wnid>.tar, as tfds\'s labels.txt lists them); '
        'use the train tar as image-net.org distributes it.')
  progress.phase('indexing the class tars', len(classes), unit='class tars')
  rows, labels = [], []
  futures = [(c, pool.submit(shard_writer.index_class, tar, c.offset, c.size)) for c in classes]
  for c, future in futures:
    members = future.result()
    rows += members
    labels += [index[c.name[:-len('.tar')]]] * len(members)
    progress.advance()
  progress.finish()
  return _ordered('train', tar, rows, labels)


def validation_split(tar: str, class_names: list[str]) -> Split:
  """The val tar's images, labelled from tfds's list in the order of the sorted names."""
  import tensorflow_datasets as tfds
  members = tar_index.members(tar)
  wnids = tfds.core.tfds_path(VALIDATION_LABELS).read_text().strip().splitlines()
  if len(members) > len(wnids):
    raise BadDataError(f'{tar} holds {len(members):,} images, more than the {len(wnids):,} '
                       'that tfds has labels for; use the val tar as image-net.org '
                       'distributes it.')
  index = {n: i for i, n in enumerate(class_names)}
  by_name = dict(zip(sorted(m.name for m in members), wnids))
  rows = [(m.name, m.offset, m.size) for m in members]
  return _ordered('validation', tar, rows, [index[by_name[m.name]] for m in members])


def save(path: str, splits: dict[str, Split], tars_fingerprint: dict) -> None:
  arrays = {'fingerprint': np.frombuffer(json.dumps(tars_fingerprint).encode(), np.uint8)}
  for name, s in splits.items():
    arrays.update({f'{name}.names': np.frombuffer('\n'.join(s.names).encode(), np.uint8),
                   f'{name}.offsets': s.offsets, f'{name}.sizes': s.sizes,
                   f'{name}.labels': s.labels, f'{name}.tar': np.frombuffer(
                       s.tar.encode(), np.uint8)})
  partial = path + shard_writer.PARTIAL
  with open(partial, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(partial, path)


def load(path: str, tars_fingerprint: dict) -> dict[str, Split] | None:
  """The cached index, if it was made from these very tars."""
  if not os.path.isfile(path):
    return None
  with np.load(path) as f:
    if json.loads(f['fingerprint'].tobytes()) != tars_fingerprint:
      return None
    names = {k.split('.')[0] for k in f.files if '.' in k}
    return {n: Split(n, f[f'{n}.tar'].tobytes().decode(),
                     f[f'{n}.names'].tobytes().decode().split('\n'), f[f'{n}.offsets'],
                     f[f'{n}.sizes'], f[f'{n}.labels']) for n in sorted(names)}
