"""Saving checkpoints: asynchronous orbax saves, and a failed save in one sentence naming
the last complete checkpoint. Old steps are pruned only once no save is in flight
(`retention`), so the newest complete checkpoint is never removed before a newer one is
complete."""

from __future__ import annotations

import errno
import logging
import os

import orbax.checkpoint as ocp

from alexnet_jax.checkpoint.format import INPUTS
from alexnet_jax.checkpoint.format import CheckpointSaveError
from alexnet_jax.checkpoint.format import state_fingerprint


def _machine_cause(e: BaseException) -> str | None:
  """The failure of the disk or the machine behind `e`, in a few words: the first OSError in
  the chain of causes (its strerror and file), or an OS error tensorstore names in its own
  words; None where there is none."""
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
  return None


def _root_cause(e: BaseException) -> str:
  """What went wrong, in a few words, never a traceback."""
  text = str(e)
  return _machine_cause(e) or (text.splitlines()[0][:300] if text else type(e).__name__)


class Saving:
  """The writing half of `checkpointing.Checkpoints` (its `mngr`, `steps` and `path`, and
  `retention.Retention`'s pruning)."""

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
    # orbax and tensorstore fail in many types on a full disk or a lost mount; `_failed` says
    # it in one sentence, with the traceback where nothing shows the machine at fault.
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
    if self._after_save is not None:
      self._after_save(step)

  def _failed(self, e: BaseException):
    step, self._pending = self._pending, None
    if _machine_cause(e) is None:  # no OS error anywhere: maybe a bug, shown whole
      logging.error('Saving the checkpoint of step %s raised an error that shows no failure of '
                    'the disk or the machine; its traceback:', step, exc_info=e)
    good = [s for s in self.steps() if s != step]
    last = f'the last complete checkpoint is {self.path(good[-1])}' if good else (
        'no checkpoint is complete')
    raise CheckpointSaveError(f'Saving the checkpoint of step {step} into {self.directory} '
                              f'failed ({_root_cause(e)}); {last}.') from None

  def check_errors(self) -> None:
    """Raises CheckpointSaveError if a background save has failed (does not wait)."""
    try:
      self.mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  (as in `save`)
      self._failed(e)

  def wait(self) -> None:
    """Waits for the save in flight; CheckpointSaveError if it failed."""
    try:
      self.mngr.wait_until_finished()
      self.mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  (as in `save`)
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
