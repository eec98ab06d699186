"""What a checkpoint holds: its directories and items, the errors about it, and the
fingerprint written with its arrays (`checkpointing` has the whole story)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

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
  """A step directory that fails to restore with evidence of damage (damage.py)
  or whose arrays fail the fingerprint."""


class NoCheckpointError(UserError):
  """Evaluation asked for a checkpoint the workdir does not have."""


class CheckpointSaveError(UserError):
  """An asynchronous save failed (a full disk, a lost mount, ...)."""


def state_bytes(abstract_state) -> int:
  """Bytes of the arrays of a (possibly abstract) state: what a checkpoint holds."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_state))


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
