"""The inference function serialized with `jax.export`: StableHLO with the parameters and the
preprocessing baked in as constants, a symbolic batch size, lowered for the CPU and CUDA at
once (lowering for CUDA needs no GPU).

    exported = jax.export.deserialize(open(path, 'rb').read())
    logits = exported.call(pixels)  # float32 (batch, H, W, C), 0-255: see <path>.json

Any process with jax (the same or a newer version: jax reads older files, not newer ones) and
flatbuffers (its serialization) runs it without this project's code: `exported.call` compiles the StableHLO for the local platform, which must be
one of `exported.platforms`. Convolutions and matmuls are traced at HIGHEST precision, so that
a GPU computes them in float32 rather than TF32. `<path>.json` states the platforms, the input
and output, the normalisation it includes, the class names and the config.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from alexnet_jax.model import network
from alexnet_jax.weights import exportable

PLATFORMS = ('cpu', 'cuda')
SIDECAR = '.json'


def export(net: exportable.Network) -> jax.export.Exported:
  """`jax.export.Exported` of pixels (batch, H, W, C) -> logits (batch, classes), the
  parameters, mean and scale closed over (constants of the module)."""
  params = jax.tree.map(jnp.asarray, net.params)
  mean, scale = jnp.asarray(net.input_mean()), jnp.asarray(net.input_scale())

  def infer(pixels):
    return network.apply(params, (pixels - mean) * scale, net.spec)

  batch, = jax.export.symbolic_shape('batch')
  with jax.default_matmul_precision('highest'):
    return jax.export.export(jax.jit(infer), platforms=PLATFORMS)(
        jax.ShapeDtypeStruct((batch, *net.input_shape), jnp.float32))


def sidecar(net: exportable.Network, exported: jax.export.Exported) -> dict:
  info = exportable.description(net)
  info.update(platforms=list(exported.platforms), jax_version=jax.__version__,
              calling_convention_version=exported.calling_convention_version,
              parameters='baked in (constants of the module)',
              input={'name': 'pixels', 'shape': ['batch', *net.input_shape],
                     'dtype': 'float32'},
              output={'name': 'logits', 'shape': ['batch', net.spec.num_classes],
                      'dtype': 'float32'},
              precision='HIGHEST (float32 convolutions and matmuls, no TF32)')
  return info


def write(net: exportable.Network, path: str) -> list[str]:
  exported = export(net)
  with open(path, 'wb') as f:
    f.write(exported.serialize())
  with open(path + SIDECAR, 'w', encoding='utf-8') as f:
    json.dump(sidecar(net, exported), f, indent=1)
  return [path, path + SIDECAR]


def check(net: exportable.Network, path: str) -> dict:
  """The file deserialized (in this process) and run on this platform against the JAX
  logits; tests/test_export.py runs it in a process that imports only jax and numpy."""
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(f.read())
  images = exportable.check_images(net)
  got = exported.call(jnp.asarray(images))
  return {'checked_with': f'jax.export.deserialize, jax {jax.__version__} '
                          f'({jax.default_backend()}); lowered for {", ".join(PLATFORMS)}',
          'max_relative_error': exportable.relative_error(got, exportable.jax_logits(net, images))}


def refusal(spec) -> str | None:
  del spec
  return None
