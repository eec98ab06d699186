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
Files damaged afterwards (truncated, overwritten) either fail to restore with evidence of damage
(`checkpoint_damage`) or fail the fingerprint (tensorstore does not notice flipped bytes on its
own): `Checkpoints.restore` then warns, naming the step directory, and tries the previous step,
and a training run moves the bad one to `corrupt_checkpoints/`. A restore that fails for any
other reason (an I/O error, memory, an orbax that reads the files differently) stops the run
(`checkpoint_damage.CheckpointReadError`) with every step left where it is. Old steps are deleted here rather than by orbax, and only once no save
is in flight, so the newest complete checkpoint is never removed before a newer one is complete.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax import checkpoint_damage
from alexnet_jax.errors import UserError

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'corrupt_checkpoints'
ITEMS = ('state', 'meta', 'inputs')
INPUTS = ('mean',)  # the host arrays of the `inputs` item


def normalisation(meta: dict, inputs: dict):
  """The (mean, scale) a checkpoint's training normalised its inputs with (`pixels.normalize`):
  scale None is data.std=none, the paper's 0-255 scale."""
  scale = meta.get('input_scale')
  return (np.asarray(inputs['mean'], np.float32),
          None if scale is None else np.asarray(scale, np.float32))


class CorruptCheckpointError(Exception):
  """A step directory that fails to restore with evidence of damage (checkpoint_damage.py)
  or whose arrays fail the fingerprint."""


class NoCheckpointError(UserError):
  """Evaluation asked for a checkpoint the workdir does not have."""


class CheckpointSaveError(UserError):
  """An asynchronous save failed (a full disk, a lost mount, ...)."""


def _root_cause(e: BaseException) -> str:
  """What went wrong, in a few words: the first OSError in the chain of causes (its strerror
  and file), else the error's own first line; never a traceback."""
  seen, cause = set(), e
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    if isinstance(cause, OSError) and cause.strerror:
      return f'{cause.strerror}: {cause.filename}' if cause.filename else cause.strerror
    cause = cause.__cause__ or cause.__context__
  text = str(e)
  for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
    if os.strerror(code) in text:  # tensorstore reports OS errors in its own words
      return os.strerror(code)
  return text.splitlines()[0][:300] if text else type(e).__name__


def state_bytes(abstract_state) -> int:
  """Bytes of the arrays of a (possibly abstract) state: what a checkpoint holds."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_state))


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
    self._pending = None  # the step being saved in the background
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
    once the arrays are copied off device. A failed earlier save raises
    CheckpointSaveError here at the latest."""
    self.wait()  # the previous save is complete: pruning is safe now
    self._prune()
    self._clear_stray(step)
    assert set(inputs) == set(INPUTS), inputs
    meta = dict(meta, fingerprint=state_fingerprint(state))
    self._pending = step
    try:
      self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta),
                                                   inputs=ocp.args.StandardSave(inputs)),
                     force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
    if self._after_save is not None:
      self._after_save(step)

  def _failed(self, e: BaseException):
    step, self._pending = self._pending, None
    good = [s for s in self.steps() if s != step]
    last = f'the last complete checkpoint is {self.path(good[-1])}' if good else (
        'no checkpoint is complete')
    raise CheckpointSaveError(f'Saving the checkpoint of step {step} into {self.directory} '
                              f'failed ({_root_cause(e)}); {last}.') from None

  def check_errors(self) -> None:
    """Raises CheckpointSaveError if a background save has failed (does not wait)."""
    try:
      self.mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)

  def wait(self) -> None:
    """Waits for the save in flight; CheckpointSaveError if it failed."""
    try:
      self.mngr.wait_until_finished()
      self.mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
    self._pending = None

  def close(self, failing: bool = False) -> None:
    """Waits for the save in flight and closes the manager. With `failing` (the run is
    already ending with an error) a failed save is logged, not raised, and nothing is
    pruned; the manager is closed on every path, so that no orbax thread outlives the run."""
    if self.mngr is None:
      return
    try:
      if not self.read_only:
        try:
          self.wait()
          if not failing:
            self._prune()
        except CheckpointSaveError as e:
          if not failing:
            raise
          logging.warning('%s', e)
    finally:
      self.mngr.close()

  def _clear_stray(self, step: int) -> None:
    """Moves aside anything at `checkpoints/<step>` that orbax does not list as a step (a
    file, a broken link or a link loop left by a fault), which would make the save fail."""
    path = self.path(step)
    if step not in self.steps() and (os.path.lexists(path)):
      self.quarantine([step])

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

  def quarantine_metrics(self) -> None:
    """Moves metrics.jsonl beside the damaged steps before a fresh start rewrites it."""
    path = os.path.join(self.workdir, 'metrics.jsonl')
    if os.path.exists(path) and jax.process_index() == 0:
      os.makedirs(os.path.join(self.workdir, CORRUPT_DIR), exist_ok=True)
      dest = os.path.join(self.workdir, CORRUPT_DIR, f'metrics-{int(time.time())}.jsonl')
      shutil.move(path, dest)
      logging.warning('Starting again from step 0 (start_fresh_if_damaged): moved %s to %s.',
                      path, dest)

  # ---- reading -----------------------------------------------------------------
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
    CheckpointReadError on any other failure (`checkpoint_damage.judge`). `check_meta(meta,
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
    except Exception as e:  # pylint: disable=broad-except
      self._judge(e, path, 'its meta item is unreadable')
    check_meta(meta, path)
    try:
      items = self.mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      self._judge(e, path, 'its arrays are unreadable')
    return meta, items

  @staticmethod
  def _judge(e: BaseException, path: str, what: str):
    verdict = checkpoint_damage.judge(e, path)
    if verdict != 'damaged':
      raise checkpoint_damage.read_error(e, path, verdict) from e
    why = checkpoint_damage.inspect(path) or checkpoint_damage.reason(e)
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
