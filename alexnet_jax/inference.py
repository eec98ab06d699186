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
from alexnet_jax import transforms
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


def load_image(path: str):
  """An image file as a PIL image, or one sentence saying why it cannot be read."""
  from PIL import Image
  try:
    image = Image.open(path)
    image.load()
  except transforms.DECODE_ERRORS as e:
    raise ConfigError(f'--images: cannot read {path} as an image ({e}).') from e
  return image


def predict(config, workdir: str, paths: list[str], step: int | None = None,
            top: int = 5) -> list[dict]:
  """Classifies image files with a checkpoint: for each, the `top` class names and
  probabilities. Each image gets the eval split's centre view (`Data.test_view`: for the
  stream pipeline the shorter side to data.prepared_size and the central crop), normalised
  exactly as in training, with the training set's mean; the class names are the dataset's."""
  if not paths:
    raise ConfigError('--images names no image files.')
  pil_images = [load_image(p) for p in paths]
  params, meta = restore_params(config, workdir, step)
  data = input_pipeline.load(config)
  views, windows = zip(*(data.test_view(image) for image in pil_images))
  images = input_pipeline.pixel_batch(np.stack(views), np.stack(windows))
  spec = train.model_spec(config)

  @jax.jit
  def logits_fn(params, images):
    x = input_pipeline.normalize(images, data.mean)
    return model_lib.apply(params, x, spec, compute_dtype=train.compute_dtype(config))

  probs = np.asarray(jax.nn.softmax(logits_fn(params, images).astype(jnp.float32)))
  info = data.info
  results = []
  for path, p in zip(paths, probs):
    best = np.argsort(-p)[:min(top, len(p))]
    results.append({'image': path, 'step': int(meta['step']),
                    'top': [[info.class_names[i], float(p[i])] for i in best]})
  return results
