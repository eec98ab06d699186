"""orbax-checkpoint: asynchronous saves of the train state, restore onto any mesh.

A checkpoint holds the `TrainState` (parameters, optimizer state, step, dropout
key) and a JSON item with the loader position and host-side state (plateau
schedule). Restoring builds abstract arrays with the *current* mesh's
shardings, so a checkpoint written under one parallelism restores under another.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


def manager(workdir: str, save_every: int, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=checkpoint_managers.EveryNSteps(save_every),
      preservation_policy=checkpoint_managers.LatestN(keep),
      enable_async_checkpointing=True,
      create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=('state', 'meta'))


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict, force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=force)


def abstract_like(state):
  """ShapeDtypeStructs with the shardings of a (freshly initialised) state."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def restore(mngr: ocp.CheckpointManager, step: int, target_state):
  """Restores `step` into arrays shaped and sharded like `target_state`."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_like(target_state)),
      meta=ocp.args.JsonRestore()))
  return restored['state'], restored['meta']
