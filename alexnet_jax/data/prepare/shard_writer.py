"""One shard of the stored ImageNet, written by one worker process of the preparation
(`imagenet_prep`): read each image from the tar by offset, fix the official CMYK and PNG
files as tfds does, decode, bring to size x size (`geometry`), encode as the store's
records (JPEG of `quality`, 4:4:4, or raw uint8), write them in order to an array_record
file under a temporary name, and rename it when complete. The shard's pixel sums (the mean
image, the RGB cross sums for the PCA) are written beside it, so that the full training
set's statistics come out of the same pass.

Every step is a pure function of the tar's bytes and the settings, so a shard's bytes do
not depend on which worker writes it, or when.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import signal

from array_record.python import array_record_module
import numpy as np
from PIL import Image

from alexnet_jax.data import geometry
from alexnet_jax.data import transforms
from alexnet_jax.data.prepare import disk
from alexnet_jax.data.prepare import tar_index
from alexnet_jax.data.prepare import tfds_writing
from alexnet_jax.errors import BadDataError

PARTIAL = '.partial'  # a shard or statistics file being written (removed by a rerun)


@dataclasses.dataclass(frozen=True)
class Settings:
  """How every image is stored (what a worker needs besides its shard)."""
  size: int
  quality: int  # JPEG quality; 0: raw uint8 arrays (data.storage=raw)
  geometry: str
  num_classes: int
  channels: int = 3
  decoder: str = 'pillow'  # what decodes the originals (pillow or turbo: the same pixels)


@dataclasses.dataclass(frozen=True)
class Task:
  split: str
  index: int
  path: str  # the shard's final path
  tar: str
  members: tuple  # (name, offset, size, label) in the shard's order
  statistics: str | None  # where its pixel sums go (training split), else None


@dataclasses.dataclass(frozen=True)
class Result:
  split: str
  index: int
  records: int = 0
  bytes: int = 0
  bad: tuple = ()  # messages of training images left out (they fail to decode)
  error: str | None = None  # an evaluation image that fails to decode
  disk_full: str | None = None  # the writer's message, when the disk filled


def official_fix(name: str, data: bytes) -> bytes:
  """tfds's fix of ILSVRC-2012's 22 CMYK JPEGs and its one PNG (listed by name in tfds's
  builder): converted to RGB and re-encoded as JPEG of quality 100, with Pillow. Every other
  file is returned as it is."""
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as official
  if name not in official.CMYK_IMAGES and name not in official.PNG_IMAGES:
    return data
  out = io.BytesIO()
  Image.open(io.BytesIO(data)).convert('RGB').save(out, 'JPEG', quality=100)
  return out.getvalue()


def encode(array: np.ndarray, quality: int) -> bytes | np.ndarray:
  """What a record stores for a prepared image: JPEG bytes (4:4:4, full-resolution colour)
  or, with quality 0, the array itself (stored as its raw bytes)."""
  if not quality:
    return array
  out = io.BytesIO()
  Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(
      out, 'JPEG', quality=quality, subsampling=0)
  return out.getvalue()


def stored_features(size: int, channels: int, raw: bool, names=None, num_classes=None):
  """The tfds features of a store of size x size images (`builders.PreparedImages`): JPEG,
  or raw uint8 bytes; the label by its class names, or anonymous (`num_classes`: a
  record's serialized label is its index either way)."""
  import tensorflow_datasets as tfds
  shape = (size, size, channels)
  stored = (tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding='bytes') if raw
            else tfds.features.Image(shape=shape, encoding_format='jpeg'))
  label = (tfds.features.ClassLabel(names=names) if names is not None
           else tfds.features.ClassLabel(num_classes=num_classes))
  return tfds.features.FeaturesDict({'image': stored, 'label': label})


def features(settings: Settings):
  return stored_features(settings.size, settings.channels, not settings.quality,
                         num_classes=settings.num_classes)


