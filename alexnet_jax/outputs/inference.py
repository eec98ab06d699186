"""Commands on a trained checkpoint: predictions for image files, and figures.

They restore the parameters alone, with the mean image and the class names the checkpoint
carries (`checkpointing`): no dataset is read, no optimizer built, and one device is used
whatever mesh wrote the checkpoint.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.checkpoint.params import restore_params
from alexnet_jax.data import class_names
from alexnet_jax.data import geometry
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import transforms
from alexnet_jax.errors import ConfigError
from alexnet_jax.model import config as model_config
from alexnet_jax.model import network as model_lib
from alexnet_jax.model import pixels
from alexnet_jax.outputs import figure4
from alexnet_jax.outputs import figures


def figures_for_checkpoint(config, workdir: str, step: int | None = None,
                           out_dir: str | None = None) -> list[str]:
  """conv1's kernels of a checkpoint (the paper's Figure 3), its Figure 4 (`figure4`) and
  the run's curves, into `out_dir` (default <workdir>/figures/, which must then be
  writable)."""
  out_dir = out_dir or os.path.join(workdir, figures.FIGURES_DIR)
  existing = os.path.abspath(out_dir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f'Cannot write the figures into {out_dir} ({existing} is not writable); '
                      'name another directory with --figures_dir.')
  params, meta, inputs = restore_params(config, workdir, step)
  if jax.process_index() != 0:
    return []
  paths = [figures.save_conv1(params['conv1']['kernel'], out_dir, int(meta['step']))]
  curves = figures.save_curves(workdir, out_dir)
  # Figure 4 reads the dataset (test images, a sample of the training images), normalised
  # with the mean and scale the checkpoint carries, as `predict` does.
  mean, scale = checkpointing.normalisation(meta, inputs)
  paths += figure4.save(
      jax.tree.map(jnp.asarray, params), model_config.model_spec(config),
      input_pipeline.load(config), mean, scale,
      class_names.readable(meta['class_names'], meta.get(class_names.META_KEY)), out_dir,
      int(meta['step']), compute_dtype=model_config.compute_dtype(config))
  return paths + ([curves] if curves else [])


def load_image(path: str):
  """An image file as an upright PIL image, or one sentence saying why it cannot be read."""
  try:
    image = transforms.open_image(path)
  except transforms.DECODE_ERRORS as e:
    raise ConfigError(f'--images: cannot read {path} as an image ({e}).') from e
  return image


def predict(config, workdir: str, paths: list[str], step: int | None = None,
            top: int = 5) -> list[dict]:
  """Classifies image files with a checkpoint: for each, the `top` classes (the label and a
  readable name, `class_names.readable`) and probabilities. Each image gets the eval split's
  centre view (the image prepared as the stored ones, `data.prepared_geometry`, then the
  central crop), normalised exactly as in training, with the mean the checkpoint carries."""
  if not paths:
    raise ConfigError('--images names no image files.')
  pil_images = [load_image(p) for p in paths]
  params, meta, inputs = restore_params(config, workdir, step, reads_data=False)
  mean, scale = checkpointing.normalisation(meta, inputs)
  d = config.data
  size = d.prepared_size or (mean.shape[0] if mean.ndim == 3 else d.image_size)
  views, windows = zip(*(geometry.centre_view(image, size, d.crop_size, d.channels,
                                              d.prepared_geometry if d.prepared_size else
                                              'centre_crop') for image in pil_images))
  images = pixels.pixel_batch(np.stack(views), np.stack(windows))
  spec = model_config.model_spec(config)

  @jax.jit
  def probabilities(params, images):
    logits = model_lib.apply(params, pixels.normalize(images, mean, scale), spec,
                             compute_dtype=model_config.compute_dtype(config))
    return jax.nn.softmax(logits.astype(jnp.float32))

  probs = np.asarray(probabilities(params, images))
  labels = meta['class_names']
  names = class_names.readable(labels, meta.get(class_names.META_KEY))
  results = []
  for path, p in zip(paths, probs):
    best = np.argsort(-p)[:min(top, len(p))]
    results.append({'image': path, 'step': int(meta['step']),
                    'top': [{'class': labels[i], 'name': names[i], 'probability': float(p[i])}
                            for i in best]})
  return results
