"""Whether a checkpoint fits a config: a checkpoint restores only into a model of the same
shapes and an optimizer state of the same structure. Resuming, inference and fine-tuning
(`fine_tuning`) ask here before orbax would fail on a shape."""

from __future__ import annotations

import json
import logging

from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.checkpoint import workdir as workdir_lib
from alexnet_jax.errors import ConfigError
from alexnet_jax.model import network as model_lib

SHAPE_DATA_FIELDS = ('data.image_size', 'data.channels', 'data.num_classes')
# Fields a resumed run may change without a warning (placement, length, loader speed).
NOT_COMPARED = ('mesh.', 'parallelism', 'model.conv1_impl', 'model.conv1_input',
                'model.pool_backward', 'model.tower_conv', 'model.lrn_impl', 'distributed.',
                'num_epochs', 'num_train_steps', 'min_train_steps', 'peak_flops_per_device',
                'start_fresh_if_damaged', 'allow_no_file_locks', 'profile.', 'data.threads',
                'data.processes', 'data.prefetch', 'data.max_bad_records', 'init_from',
                'data.prepare_processes', 'data.keep_originals', 'stop_signals')


def config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def saved_spec(meta: dict, path: str) -> model_lib.AlexNetSpec:
  """The network a checkpoint's meta item says it holds."""
  try:
    saved = meta['config']
    spec = model_lib.AlexNetSpec.from_config(
        saved['model'], num_classes=saved['data']['num_classes'],
        image_size=saved['data']['image_size'], in_channels=saved['data']['channels'])
    spec.param_shapes()
    return spec
  except (KeyError, TypeError, ValueError) as e:
    raise checkpointing.CorruptCheckpointError(f'{path}: its meta item has no usable config '
                                               f'({e!r})') from e


def check(config, spec: model_lib.AlexNetSpec, meta: dict, path: str) -> None:
  """A checkpoint restores only into a model of the same shapes: fail in one sentence, naming
  the fields that differ, rather than in orbax's shape mismatch."""
  old_shapes = saved_spec(meta, path).param_shapes()
  saved = meta['config']
  now, then = workdir_lib.flatten(config_dict(config)), workdir_lib.flatten(saved)
  if old_shapes != spec.param_shapes():
    fields = [k for k in now if (k.startswith('model.') or k in SHAPE_DATA_FIELDS)
              and now[k] != then.get(k)]
    diffs = ', '.join(f'{k}={now[k]!r} (the checkpoint has {then.get(k)!r})' for k in fields)
    raise ConfigError(f'The config changes the model\'s shapes ({diffs or "param shapes"}) but '
                      f'the checkpoint {path} was written with the old ones; use the same model '
                      'config to resume, or a new --workdir.')
  if bool(now['lr_warmup_steps']) != bool(then.get('lr_warmup_steps', 0)):
    raise ConfigError(f'lr_warmup_steps={now["lr_warmup_steps"]} (the checkpoint {path} has '
                      f'{then.get("lr_warmup_steps", 0)}) adds or removes the warmup\'s step '
                      'count in the optimizer state; resume with a warmup on or off as it was, '
                      'or use a new --workdir.')
  if sorted(now.get('freeze') or []) != sorted(then.get('freeze') or []):
    raise ConfigError(f'freeze={tuple(now.get("freeze") or ())} (the checkpoint {path} has '
                      f'{tuple(then.get("freeze") or ())}) changes which layers the optimizer '
                      'state holds; resume with the same freeze, or start a new --workdir with '
                      'init_from pointing at this one.')
  changed = [k for k in now if now[k] != then.get(k) and not k.startswith(NOT_COMPARED)]
  if changed:
    logging.warning('Resuming from %s with changed config fields: %s.', path,
                    ', '.join(f'{k}={then.get(k)!r} -> {now[k]!r}' for k in changed))
