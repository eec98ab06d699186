"""Which checkpoints stay: the newest `keep` complete steps, and damaged ones moved out of
orbax's sight into `corrupt_checkpoints/` (kept for inspection, never deleted)."""

from __future__ import annotations

import logging
import os
import shutil
import time

import jax

from alexnet_jax.checkpoint.format import CORRUPT_DIR


class Retention:
  """What to keep, for `checkpointing.Checkpoints` (its `mngr`, `steps`, `path`, `keep`)."""

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
