"""Transfer: a run that starts from another run's (or imported) weights, and layers it leaves
frozen. Not in the paper; the recipe of Donahue et al. (DeCAF, 2014) and Yosinski et al.
(2014): ImageNet's features, a new classifier for the new classes.

`config.init_from` names a workdir (its latest restorable checkpoint) or one of its
`checkpoints/<step>`. Every layer whose shapes match is loaded, but those `init_from_skip`
names (fc8 for other classes, even as many); fc8 starts from the config's initialisation
when the number of classes differs; any other mismatch stops the run in one sentence before
anything is written. The optimizer state starts afresh (zero momentum) and
the run counts its own steps from 0. A run that already has checkpoints resumes from them,
so a preempted fine-tune continues where it was; `init_from` is read only to start.

`config.init_from_inputs` (default True) normalises the new images as the source's were: its
mean (image or channel values) and scale, which its features were learned on, rather than the
new data's own (`inputs_for`). The new data's PCA lighting still comes from its own pixels.

`config.freeze` names layers whose parameters the updates leave exactly as they are: the train
step takes the gradient with respect to the other layers only (`steps.make_train_step`), so no
weight gradient is computed for a frozen layer, nor any backward pass below the lowest
trainable one, and the optimizer masks them (no weight decay, no momentum).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.checkpoint import compat
from alexnet_jax.errors import ConfigError
from alexnet_jax.model import network as model_lib

LAYERS = (*model_lib.CONV_LAYERS, 'fc6', 'fc7', 'fc8')
# Re-initialised rather than loaded when its shape differs: the classifier of other classes.
HEAD = 'fc8'


def frozen_layers(freeze, spec: model_lib.AlexNetSpec) -> tuple[str, ...]:
  """`config.freeze` checked: layer names, not all of them."""
  freeze = tuple(freeze or ())
  unknown = [name for name in freeze if name not in spec.param_shapes()]
  if unknown:
    raise ConfigError(f'freeze names {", ".join(map(repr, unknown))}, which the network does '
                      f'not have; choose from {", ".join(LAYERS)}.')
  if set(freeze) >= set(spec.param_shapes()):
    raise ConfigError('freeze names every layer, which leaves nothing to train; leave at '
                      'least one layer (e.g. fc8) out of it.')
  return freeze


@dataclasses.dataclass
class Init:
  """What a fine-tune starts from: the loaded layers (host arrays), the layers that start
  afresh, where they came from, and the source's input normalisation (mean, scale)."""
  params: dict
  fresh: tuple[str, ...]
  source: str
  normalisation: tuple = (None, None)


def _source(init_from: str) -> tuple[str, int | None]:
  """(workdir, step or None) of `init_from`: a workdir, or its checkpoints/<step>."""
  path = os.path.abspath(os.path.expanduser(init_from)).rstrip(os.sep)
  parent, name = os.path.split(path)
  if name.isdigit() and os.path.basename(parent) == checkpointing.CHECKPOINT_DIR:
    return os.path.dirname(parent), int(name)
  return path, None


def load_init(init_from: str, spec: model_lib.AlexNetSpec, skip=()) -> Init:
  """Reads the weights `init_from` holds for the network `spec`, but those of the layers in
  `skip` (which start from the config's initialisation); reads, never writes."""
  unknown = [name for name in skip if name not in spec.param_shapes()]
  if unknown:
    raise ConfigError(f'init_from_skip names {", ".join(map(repr, unknown))}, which the '
                      f'network does not have; choose from {", ".join(LAYERS)}.')
  workdir, step = _source(init_from)
  where = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not os.path.isdir(where):
    raise ConfigError(f'init_from={init_from!r} has no {checkpointing.CHECKPOINT_DIR}/ folder; '
                      'point it at a workdir that training or scripts/import_weights.py wrote.')
  ckpts = checkpointing.Checkpoints(workdir, read_only=True)
  try:
    steps = ckpts.steps()
    if not steps or (step is not None and step not in steps):
      which = 'no checkpoint' if step is None else f'no checkpoint {step}'
      raise ConfigError(f'init_from={init_from!r}: there is {which} in {where} (steps: '
                        f'{", ".join(map(str, steps)) or "none"}).')
    newest = steps[-1] if step is None else step
    source_spec = compat.saved_spec(ckpts.read_meta(newest), ckpts.path(newest))
    fresh = _check_shapes(source_spec, spec, ckpts.path(newest))
    fresh += tuple(name for name in skip if name not in fresh)
    abstract = jax.tree.map(lambda shape: jax.ShapeDtypeStruct(shape, np.float32),
                            source_spec.param_shapes(), is_leaf=lambda x: isinstance(x, tuple))
    restored, meta, _ = ckpts.restore(abstract, lambda meta, path: None, step,
                                      params_only=True)
  finally:
    ckpts.close()
  if restored is None:
    raise checkpointing.NoCheckpointError(f'No checkpoint in {where} restores; init_from needs '
                                          'an undamaged one.')
  params = {name: layer for name, layer in restored[0].items() if name not in fresh}
  source = ckpts.path(meta['step'])
  logging.info('Fine-tuning from %s: %s loaded%s.', source, ', '.join(params),
               f'; {", ".join(fresh)} initialised afresh' if fresh else '')
  return Init(params=params, fresh=fresh, source=source,
              normalisation=checkpointing.normalisation(meta, restored[1]))


