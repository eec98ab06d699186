"""The jitted train and eval steps, run under `jax.shard_map` on a `Layout`."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax

from alexnet_jax.model import network as model_lib
from alexnet_jax.model import pixels
from alexnet_jax.parallel.sharding import Layout


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  dropout_key: jax.Array  # dropout masks of step s use fold_in(dropout_key, s)


def create_train_state(key: jax.Array, spec: model_lib.AlexNetSpec,
                       tx: optax.GradientTransformation, layout: Layout) -> TrainState:
  """Initialises parameters on the host (identical on every mesh) and places them."""
  init_key, dropout_key = jax.random.split(key)
  params = jax.jit(functools.partial(model_lib.init_params, spec=spec))(init_key)
  params = jax.device_put(params, layout.param_shardings(params))
  replicated = NamedSharding(layout.mesh, P())
  with jax.set_mesh(layout.mesh):
    opt_state = jax.jit(tx.init)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
                    params=params, opt_state=opt_state,
                    dropout_key=jax.device_put(jax.random.key_data(dropout_key), replicated))


def abstract_train_state(spec: model_lib.AlexNetSpec, tx: optax.GradientTransformation,
                         layout: Layout) -> TrainState:
  """The state's shapes, dtypes and shardings on `layout`, without allocating it."""
  params = jax.eval_shape(lambda: model_lib.init_params(jax.random.key(0), spec))
  params = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
                        params, layout.param_shardings(params))
  with jax.set_mesh(layout.mesh):
    opt_state = jax.eval_shape(tx.init, params)
  # eval_shape under set_mesh leaves abstract-mesh shardings, which orbax cannot restore into.
  opt_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=NamedSharding(
          layout.mesh, x.sharding.spec if x.sharding is not None else P())),
      opt_state)
  replicated = NamedSharding(layout.mesh, P())
  scalar = lambda dtype, shape=(): jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)
  key_data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  return TrainState(step=scalar(jnp.int32), params=params, opt_state=opt_state,
                    dropout_key=scalar(key_data.dtype, key_data.shape))


def _on_mesh(fn, mesh):
  """Calls (and so traces) `fn` inside `jax.set_mesh(mesh)`; keeps `.lower` for HLO tests."""

  @functools.wraps(fn)
  def wrapped(*args):
    with jax.set_mesh(mesh):
      return fn(*args)

  def lower(*args):
    with jax.set_mesh(mesh):
      return fn.lower(*args)

  wrapped.lower = lower
  return wrapped


