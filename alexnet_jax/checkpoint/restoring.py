"""Restoring checkpoints onto the current mesh, and judging a failed restore: a step is
skipped as damaged only on evidence (`damage`, or arrays that fail their fingerprint); any
other failure stops the run with every step left where it is."""

from __future__ import annotations

import logging
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.checkpoint import damage
from alexnet_jax.checkpoint.format import INPUTS
from alexnet_jax.checkpoint.format import CorruptCheckpointError
from alexnet_jax.checkpoint.format import NoCheckpointError
from alexnet_jax.checkpoint.format import fingerprint
from alexnet_jax.checkpoint.format import normalisation
from alexnet_jax.checkpoint.format import state_fingerprint


class Restoring:
  """The reading half of `checkpointing.Checkpoints` (its `mngr`, `directory`, `steps`,
  `path`)."""

  def read_meta(self, step: int) -> dict:
    return self.mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def read_normalisation(self, step: int):
    """The (mean, scale) `step` was trained with (`normalisation`)."""
    as_numpy = {name: ocp.RestoreArgs(restore_type=np.ndarray) for name in INPUTS}
    meta, items = self._restore_step(step, lambda meta, path: None, {
        'inputs': ocp.args.PyTreeRestore(restore_args=as_numpy)})
    return normalisation(meta, items['inputs'])

  def _restore_step(self, step: int, check_meta: Callable[[dict, str], None], args: dict):
    """meta and the items of `args` of `step`; CorruptCheckpointError on evidence of damage,
    CheckpointReadError on any other failure (`damage.judge`). `check_meta(meta,
    path)` may raise a UserError (a config that does not fit the checkpoint), which is not a
    damaged checkpoint and propagates."""
    path = self.path(step)
    try:
      meta = self.read_meta(step)
      if not isinstance(meta, dict) or meta.get('step') != step:
        raise CorruptCheckpointError(
            f'{path}: its meta item says step '
            f'{meta.get("step") if isinstance(meta, dict) else meta}')
    except CorruptCheckpointError:
      raise
    # orbax and tensorstore fail in many types on a damaged file, a lost mount or a bug;
    # `_judge` tells them apart, and reports what it cannot place with its traceback.
    except Exception as e:  # pylint: disable=broad-except
      self._judge(e, path, 'its meta item is unreadable')
    check_meta(meta, path)
    try:
      items = self.mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except  (as above)
      self._judge(e, path, 'its arrays are unreadable')
    return meta, items

  @staticmethod
  def _judge(e: BaseException, path: str, what: str):
    verdict = damage.judge(e, path)
    if verdict == 'unexpected':  # neither damage nor the machine: maybe a bug, shown whole
      logging.error('Restoring %s raised an error that shows neither damage nor a failure of '
                    'the machine; its traceback:', path, exc_info=e)
    if verdict != 'damaged':
      raise damage.read_error(e, path, verdict) from e
    why = damage.inspect(path) or damage.reason(e)
    raise CorruptCheckpointError(f'{path}: {what} ({why})') from e

  def restore_step(self, step: int, abstract_state, check_meta: Callable[[dict, str], None]):
    """Restores `step` into `abstract_state`'s shapes and shardings: (state, meta), or raises
    CorruptCheckpointError."""
    meta, items = self._restore_step(step, check_meta,
                                     {'state': ocp.args.StandardRestore(abstract_state)})
    state = items['state']
    if state_fingerprint(state) != meta.get('fingerprint'):
      raise CorruptCheckpointError(f'{self.path(step)}: its arrays do not match the '
                                   'fingerprint written with them')
    return state, meta

  def restore_params_step(self, step: int, abstract_params, check_meta):
    """Only the parameters of `step` as numpy arrays (and its `inputs`), for inference:
    (params, meta, inputs), or raises CorruptCheckpointError. `abstract_params` gives their
    structure, shapes and dtypes."""
    as_numpy = {name: ocp.RestoreArgs(restore_type=np.ndarray) for name in INPUTS}
    meta, items = self._restore_step(step, check_meta, {
        'state': ocp.args.PyTreeRestore(
            item={'params': abstract_params}, partial_restore=True,
            restore_args={'params': jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract_params)}),
        'inputs': ocp.args.PyTreeRestore(restore_args=as_numpy)})
    params = items['state']['params']
    if fingerprint(params) != (meta.get('fingerprint') or {}).get('params'):
      raise CorruptCheckpointError(f'{self.path(step)}: its parameters do not match the '
                                   'fingerprint written with them')
    return params, meta, items['inputs']

  def restore(self, abstract_state, check_meta: Callable[[dict, str], None],
              step: int | None = None, params_only: bool = False):
    """The newest restorable step (or `step`): (state, meta, {damaged step skipped: why});
    with `params_only`, `abstract_state` is the parameters' and the first element is
    (params, inputs).

    Returns (None, None, damaged) when no step restores. Only evidence of damage skips a
    step; any other failure raises CheckpointReadError.
    """
    steps = self.steps()
    if step is not None:
      if step not in steps:
        raise NoCheckpointError(f'There is no checkpoint for step {step} in {self.directory} '
                                f'(steps: {", ".join(map(str, steps)) or "none"}).')
      steps = [step]
    damaged = {}
    for s in reversed(steps):
      try:
        if params_only:
          params, meta, inputs = self.restore_params_step(s, abstract_state, check_meta)
          return (params, inputs), meta, damaged
        state, meta = self.restore_step(s, abstract_state, check_meta)
        return state, meta, damaged
      except CorruptCheckpointError as e:
        logging.warning('Skipping the damaged checkpoint %s.', e)
        damaged[s] = str(e).split(': ', 1)[-1]
    return None, None, damaged
