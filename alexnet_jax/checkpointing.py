"""orbax-checkpoint: asynchronous saves, exact resume, restore onto any mesh, damaged steps.

`checkpoints/<step>/` holds three items:

* `state`: the `TrainState` (parameters, optimizer state with the momentum buffers and the
  injected learning rate, step, dropout key), written by orbax in a background thread while
  training continues;
* `meta`: JSON with the step, the loader position (the step: batch s is a pure function of
  (seed, s)), the plateau schedule, the resolved config, the class names and a fingerprint of
  each part of `state`;
* `inputs`: what inference needs to prepare an image as training did: the mean the device
  subtracts. With the class names in `meta`, `--mode=predict` and `--mode=figures` restore
  the parameters alone (`restore_params`) without reading the dataset or building an
  optimizer.

Restoring builds abstract arrays with the *current* mesh's shardings, so a checkpoint written
under one mesh and parallelism restores under another.

Faults. orbax writes a step into a temporary directory and renames it once complete, so a save
killed half-way leaves no step directory; the next training run removes the temporary one.
Files damaged afterwards (truncated, overwritten) either fail to restore or fail the fingerprint
(tensorstore does not notice flipped bytes on its own): `Checkpoints.restore` then warns, naming
the step directory, and tries the previous step, and a training run moves the bad one to
`corrupt_checkpoints/`. Old steps are deleted here rather than by orbax, and only once no save
is in flight, so the newest complete checkpoint is never removed before a newer one is complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.errors import UserError

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'corrupt_checkpoints'
ITEMS = ('state', 'meta', 'inputs')
INPUTS = ('mean',)  # the host arrays of the `inputs` item


class CorruptCheckpointError(Exception):
  """A step directory that cannot be restored or whose arrays fail the fingerprint."""


class NoCheckpointError(UserError):
  """Evaluation asked for a checkpoint the workdir does not have."""


# ---- fingerprint -------------------------------------------------------------


@jax.jit
def _fingerprints(leaves):
  out = []
  for x in leaves:
    x = jnp.asarray(x)
    bits = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[
        x.dtype.itemsize]).astype(jnp.uint32)
    flat = jnp.zeros(x.shape, jnp.uint32)  # the row-major index of each element
    stride = 1
    for d in reversed(range(x.ndim)):
      flat = flat + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(stride)
      stride *= x.shape[d]
    out.append(jnp.sum(bits * (2 * flat + 1), dtype=jnp.uint32))
  return out


def fingerprint(tree) -> list[int]:
  """One uint32 per array: sum_i bits_i * (2 i + 1) mod 2**32.

  Integer sums do not depend on the reduction order, so the fingerprint is the same on every
  mesh; any single changed element changes it (the multiplier is odd), so flipped or zeroed
  bytes that tensorstore decodes without complaint are still caught. Arrays on devices are
  summed where they live (jitted); numpy arrays (parameters restored to the host for
  inference) in numpy, with the same uint32 wrap-around arithmetic.
  """
  leaves = jax.tree.leaves(tree)
  if leaves and all(isinstance(x, np.ndarray) for x in leaves):
    return [_host_fingerprint(x) for x in leaves]
  return [int(v) for v in jax.device_get(_fingerprints(leaves))]


def _host_fingerprint(x: np.ndarray) -> int:
  bits = np.ascontiguousarray(x).reshape(-1).view(f'uint{8 * x.dtype.itemsize}')
  odd = 2 * np.arange(bits.size, dtype=np.uint32) + np.uint32(1)
  return int(np.sum(bits.astype(np.uint32) * odd, dtype=np.uint32))


def state_fingerprint(state) -> dict[str, list[int]]:
  """`fingerprint` of each field of a TrainState (one pass over all its arrays), so that a
  part of it (the parameters, for inference) can be checked on its own."""
  names = [f.name for f in dataclasses.fields(state)]
  values = fingerprint(state)
  out, start = {}, 0
  for name in names:
    n = len(jax.tree.leaves(getattr(state, name)))
    out[name], start = values[start:start + n], start + n
  return out


# ---- the workdir's checkpoints ---------------------------------------------------


class Checkpoints:
  """The checkpoints of a workdir. `read_only` opens them without creating or cleaning anything
  (validation and evaluation must leave the workdir as it was)."""

  def __init__(self, workdir: str, keep: int = 1, read_only: bool = False,
               after_save: Callable[[int], None] | None = None):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.keep = keep
    self.read_only = read_only
    self._after_save = after_save
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0, max_to_keep=None)
    else:
      options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True, create=True,
                                             cleanup_tmp_directories=True)
    self.mngr = None
    if not read_only or os.path.isdir(self.directory):
      self.mngr = ocp.CheckpointManager(self.directory, options=options,
                                        item_names=ITEMS)

  def steps(self) -> list[int]:
    return sorted(self.mngr.all_steps()) if self.mngr else []

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # ---- writing -----------------------------------------------------------------
  def save(self, step: int, state, meta: dict, inputs: dict) -> None:
    """Starts an asynchronous save of `step` (`inputs`: host arrays for inference); returns
    once the arrays are copied off device."""
    self.mngr.wait_until_finished()  # the previous save is complete: pruning is safe now
    self._prune()
    assert set(inputs) == set(INPUTS), inputs
    meta = dict(meta, fingerprint=state_fingerprint(state))
    self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta),
                                                 inputs=ocp.args.StandardSave(inputs)),
                   force=True)
    if self._after_save is not None:
      self._after_save(step)

  def wait(self) -> None:
    self.mngr.wait_until_finished()
    self.mngr.check_for_errors()

  def close(self) -> None:
    if self.mngr is None:
      return
    if not self.read_only:
      self.wait()
      self._prune()
    self.mngr.close()

  def _prune(self) -> None:
    for step in self.steps()[:-self.keep]:
      self.mngr.delete(step)

  def quarantine(self, steps: list[int]) -> None:
    """Moves damaged steps out of orbax's sight into `corrupt_checkpoints/`, keeping them for
    inspection: left in place they would count as the latest step and block new saves."""
    if steps and jax.process_index() == 0:
      os.makedirs(os.path.join(self.workdir, CORRUPT_DIR), exist_ok=True)
      for step in steps:
        dest = os.path.join(self.workdir, CORRUPT_DIR, f'{step}-{int(time.time())}')
        shutil.move(self.path(step), dest)
        logging.warning('Moved the damaged checkpoint %s to %s.', self.path(step), dest)
    if steps and jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('alexnet_jax quarantine')
    if steps:
      self.mngr.reload()

  # ---- reading -----------------------------------------------------------------
  def read_meta(self, step: int) -> dict:
    return self.mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def _restore_step(self, step: int, check_meta: Callable[[dict, str], None], args: dict):
    """meta and the items of `args` of `step`, or CorruptCheckpointError. `check_meta(meta,
    path)` may raise a UserError (a config that does not fit the checkpoint), which is not a
    damaged checkpoint and propagates."""
    path = self.path(step)
    try:
      meta = self.read_meta(step)
      if not isinstance(meta, dict) or meta.get('step') != step:
        raise ValueError(f'meta says step {meta.get("step") if isinstance(meta, dict) else meta}')
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f'{path}: its meta item is unreadable ({e})') from e
    check_meta(meta, path)
    try:
      items = self.mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f'{path}: its arrays are unreadable '
                                   f'({str(e).splitlines()[0][:200]})') from e
    return meta, items

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
    """The newest restorable step (or `step`): (state, meta, damaged steps skipped); with
    `params_only`, `abstract_state` is the parameters' and the first element is (params,
    inputs).

    Returns (None, None, damaged) when no step restores.
    """
    steps = self.steps()
    if step is not None:
      if step not in steps:
        raise NoCheckpointError(f'There is no checkpoint for step {step} in {self.directory} '
                                f'(steps: {", ".join(map(str, steps)) or "none"}).')
      steps = [step]
    damaged = []
    for s in reversed(steps):
      try:
        if params_only:
          params, meta, inputs = self.restore_params_step(s, abstract_state, check_meta)
          return (params, inputs), meta, damaged
        state, meta = self.restore_step(s, abstract_state, check_meta)
        return state, meta, damaged
      except CorruptCheckpointError as e:
        logging.warning('Skipping the damaged checkpoint %s.', e)
        damaged.append(s)
    return None, None, damaged
