"""Every config in configs/ starts at chance: its first loss is near ln(classes).

A loss far above ln(classes) at step 0 means logits of a large scale, which the first steps
spend undoing (an image-folder run once started at 20.7 against ln 10 = 2.3). The inputs are
what the pipelines feed the network: real images, on the 0-255 scale, mean subtracted.
"""

import gzip
import importlib
import math
import pathlib

import jax
import numpy as np
import pytest

from alexnet_jax.model import config as model_config
from alexnet_jax.model import network

DATA = pathlib.Path(__file__).parents[1] / 'data' / 'fashion_mnist'
CONFIGS = sorted(p.stem for p in pathlib.Path(__file__).parents[1].glob('configs/*.py')
                 if p.stem != '__init__')


def real_images(size, channels, batch, seed):
  """Embedded Fashion-MNIST test images, resized to the config's size, grey copied to every
  channel, minus the per-pixel mean of 512 of them (the pipelines subtract the training mean)."""
  from PIL import Image
  with gzip.open(DATA / 't10k-images-idx3-ubyte.gz') as f:
    pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  rng = np.random.default_rng(seed)
  pick = rng.choice(len(pixels), 512, replace=False)
  resized = np.stack([np.asarray(Image.fromarray(pixels[i]).resize((size, size), Image.BILINEAR))
                      for i in pick]).astype(np.float32)
  images = np.repeat((resized - resized.mean(0))[..., None], channels, axis=-1)
  return images[:batch]


def first_loss(config, seed, batch=16):
  spec = model_config.model_spec(config)
  params = network.init_params(jax.random.key(seed), spec)
  images = real_images(spec.image_size, spec.in_channels, batch, seed)
  labels = np.random.default_rng(seed).integers(0, spec.num_classes, batch)
  logits = network.apply(params, images, spec, train=True, dropout_key=jax.random.key(seed),
                       example_ids=np.arange(batch))
  log_probs = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)))
  return -log_probs[np.arange(batch), labels].mean()


def test_every_config_is_checked():
  assert {'alexnet', 'fashion_mnist', 'image_folder', 'synthetic'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_first_loss_is_near_chance(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  chance = math.log(config.data.num_classes)
  for seed in (0, 1):
    loss = first_loss(config, seed)
    # Within 10% of chance: a softmax whose logits spread by less than about 1.
    assert abs(loss - chance) < 0.1 * chance, (name, seed, loss, chance)
