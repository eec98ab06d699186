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
(`damage.CheckpointReadError`) with every step left where it is. Old steps are deleted here rather than by orbax, and only once no save
is in flight, so the newest complete checkpoint is never removed before a newer one is complete.
"""

from __future__ import annotations

import os
from typing import Callable

import orbax.checkpoint as ocp

from alexnet_jax.checkpoint.format import CHECKPOINT_DIR
from alexnet_jax.checkpoint.format import CORRUPT_DIR  # noqa: F401  (re-exported)
from alexnet_jax.checkpoint.format import ITEMS
from alexnet_jax.checkpoint.format import CheckpointSaveError  # noqa: F401
from alexnet_jax.checkpoint.format import CorruptCheckpointError  # noqa: F401
from alexnet_jax.checkpoint.format import NoCheckpointError  # noqa: F401
from alexnet_jax.checkpoint.format import normalisation  # noqa: F401
from alexnet_jax.checkpoint.format import state_bytes  # noqa: F401
from alexnet_jax.checkpoint.restoring import Restoring
from alexnet_jax.checkpoint.retention import Retention
from alexnet_jax.checkpoint.saving import Saving


class Checkpoints(Saving, Retention, Restoring):
  """The checkpoints of a workdir: how they are saved (`saving`), which stay (`retention`),
  and how they are restored and judged (`restoring`). `read_only` opens them without
  creating or cleaning anything (validation and evaluation must leave the workdir as it
  was)."""

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
