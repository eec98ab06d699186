"""Placement: the device mesh and where every array lives, for each parallelism mode.

The mesh has two axes, `data` and `model`. Batches are always split over `data`.

* `towers` (the paper, section 3.2): the tower axis of every parameter is split
  over `model`; each device computes its own towers and activations cross
  devices only at the joins the paper draws (conv3 input, fc6, fc7, fc8).
* `data`: every device holds the whole model; the batch is split over every
  device; the only collective is the gradient reduction.
* `hybrid` ("One weird trick", Krizhevsky 2014): conv layers data parallel over
  every device, fully connected towers split over `model`; before fc6 each
  device gathers its `model` group's batch.

The model code (`model.apply`) is written for the towers a device holds; this
module says which mesh axis each of its joins runs over, and runs it under
`jax.shard_map`, whose autodiff turns each forward all-gather into a backward
reduce-scatter and sums parameter gradients over the devices that share them.

A mesh axis of size 1 is left out of everything: no spec names it, no join or sum runs
over it, and `shard_map` is manual only over the axes that split something
(`manual_axes`; none on one device, where the step runs as plain jit). A collective over a
group of one still costs a copy on CPU: on 1x1 the 244 MB gradient all-reduce alone took
about 8% of the step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from alexnet_jax.errors import ConfigError

PARALLELISM_MODES = ('towers', 'data', 'hybrid')
DATA, MODEL = 'data', 'model'


def mesh_shape(num_devices: int, data: int, model: int, parallelism: str,
               num_towers: int) -> tuple[int, int]:
  """Resolves the mesh shape from the config, failing with one clear sentence.

  `model=0` is automatic: towers (or hybrid) over pairs of devices where the devices pair up
  and the towers do, else 1 (every device computes every tower: data parallel); `data` or
  `model` = -1 fills with the remaining devices. An explicit `model` is taken as given.
  """
  if parallelism not in PARALLELISM_MODES:
    raise ConfigError(f'parallelism={parallelism!r} is not one of {", ".join(PARALLELISM_MODES)}.')
  if model == 0:
    pairs = parallelism != 'data' and num_towers % 2 == 0 and num_devices % 2 == 0
    model = 2 if pairs else 1
    if data > 0 and data * model != num_devices and num_devices % data == 0:
      model = num_devices // data
  if data == -1 and model == -1:
    raise ConfigError('Only one of mesh.data and mesh.model may be -1.')
  if data == -1:
    if model < 1 or num_devices % model:
      raise ConfigError(f'mesh.model={model} does not divide the {num_devices} devices.')
    data = num_devices // model
  elif model == -1:
    if data < 1 or num_devices % data:
      raise ConfigError(f'mesh.data={data} does not divide the {num_devices} devices.')
    model = num_devices // data
  if data < 1 or model < 1:
    raise ConfigError(f'mesh.data={data} and mesh.model={model} must be positive (or -1).')
  if data * model != num_devices:
    raise ConfigError(f'The mesh data={data} x model={model} needs {data * model} devices '
                     f'but {num_devices} are available; set mesh.data / mesh.model '
                     'so that their product is the device count (or use -1).')
  if parallelism != 'data' and num_towers % model:
    raise ConfigError(f'mesh.model={model} does not divide model.num_towers={num_towers}: '
                     'each device must hold whole towers.')
  return data, model


def batch_divisor(parallelism: str, data: int, model: int) -> int:
  """How many shards a batch is split into: over `data` for towers (the devices of a tower
  pair see the same images), over every device otherwise."""
  return data if parallelism == 'towers' else data * model


@dataclasses.dataclass(frozen=True)
class DefaultMesh:
  """The mesh `mesh.data=-1, mesh.model=0` gives on some devices (`default_mesh`)."""
  data: int
  model: int
  devices: int  # the first `devices` of those there are
  note: str  # why it departs from towers over pairs of all the devices; '' where it does not


def default_mesh(num_devices: int, parallelism: str, num_towers: int,
                 batch_sizes: dict[str, int], may_leave_devices: bool = True) -> DefaultMesh:
  """The default mesh on any device count: towers over pairs where the devices pair up, else
  every device computes every tower (data parallel); on the most devices whose batch shards
  divide every size of `batch_sizes` ({field: size}), unless `may_leave_devices` is False (the
  devices of several processes: they are all used, and the batch check says what to set)."""
  counts = range(num_devices, 0, -1) if may_leave_devices else (num_devices,)
  for n in counts:
    data, model = mesh_shape(n, -1, 0, parallelism, num_towers)
    if all(b % batch_divisor(parallelism, data, model) == 0 for b in batch_sizes.values()):
      break
  else:
    n = num_devices
    data, model = mesh_shape(n, -1, 0, parallelism, num_towers)
  notes = []
  split = parallelism != 'data' and num_towers % 2 == 0
  if split and model == 1 and n > 1:
    notes.append(f'the {n} devices do not pair up for the {parallelism} split of the towers, '
                 'so every device computes both towers (data parallel)')
  if n < num_devices:
    sizes = ' and '.join(f'{k}={v}' for k, v in batch_sizes.items())
    shards = batch_divisor(parallelism, *mesh_shape(num_devices, -1, 0, parallelism, num_towers))
    notes.append(f'{sizes} do not split evenly over more devices, so {num_devices - n} of the '
                 f'{num_devices} devices stay idle (batch sizes divisible by {shards} use them '
                 'all)')
  return DefaultMesh(data, model, n, '; '.join(notes))


def make_mesh(data: int, model: int, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((data, model), (DATA, MODEL), devices=devices,
                       axis_types=(jax.sharding.AxisType.Explicit,) * 2)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the arrays of one parallelism mode live on a mesh."""

  mesh: jax.sharding.Mesh
  parallelism: str

  @property
  def num_data(self) -> int:
    return self.mesh.shape[DATA]

  @property
  def num_model(self) -> int:
    return self.mesh.shape[MODEL]

  def _split(self, axes: tuple[str, ...]) -> tuple[str, ...]:
    """The axes of `axes` that split something (size > 1)."""
    return tuple(a for a in axes if self.mesh.shape[a] > 1)

  @property
  def manual_axes(self) -> tuple[str, ...]:
    """The axes `jax.shard_map` is manual over: those of size > 1."""
    return self._split((DATA, MODEL))

  # ---- batches --------------------------------------------------------------
  @property
  def batch_axes(self) -> tuple[str, ...]:
    """Mesh axes the images of the conv stage are split over."""
    return (DATA,) if self.parallelism == 'towers' else (DATA, MODEL)

  @property
  def label_axes(self) -> tuple[str, ...]:
    """Mesh axes the batch of the fully connected stage (and the loss) is split over."""
    return (DATA, MODEL) if self.parallelism == 'data' else (DATA,)

  @property
  def batch_spec(self) -> P:
    axes = self._split(self.batch_axes)
    return P(axes) if axes else P()

  @property
  def label_spec(self) -> P:
    axes = self._split(self.label_axes)
    return P(axes) if axes else P()

  @property
  def sum_axes(self) -> tuple[str, ...]:
    """The axes per-example sums (the loss, the metrics) are summed over."""
    return self._split(self.label_axes)

  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, self.batch_spec)

  def label_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, self.label_spec)

  def batch_divisor(self) -> int:
    return batch_divisor(self.parallelism, self.num_data, self.num_model)

  def check_batch(self, batch_size: int, what: str = 'batch_size') -> None:
    n = self.batch_divisor()
    if batch_size < 1 or batch_size % n:
      raise ConfigError(f'{what}={batch_size} is not divisible by the {n} batch shards of '
                       f'the {self.parallelism} mesh {dict(self.mesh.shape)}.')

  # ---- model ----------------------------------------------------------------
  @property
  def apply_axes(self) -> dict[str, str | None]:
    """Which mesh axis each tower join of `model.apply` runs over (None: all local)."""
    model = MODEL if self.num_model > 1 else None
    if self.parallelism == 'towers':
      return dict(conv_tower_axis=model, fc_tower_axis=model, fc_batch_axis=None)
    if self.parallelism == 'hybrid':
      return dict(conv_tower_axis=None, fc_tower_axis=model, fc_batch_axis=model)
    return dict(conv_tower_axis=None, fc_tower_axis=None, fc_batch_axis=None)

  def param_spec(self, layer: str, name: str) -> P:
    """The tower axis (axis 0) of a layer's arrays goes on `model` where that layer is split."""
    if layer == 'fc8' and name == 'bias' or self.num_model == 1:
      return P()
    split = (self.parallelism == 'towers'
             or (self.parallelism == 'hybrid' and layer.startswith('fc')))
    return P(MODEL) if split else P()

  def param_specs(self, params) -> dict:
    return {layer: {name: self.param_spec(layer, name) for name in arrays}
            for layer, arrays in params.items()}

  def param_shardings(self, params) -> dict:
    return jax.tree.map(lambda s: NamedSharding(self.mesh, s), self.param_specs(params))

  def example_ids(self, local_batch: int) -> jax.Array:
    """Global index of each example the fully connected stage sees on this device."""
    shard = 0
    for a in self.sum_axes:
      shard = shard * self.mesh.shape[a] + jax.lax.axis_index(a)
    return shard * local_batch + jnp.arange(local_batch)

  def on_devices(self, local_fn, in_specs, out_specs):
    """`local_fn` run on each device's shards: `jax.shard_map` manual over the axes of
    size > 1, or the function itself on one device."""
    if not self.manual_axes:
      return local_fn
    return jax.shard_map(local_fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                         axis_names=set(self.manual_axes))


def describe(layout: Layout) -> dict:
  return {'parallelism': layout.parallelism, 'data': layout.num_data,
          'model': layout.num_model, 'devices': layout.mesh.devices.size,
          'batch_axes': list(layout.batch_axes)}


def host_array(x) -> np.ndarray:
  """A global array on the host. Collective on several processes (every process calls it):
  the towers of a parameter may live on other hosts."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