class PixelSums:
  """Exact integer sums over a shard's images: per pixel (the mean image) and the 3x3 RGB
  cross sums (the PCA and the per-channel mean square). Integer arithmetic only: exact, the
  same in any order, and no BLAS (whose threads, one set per worker process, spin against
  each other)."""

  def __init__(self, size: int, channels: int):
    self.total = np.zeros((size, size, channels), np.uint32)  # 255 x 16 M images fit
    self.cross = np.zeros((channels, channels), np.int64)
    self.count = 0

  def add(self, image: np.ndarray) -> None:
    self.total += image
    planes = image.reshape(-1, image.shape[-1]).T.astype(np.int64)
    for i in range(len(planes)):
      for j in range(i, len(planes)):
        self.cross[i, j] += int(np.dot(planes[i], planes[j]))
        self.cross[j, i] = self.cross[i, j]
    self.count += 1

  def save(self, path: str) -> None:
    partial = path + PARTIAL
    with open(partial, 'wb') as f:
      np.savez(f, total=self.total.astype(np.int64), cross=self.cross, count=self.count)
    os.replace(partial, path)


_STATE = {}  # per worker process: the settings, the features, the open tars


def start_worker(settings: Settings, setup=None) -> None:
  """A worker process's initializer: signals are the main process's to handle (a Ctrl-C
  reaches the whole process group), and `setup()` (tests inject faults) runs once."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  logging.getLogger().setLevel(logging.WARNING)
  tfds_writing.install()
  _STATE.clear()
  _STATE.update(settings=settings, features=features(settings), tars={})
  if setup is not None:
    setup()


def _tar(path: str):
  tars = _STATE['tars']
  if path not in tars:
    tars[path] = open(path, 'rb')  # pylint: disable=consider-using-with
  return tars[path]


def prepared(name: str, data: bytes, settings: Settings) -> np.ndarray:
  """An original's stored image (uint8, size x size x channels)."""
  return geometry.prepare(official_fix(name, data), settings.size, settings.channels,
                          settings.geometry, settings.decoder)


def write(task: Task) -> Result:
  """Writes `task`'s shard (module docstring); a full disk is reported, not raised."""
  settings, serialize = _STATE['settings'], _STATE['features'].serialize_example
  f = _tar(task.tar)
  if hasattr(os, 'posix_fadvise'):  # the kernel reads them ahead, in the disk's order
    for _, offset, size, _ in task.members:
      os.posix_fadvise(f.fileno(), offset, size, os.POSIX_FADV_WILLNEED)
  sums = PixelSums(settings.size, settings.channels) if task.statistics else None
  partial = f'{task.path}{PARTIAL}-{os.getpid()}'
  records = total = 0
  bad = []
  try:
    writer = array_record_module.ArrayRecordWriter(partial, 'group_size:1')
    try:
      for name, offset, size, label in task.members:
        data = tar_index.read(f, tar_index.Member(name, offset, size))
        try:
          image = prepared(name, data, settings)
        except transforms.DECODE_ERRORS as e:
          if task.statistics is None:  # evaluation: every image must be stored
            return Result(task.split, task.index, error=f'{task.split} image {name} of '
                          f'{task.tar} failed to decode ({e}); the evaluation split must be '
                          'readable in full.')
          bad.append(f'{name}: {e}')
          continue
        record = serialize({'image': encode(image, settings.quality), 'label': label})
        writer.write(record)
        records, total = records + 1, total + len(record)
        if sums is not None:
          sums.add(image)
    finally:
      writer.close()
    if sums is not None:
      sums.save(task.statistics)
    os.replace(partial, task.path)
  except (OSError, RuntimeError) as e:
    if not disk.is_full(e):
      raise
    return Result(task.split, task.index, disk_full=str(e).splitlines()[0][:300])
  except BadDataError as e:
    return Result(task.split, task.index, error=str(e))
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return Result(task.split, task.index, records, total, tuple(bad))


def index_class(tar: str, offset: int, size: int) -> list[tuple[str, int, int]]:
  """(name, offset, size) of the images of the class tar stored at `offset` in `tar`."""
  return [(m.name, m.offset, m.size) for m in tar_index.members(tar, offset, size)]
