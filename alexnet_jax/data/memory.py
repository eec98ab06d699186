"""The memory loader: small datasets of one image size (Fashion-MNIST, CIFAR, synthetic)
decoded once into host memory.

Training views are random crops of the image zero-padded by `data.crop_pad` and
reflections (section 4.1 at the images' own size); the training set's mean is subtracted on
the device as it is, unshifted by the crop (window 0). The 10-crop test takes the four
corners and the centre of the padded image and their reflections.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from alexnet_jax.data import batching
from alexnet_jax.data import provenance
from alexnet_jax.data import sources
from alexnet_jax.data import transforms
from alexnet_jax.model import pixels


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32


class MemoryLoader(batching.EpochOrder):
  """Deterministic, resumable training batches of a split in memory."""

  def __init__(self, split: Split, global_batch: int, seed: int, pad: int = 0,
               flip: bool = False):
    super().__init__(len(split.labels), global_batch, seed)
    self.split, self.pad, self.flip = split, pad, flip

  def views(self, images: np.ndarray, step: int, rows: slice) -> np.ndarray:
    """Rows `rows` of batch `step`: random crops of the padded images, each reflected with
    probability 1/2 (on the host: the mean is subtracted unshifted), drawn for the whole
    global batch from one generator seeded (seed, step), as the stream loader draws."""
    size, p = images.shape[1], self.pad
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0))) if p else images
    draws = transforms.train_draws(np.random.default_rng([self.seed, step]),
                                   self.global_batch, pca_sigma=0)
    windows = draws.windows(padded.shape[1:], size if p else None, self.flip)[rows]
    out = np.empty_like(images)
    for row, (top, left, reflected) in enumerate(windows.tolist()):
      view = padded[row, top:top + size, left:left + size]
      out[row] = view[:, ::-1] if reflected else view
    return out

  def read(self, step: int, rows: slice):
    idx = self.indices(step)[rows]
    images = self.split.images[idx]
    if self.pad or self.flip:
      images = self.views(images, step, rows)
    return pixels.pixel_batch(images), self.split.labels[idx], []


def load_splits(config) -> tuple[Split, Split, tuple[str, ...], str]:
  """Train and eval splits of `config.dataset` decoded into memory (synthetic data is
  generated), the class names and where they come from (`provenance.describe`)."""
  d = config.data
  if config.dataset == 'synthetic':
    rng = np.random.default_rng(config.seed)
    shape = (d.image_size, d.image_size, d.channels)
    make = lambda n: Split(rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                           rng.integers(0, d.num_classes, (n,), dtype=np.int32))
    train, evals = make(d.synthetic_train_examples), make(d.synthetic_eval_examples)
    return (train, evals, tuple(str(i) for i in range(d.num_classes)),
            provenance.describe(config))
  builder = sources.process_zero_first(
      lambda: sources.builder_for(config.dataset, d.data_dir, d.manual_dir, d.folder,
                                  (d.train_split, d.eval_split), config.allow_no_file_locks))
  train = Split(*sources.load_arrays(builder, d.train_split))
  evals = Split(*sources.load_arrays(builder, d.eval_split))
  return train, evals, sources.class_names(builder), provenance.describe(config, builder)


def load(config) -> batching.Data:
  """The memory pipeline of `config` (`input_pipeline.load` with data.pipeline=memory)."""
  d = config.data
  train, evals, names, source = load_splits(config)
  unlearnable = [names[l] if l < len(names) else str(l)
                 for l in sorted(set(np.unique(evals.labels)) - set(np.unique(train.labels)))]
  if unlearnable and config.dataset != 'synthetic':  # random labels: nothing to learn anyway
    logging.warning('%d class(es) have eval images but no training images, which the network '
                    'cannot learn: %s.', len(unlearnable), ', '.join(
                        repr(n) for n in unlearnable[:5]) + (', ...' if len(unlearnable) > 5
                                                            else ''))
  info = batching.DataInfo(num_classes=len(names), image_size=train.images.shape[1],
                           channels=train.images.shape[3], num_train=len(train.labels),
                           num_eval=len(evals.labels), class_names=names, source=source)
  statistics = transforms.PixelStatistics(pca=False)
  statistics.add(train.images)
  pad = d.crop_pad

  def eval_read(indices, ten_crop: bool):
    images = evals.images[indices]
    if ten_crop:
      padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else images
      images = transforms.ten_crop(padded, images.shape[1])
    return pixels.pixel_batch(images), evals.labels[indices]

  mean, scale = transforms.mean_and_scale(d, statistics.as_dict())
  return batching.Data(
      info=info, mean=mean, scale=scale,
      loader=MemoryLoader(train, config.batch_size, config.seed, pad=pad, flip=d.flip),
      eval_read=eval_read,
      train_read=lambda indices: (pixels.pixel_batch(train.images[indices]),
                                  train.labels[indices]))
