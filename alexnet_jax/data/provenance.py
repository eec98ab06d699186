"""Where a run's images come from, said in one line (`line`): every run logs its data source and
size, so that a log read later names the data it was trained on (Debian's Fashion-MNIST or
the subset embedded here, a folder, a prepared tfds dataset)."""

from __future__ import annotations

import os

from alexnet_jax.data import sources


def describe(config, builder=None) -> str:
  """The source of `config`'s images and where they are prepared, read by `builder` (the
  prepared tfds builder the pipeline reads; None for generated data)."""
  d = config.data
  if config.dataset == 'synthetic':
    return f'random images generated in memory from seed {config.seed}'
  stored = f', prepared in {os.fspath(builder.data_dir)}' if builder is not None else ''
  if config.dataset == 'fashion_mnist':
    prepared_from_idx = builder is None or 'fashion_mnist_idx' in (
        builder.name + (builder.builder_config.name if builder.builder_config else ''))
    if not prepared_from_idx:
      return f"tfds's prepared fashion_mnist{stored}"
    where = sources.find_fashion_mnist_files(d.manual_dir)
    which = {sources.DEBIAN_FASHION_MNIST: "Debian's dataset-fashion-mnist",
             sources.EMBEDDED_FASHION_MNIST: 'the subset embedded in this repository'}.get(
                 where, 'data.manual_dir')
    return f'Fashion-MNIST from {where} ({which}){stored}'
  if config.dataset == 'imagenet2012':
    return (f'ImageNet (ILSVRC-2012) from {d.manual_dir}' if d.manual_dir
            else "tfds's prepared imagenet2012") + stored
  if config.dataset == 'image_folder':
    return f'the image folder {os.path.abspath(os.path.expanduser(d.folder))}{stored}'
  return f'tfds dataset {config.dataset}{stored}'


def line(config, info) -> str:
  """'Data: <source>[, prepared in <dir>]: <n> <split> / <m> <split> images, <k> classes.'"""
  d = config.data
  return (f'Data: {info.source}: {info.num_train:,} {d.train_split} / {info.num_eval:,} '
          f'{d.eval_split} images, {info.num_classes} classes.')
