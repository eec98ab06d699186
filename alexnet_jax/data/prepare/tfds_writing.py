"""What tfds's writer needs to write every dataset this project prepares (`builders`, and
the ImageNet store's shards): no TensorFlow at any size, and the same bytes every time.

Serialization: tfds serializes each example as a tf.train.Example, whose features are a
protobuf map; protobuf's (upb's) map order varies from one process to the next, so two
preparations of the same files wrote different bytes. `install()` makes tfds serialize
deterministically (map keys sorted).

Shuffling, past 1 GB:

tfds 4.9 keeps a split's serialized examples in memory up to `shuffle.MAX_MEM_BUFFER_SIZE`
(1 GB, about 9,500 ImageNet JPEGs), sorts them by key and writes the shards. Past that it
spills them into 1,000 bucket files through `tf.io.gfile`, which fails without TensorFlow;
and with `disable_shuffling` (our builders, which keep their files' order) the bucket of a
record is computed from the user's key as if it were a 128-bit hash, which fails on string
keys (image folders) and puts every integer key in bucket 0, read back whole into memory.

`Shuffler` keeps tfds's order exactly (records sorted by the hash of their key, salted with
the split's name, or by the key itself with `disable_shuffling`) and its duplicate check,
and spills as an external merge sort: each time the buffer passes the limit it is sorted
and written as one run file with plain file I/O, and the runs are merged when the shards are
written, one record of each in memory at a time. The run files live in tfds's temporary
directory of the dataset and are deleted as soon as they are merged (and with that
directory if the preparation fails). `install()` makes tfds's writer use it.
"""

from __future__ import annotations

import heapq
import os
import pickle
import uuid

from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import shuffle


class Shuffler(shuffle.Shuffler):
  """tfds's `shuffle.Shuffler`, spilling sorted runs to plain files (module docstring)."""

  def __init__(self, dirpath, hash_salt, disable_shuffling: bool = False,
               ignore_duplicates: bool = False):
    super().__init__(dirpath, hash_salt, disable_shuffling, ignore_duplicates)
    self._buckets = []  # tfds's bucket files are never used
    self._dir = os.fspath(dirpath)
    self._group = uuid.uuid4().hex
    self._runs: list[str] = []
    self._buffered = 0  # bytes in the in-memory buffer

  @property
  def bucket_lengths(self):
    # Only tfds's unused file instructions read this: one bucket of every example.
    return [self._num_examples]

  def _add_to_mem_buffer(self, hkey, data: bytes) -> None:
    self._mem_buffer.append((hkey, data))
    self._buffered += len(data)
    if self._buffered > shuffle.MAX_MEM_BUFFER_SIZE:  # read each time: tests lower it
      self._spill()

  def _spill(self) -> None:
    os.makedirs(self._dir, exist_ok=True)
    path = os.path.join(self._dir, f'spill_{self._group}_{len(self._runs):05d}.tmp')
    with open(path, 'wb') as f:
      for item in sorted(self._mem_buffer):
        pickle.dump(item, f, protocol=pickle.HIGHEST_PROTOCOL)
    self._runs.append(path)
    self._mem_buffer, self._buffered = [], 0

  def _iter_mem(self):
    runs = [_read_run(p) for p in self._runs]
    try:
      yield from heapq.merge(*runs, sorted(self._mem_buffer))
    finally:
      for run in runs:
        run.close()
      for path in self._runs:
        if os.path.exists(path):
          os.remove(path)


def _read_run(path: str):
  with open(path, 'rb') as f:
    while True:
      try:
        yield pickle.load(f)
      except EOFError:
        return


def _serialize_example(self, example) -> bytes:
  """tfds's `ExampleSerializer.serialize_example`, with the map keys in sorted order."""
  return self.get_tf_example(example).SerializeToString(deterministic=True)


def install() -> None:
  """tfds's writer shuffles with `Shuffler` and serializes deterministically from now on in
  this process (idempotent)."""
  shuffle.Shuffler = Shuffler
  example_serializer.ExampleSerializer.serialize_example = _serialize_example
