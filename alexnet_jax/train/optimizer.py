"""The paper's optimizer (section 5) in optax, and its learning-rate schedules.

Update rule of the paper, with i the step, eps the learning rate:

    v <- momentum * v - weight_decay * eps * w - eps * <dL/dw>
    w <- w + v

The learning rate multiplies the gradient *before* it enters the momentum
buffer (unlike `optax.sgd`, which scales after), so a learning-rate drop only
affects new gradients, as in the paper and cuda-convnet.

The learning rate is an injected hyperparameter (`opt_state.hyperparams`), so
the reduce-on-plateau schedule of the paper ("divide by 10 when the validation
error stops improving") is driven from the host by `Plateau` after each
evaluation, with no recompilation.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from alexnet_jax.errors import ConfigError

SCHEDULES = ('constant', 'step', 'plateau')


def warmup_factor(step, warmup_steps: int):
  """The warmup's multiplier of the learning rate at update `step` (1-based): step /
  warmup_steps up to warmup_steps, then 1; 1 throughout when warmup_steps is 0."""
  if warmup_steps <= 0:
    return 1.0
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def paper_momentum(learning_rate, momentum: float = 0.9, weight_decay: float = 0.0005,
                   warmup_steps: int = 0,
                   frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """v <- momentum v - wd lr w - lr g; w <- w + v (paper section 5).

  `warmup_steps` > 0 (not in the paper) multiplies the rate by `warmup_factor`: a linear ramp
  from lr / warmup_steps, as Goyal et al. (2017) warm up large steps. The rate then reaches
  its value once the network has left the first steps, whose gradients scale with the
  activations' size squared and can throw a network on high-contrast inputs out of range.
  The ramp has its own step count, so the plateau schedule's drops (the injected rate)
  compose with it.

  `frozen` layers (`fine_tuning`) are masked: no decay and no momentum, so the zero gradient
  the train step gives them leaves them exactly as they are."""

  def make(learning_rate, momentum, weight_decay):
    ramp = ([optax.scale_by_schedule(lambda count: warmup_factor(count + 1, warmup_steps))]
            if warmup_steps > 0 else [])
    update = optax.chain(
        optax.add_decayed_weights(weight_decay),  # g + wd * w
        optax.scale_by_learning_rate(learning_rate, flip_sign=True),  # -lr (g + wd w)
        *ramp,  # -lr f(step) (g + wd w)
        optax.trace(decay=momentum),  # v = momentum v - lr (g + wd w)
    )
    return optax.masked(update, trainable_mask(frozen)) if frozen else update

  return optax.inject_hyperparams(make, static_args=('momentum', 'weight_decay'))(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)


def trainable_mask(frozen: tuple[str, ...]):
  """optax.masked's mask: True on the leaves of the layers that train."""
  return lambda params: {name: jax.tree.map(lambda _: name not in frozen, layer)
                         for name, layer in params.items()}


def step_schedule(base: float, total_steps: int, boundaries: tuple[float, ...],
                  factor: float) -> optax.Schedule:
  """Multiply by `factor` at each fraction of training in `boundaries`.

  cuda-convnet2's ImageNet schedule is base 0.02, factor 250 ** (-1/3) at
  0.25, 0.5 and 0.75 of training.
  """
  return optax.piecewise_constant_schedule(
      base, {max(1, int(b * total_steps)): factor for b in boundaries})


def learning_rate_schedule(name: str, base: float, total_steps: int,
                           boundaries: tuple[float, ...] = (0.25, 0.5, 0.75),
                           factor: float = 0.1) -> float | Callable:
  if name == 'step':
    return step_schedule(base, total_steps, boundaries, factor)
  if name in ('constant', 'plateau'):  # plateau: constant, lowered by `Plateau`
    return base
  raise ConfigError(f'lr_schedule={name!r} is not one of {", ".join(SCHEDULES)}.')


@dataclasses.dataclass
class Plateau:
  """Paper section 5: divide the learning rate by 10 when the validation error
  stops improving, at most `max_drops` times (the paper dropped it 3 times)."""

  factor: float = 0.1
  patience: int = 1  # evaluations without improvement before a drop
  max_drops: int = 3
  min_delta: float = 0.0
  best: float = float('inf')
  bad_evals: int = 0
  drops: int = 0

  def update(self, error: float) -> bool:
    """Records an evaluation error; True when the learning rate should drop now."""
    if error < self.best - self.min_delta:
      self.best, self.bad_evals = error, 0
      return False
    self.bad_evals += 1
    if self.bad_evals >= self.patience and self.drops < self.max_drops:
      self.bad_evals = 0
      self.drops += 1
      return True
    return False

  def state_dict(self) -> dict:
    return dataclasses.asdict(self)