def _metric_sums(logits, labels, weights):
  """Sums over the local examples: loss, top-1 and top-5 hits, example count."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  k = min(5, logits.shape[-1])
  top = jax.lax.top_k(logits, k)[1]
  hit5 = jnp.any(top == labels[:, None], axis=-1)
  hit1 = top[:, 0] == labels
  return {'loss': jnp.sum(ce * weights), 'top1': jnp.sum(hit1 * weights),
          'top5': jnp.sum(hit5 * weights), 'count': jnp.sum(weights)}


def make_train_step(spec: model_lib.AlexNetSpec, layout: Layout,
                    tx: optax.GradientTransformation, global_batch: int,
                    compute_dtype=jnp.float32, donate: bool = True,
                    skip_nonfinite: bool = False, mean=None, grad_norm: bool = True,
                    scale=None, frozen: tuple[str, ...] = ()):
  """Returns train_step(state, images, labels) -> (state, metrics).

  `images` is a float32 batch, or a `pixels.pixel_batch` (uint8 pixels, windows,
  PCA shifts) that each device normalises for its rows with `mean` and `scale`
  (`pixels.normalize`).

  With `skip_nonfinite`, a step whose loss or gradient is NaN or Inf leaves the parameters and
  optimizer state as they were (the step counter still advances, so the next batch is used)
  and reports `skipped` = 1; deciding on device keeps the host out of the loop.

  `grad_norm=False` leaves `grad_norm` out of the metrics: reading every gradient once more
  costs 7% of the step on CPU, so the loop asks for it only on the steps it logs.

  `frozen` layers (`fine_tuning`) are constants of the differentiation: their gradient is
  zero without being computed (nor the backward pass below the lowest trainable layer), and
  `grad_norm` is the trainable layers'.
  """
  axes = layout.apply_axes
  grad_norm = grad_norm or skip_nonfinite

  def local_loss(params, images, labels, key):
    images = pixels.normalize(images, mean, scale, crop_size=spec.image_size)
    local_b = labels.shape[0]
    logits = model_lib.apply(params, images, spec, train=True, dropout_key=key,
                             example_ids=layout.example_ids(local_b),
                             compute_dtype=compute_dtype, **axes)
    sums = _metric_sums(logits, labels, jnp.ones((local_b,), jnp.float32))
    if layout.sum_axes:
      sums = jax.lax.psum(sums, layout.sum_axes)
    return sums['loss'] / global_batch, sums

  def train_step(state: TrainState, images, labels):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
    images = jax.tree.map(lambda x: jax.reshard(x, layout.batch_spec), images)
    labels = jax.reshard(labels, layout.label_spec)
    specs = layout.param_specs(state.params)
    loss_fn = layout.on_devices(
        local_loss, in_specs=(specs, layout.batch_spec, layout.label_spec, P()),
        out_specs=(P(), P()))
    trainable = {k: v for k, v in state.params.items() if k not in frozen}
    fixed = {k: v for k, v in state.params.items() if k in frozen}
    (loss, sums), grads = jax.value_and_grad(
        lambda train, *args: loss_fn({**train, **fixed}, *args), has_aux=True)(
            trainable, images, labels, key)
    grads = {k: grads[k] if k in grads else jax.tree.map(jnp.zeros_like, v)
             for k, v in state.params.items()}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'top1': sums['top1'] / global_batch,
               'top5': sums['top5'] / global_batch}
    if grad_norm:
      metrics['grad_norm'] = optax.tree.norm(grads)
    if skip_nonfinite:
      ok = jnp.isfinite(loss) & jnp.isfinite(metrics['grad_norm'])
      keep = lambda new, old: jnp.where(ok, new, old)
      params = jax.tree.map(keep, params, state.params)
      opt_state = jax.tree.map(keep, opt_state, state.opt_state)
      metrics['skipped'] = 1.0 - ok.astype(jnp.float32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return _on_mesh(jax.jit(train_step, donate_argnums=(0,) if donate else ()), layout.mesh)


def make_eval_step(spec: model_lib.AlexNetSpec, layout: Layout, compute_dtype=jnp.float32,
                   mean=None, scale=None):
  """Returns eval_step(params, images, labels, weights) -> summed metrics.

  `images` as for `make_train_step`.
  `weights` is 0 for padding examples of a last, partial batch. With
  `images` of shape (B, V, H, W, C) the softmax is averaged over the V views
  (the paper's 10-crop test, section 4.1).
  """
  axes = layout.apply_axes

  def local_eval(params, images, labels, weights):
    images = pixels.normalize(images, mean, scale)
    if images.ndim == 5:
      b, v = images.shape[:2]
      logits = model_lib.apply(params, images.reshape(b * v, *images.shape[2:]), spec,
                               compute_dtype=compute_dtype, **axes)
      # log of the mean softmax, computed in log space so that it never underflows to -inf
      log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, v, -1)
      logits = jax.nn.logsumexp(log_probs, axis=1) - jnp.log(float(v))
    else:
      logits = model_lib.apply(params, images, spec, compute_dtype=compute_dtype, **axes)
    sums = _metric_sums(logits, labels, weights)
    return jax.lax.psum(sums, layout.sum_axes) if layout.sum_axes else sums

  def eval_step(params, images, labels, weights):
    images = jax.tree.map(lambda x: jax.reshard(x, layout.batch_spec), images)
    labels, weights = (jax.reshard(x, layout.label_spec) for x in (labels, weights))
    return layout.on_devices(
        local_eval, in_specs=(layout.param_specs(params), layout.batch_spec,
                              layout.label_spec, layout.label_spec),
        out_specs=P())(params, images, labels, weights)

  return _on_mesh(jax.jit(eval_step), layout.mesh)
