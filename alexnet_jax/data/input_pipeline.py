"""`load(config)`: the run's data from the loader that `data.pipeline` names.

  memory: small datasets of one image size decoded once into RAM (`memory.load`)
  stream: encoded images of any size decoded every step, the paper's pipeline (`reading.load`)

Both return a `batching.Data`: the dataset's shapes and class names, the mean the device
subtracts, the training loader and the eval reader. The config is checked beforehand, in one
place (`alexnet_jax.train.run_setup.validate`).
"""

from __future__ import annotations

import logging

from alexnet_jax.data import batching
from alexnet_jax.data import memory
from alexnet_jax.data import provenance
from alexnet_jax.data import reading

PIPELINES = {'memory': memory.load, 'stream': reading.load}


def load(config) -> batching.Data:
  """The run's data; its source and size logged in one line (`provenance.line`)."""
  data = PIPELINES[config.data.pipeline](config)
  logging.info('%s', provenance.line(config, data.info))
  return data