def pixel_mean_shape(d) -> tuple[int, int, int] | None:
  """The shape of a per-pixel mean for `config.data` `d`: that of its prepared images (the
  stream's data.prepared_size, memory's data.image_size); None where they vary in size."""
  size = d.prepared_size if d.pipeline == 'stream' else d.image_size
  return (size, size, d.channels) if size else None


def inputs_for(normalisation, d, source: str):
  """The source's (mean, scale), checked to fit `config.data` `d`; one sentence if not."""
  mean, scale = normalisation
  channels = mean.shape[-1]
  if channels != d.channels or (scale is not None and scale.shape != (channels,)):
    raise ConfigError(f'{source} was trained on images of {channels} channels, the config has '
                      f'data.channels={d.channels}; match them, or set init_from_inputs=False '
                      'to normalise with this data\'s own statistics.')
  want = pixel_mean_shape(d)
  if mean.ndim == 3 and mean.shape != want:
    size = 'images of varying size' if want is None else f'{want[0]}x{want[1]} images'
    raise ConfigError(f'{source} subtracts a mean image of {mean.shape[0]}x{mean.shape[1]}, '
                      f'but this run prepares {size}; set data.prepared_size (stream) or '
                      f'data.image_size (memory) to {mean.shape[0]}, or init_from_inputs=False '
                      'to normalise with this data\'s own statistics.')
  logging.info('Normalising the inputs as %s was trained: its %s mean%s.', source,
               'per-pixel' if mean.ndim == 3 else 'per-channel',
               '' if scale is None else ' and scale')
  return mean, scale


def _check_shapes(source: model_lib.AlexNetSpec, spec: model_lib.AlexNetSpec,
                  path: str) -> tuple[str, ...]:
  """The layers to initialise afresh (fc8 of other classes); raises on any other mismatch."""
  have, want = source.param_shapes(), spec.param_shapes()
  fresh = tuple(name for name in want if have.get(name) != want[name])
  others = [name for name in fresh if name != HEAD or have.get(name) is None
            or have[name]['kernel'][:-1] != want[name]['kernel'][:-1]]
  if others:
    diffs = ', '.join(f'{name} {have.get(name, {}).get("kernel")} (the config: '
                      f'{want[name]["kernel"]})' for name in others)
    raise ConfigError(f'The checkpoint {path} holds layers of other shapes than the config\'s '
                      f'network ({diffs}); use the model config it was written with (only '
                      f'{HEAD}\'s number of classes may differ).')
  if fresh:
    logging.info('%s: %s has %d classes, the config %d; it starts from the config\'s '
                 'initialisation.', path, HEAD, have[HEAD]['bias'][-1], want[HEAD]['bias'][-1])
  return fresh


def with_params(state, init: Init, layout):
  """`state` (freshly initialised) with the loaded layers placed as its own."""
  params = dict(state.params)
  for name, layer in init.params.items():
    params[name] = jax.tree.map(
        lambda host, like: jax.device_put(host.astype(like.dtype), like.sharding),
        layer, state.params[name])
  return state.replace(params=params)
