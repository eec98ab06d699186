"""Commands that use a trained checkpoint without training: figures and predictions."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import checkpointing
from alexnet_jax import figures
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import sharding
from alexnet_jax import steps as steps_lib
from alexnet_jax import train
from alexnet_jax.errors import ConfigError


def restore_params(config, workdir: str, step: int | None = None):
  """The parameters of the latest (or `step`'s) checkpoint on the host, without reading the
  dataset: (params as numpy, meta). For commands that only look at the weights, on one
  process: the checkpoint is restored onto this process's first device, whatever mesh the
  config (or the run that wrote it) names."""
  layout = sharding.Layout(sharding.make_mesh(1, 1, jax.local_devices()[:1]), 'towers')
  train.check_config(config, layout)
  spec = train.model_spec(config)
  ckpts = checkpointing.Checkpoints(workdir, read_only=True)
  try:
    state, meta = None, None
    if ckpts.steps() or step is not None:
      abstract = steps_lib.abstract_train_state(spec, train.make_optimizer(config, 1), layout)
      state, meta, _ = ckpts.restore(
          abstract, functools.partial(train.check_checkpoint_config, config, spec), step)
  finally:
    ckpts.close()
  if state is None:
    where = os.path.join(os.path.abspath(workdir), checkpointing.CHECKPOINT_DIR)
    raise checkpointing.NoCheckpointError(f'No restorable checkpoint in {where}.')
  return jax.tree.map(train.host_array, state.params), meta


def figures_for_checkpoint(config, workdir: str, step: int | None = None) -> list[str]:
  """conv1's kernels of a checkpoint and the run's curves, into <workdir>/figures/."""
  params, meta = restore_params(config, workdir, step)
  if jax.process_index() != 0:
    return []
  paths = [figures.save_conv1(params['conv1']['kernel'], workdir, int(meta['step']))]
  curves = figures.save_curves(workdir)
  return paths + ([curves] if curves else [])


def load_image(path: str, size: int, channels: int) -> np.ndarray:
  """An image file as the network's uint8 input: the shorter side resized to `size`, the
  central size x size crop (the paper's test-time rescale and centre crop), grey or RGB."""
  from PIL import Image
  try:
    image = Image.open(path)
    image.load()
  except (OSError, ValueError) as e:
    raise ConfigError(f'--images: cannot read {path} as an image ({e}).') from e
  image = image.convert('L' if channels == 1 else 'RGB')
  w, h = image.size
  scale = size / min(w, h)
  image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                       Image.BILINEAR)
  w, h = image.size
  left, top = (w - size) // 2, (h - size) // 2
  array = np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
  return array.reshape(size, size, channels)


def predict(config, workdir: str, paths: list[str], step: int | None = None,
            top: int = 5) -> list[dict]:
  """Classifies image files with a checkpoint: for each, the `top` class names and
  probabilities. The training set is read for its mean image and class names (the input
  must be normalised exactly as in training)."""
  if not paths:
    raise ConfigError('--images names no image files.')
  images = np.stack([load_image(p, config.data.image_size, config.data.channels)
                     for p in paths])
  params, meta = restore_params(config, workdir, step)
  train_split, _, info = input_pipeline.load_dataset(config)
  mean = input_pipeline.mean_image(train_split.images, config.data.mean)
  spec = train.model_spec(config)
  logits = jax.jit(functools.partial(model_lib.apply, spec=spec,
                                     compute_dtype=train.compute_dtype(config)))(
      params, images.astype(np.float32) - mean)
  probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32)))
  results = []
  for path, p in zip(paths, probs):
    best = np.argsort(-p)[:min(top, len(p))]
    results.append({'image': path, 'step': int(meta['step']),
                    'top': [[info.class_names[i], float(p[i])] for i in best]})
  return results
