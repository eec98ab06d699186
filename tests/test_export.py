"""Exports (alexnet_jax/weights/export.py): each format run in its own runtime against the
project's logits, with the loading examples of docs/export.md. onnxruntime and torchvision
are imported outright: under CI a missing one fails these tests rather than skipping them.

The networks are the configs' geometry (kernels, strides, padding, towers, LRN form) with
narrow layers and random weights, which is what each property needs; one full-size check
where the property is the size (ONNX) or where only the full size exists (torchvision's
alexnet has fixed widths)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax.model import config as model_config
from alexnet_jax.train import imported_checkpoint
from alexnet_jax.weights import export
from alexnet_jax.weights import exportable
from alexnet_jax.weights import importers
from alexnet_jax.weights import onnx_export
from alexnet_jax.weights import safetensors_export
from alexnet_jax.weights import stablehlo_export
from alexnet_jax.weights import torchvision_export
from configs import alexnet
from configs import bvlc_alexnet
from configs import synthetic
from configs import torchvision_alexnet
from tests import helpers
from tests import reference
from tests import test_weight_import

CONFIGS = {'paper': alexnet, 'bvlc_alexnet': bvlc_alexnet,
           'torchvision_alexnet': torchvision_alexnet}
TOLERANCE = 1e-5  # max relative logit error, float32 (measured about 1e-6)


def narrow_config(module, classes=7):
  """The config's network with a tenth of the channels (at least 4) and 32 fc units."""
  config = module.get_config()
  config.data.num_classes = classes
  config.model.conv_features = tuple(max(4, c // 8) for c in config.model.conv_features)
  config.model.fc_features = 32
  return config


def normalisation(config, seed=0):
  """A mean and scale as each config's checkpoints carry them: the paper's a 256x256 mean
  image (the stream pipeline's prepared size), the zoo configs' their given values."""
  if config.data.mean == 'given':
    scale = (1 / np.asarray(config.data.std_values) if config.data.std == 'given' else None)
    return np.asarray(config.data.mean_values, np.float32), scale
  return np.random.default_rng(seed).uniform(60, 190, (256, 256, 3)).astype(np.float32), None


def network_of(config, seed=0) -> exportable.Network:
  spec = model_config.model_spec(config)
  mean, scale = normalisation(config, seed)
  return exportable.Network.of(reference.random_params(spec.param_shapes(), seed), spec,
                               mean=mean, scale=scale)


def relative_error(got, want):
  assert np.ptp(want) > 0.1 and np.ptp(want, axis=0).min() > 1e-3  # logits that differ
  return exportable.relative_error(got, want)


def docs_example(name: str) -> str:
  """The python block after `<!-- example: name -->` in docs/export.md."""
  text = (helpers.ROOT / 'docs' / 'export.md').read_text()
  return re.search(rf'<!-- example: {name} -->\n```python\n(.*?)```', text, re.S).group(1)


def run_example(name: str, **names):
  scope = dict(names)
  exec(docs_example(name), scope)  # pylint: disable=exec-used
  return scope


# ---- ONNX -----------------------------------------------------------------------------


@pytest.mark.parametrize('name', list(CONFIGS))
def test_onnx_gives_the_jax_logits(tmp_path, name):
  config = narrow_config(CONFIGS[name])
  net = network_of(config)
  spec = net.spec
  path = str(tmp_path / 'net.onnx')
  onnx_export.write(net, path)
  for batch in (1, 3):  # the batch dimension is dynamic
    pixels = exportable.check_images(net, batch, seed=batch)
    got = run_example('onnx', path=path, pixels=pixels)['logits']
    want = exportable.jax_logits(net, pixels)
    if batch > 1:
      assert relative_error(got, want) < TOLERANCE
    else:
      assert exportable.relative_error(got, want) < TOLERANCE
  if name == 'paper':  # and against the float64 NumPy network, LRN within each tower
    x = pixels - net.input_mean()
    want = reference.forward(net.params, x, spec.conv1_stride, spec.conv1_pads())
    assert relative_error(got, want) < TOLERANCE

  import onnx
  model = onnx.load(path)
  nodes = model.graph.node
  ops = [n.op_type for n in nodes]
  attrs = lambda n: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
  groups = [attrs(n).get('group', 1) for n in nodes if n.op_type == 'Conv']
  t = spec.num_towers
  assert groups == [1, t, 1, t, t]  # conv2, conv4, conv5: the towers as groups
  lrn = {'paper': 2 * t, 'bvlc_alexnet': 2, 'torchvision_alexnet': 0}[name]
  assert ops.count('LRN') == lrn and ops.count('Split') == (2 if name == 'paper' else 0)
  if lrn:
    assert {(a['size'], a['bias'], a['beta']) for a in map(attrs, nodes)
            if 'size' in a} == {(spec.lrn_n, spec.lrn_k, spec.lrn_beta)}
  conv1 = attrs(next(n for n in nodes if n.op_type == 'Conv'))
  (top, bottom), (left, right) = spec.conv1_pads()
  assert conv1['pads'] == [top, left, bottom, right]
  assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][:1] == ['batch']
  meta = {p.key: p.value for p in model.metadata_props}
  assert json.loads(meta['class_names']) == list(net.class_names)
  assert 'NHWC' in model.doc_string and 'RGB' in model.doc_string


def test_onnx_of_the_full_size_paper_network(tmp_path):
  net = network_of(alexnet.get_config())
  path = str(tmp_path / 'alexnet.onnx')
  onnx_export.write(net, path)
  result = onnx_export.check(net, path)
  assert result['max_relative_error'] < TOLERANCE, result


# ---- torchvision ----------------------------------------------------------------------


def test_torchvision_loads_the_state_dict_strictly_with_the_jax_logits(tmp_path):
  """torchvision's own alexnet reads the file with strict=True and gives the project's
  logits; import -> export -> import -> export writes the same bytes, and the parameters are
  those of the file first imported, bit for bit."""
  import torch
  import torchvision
  config = torchvision_alexnet.get_config()
  config.data.num_classes = 10
  spec = model_config.model_spec(config)
  first = test_weight_import.torchvision_state(spec)
  torch.save({k: torch.from_numpy(v) for k, v in first.items()}, tmp_path / 'zoo.pth')
  mean, scale = normalisation(config)

  def import_export(source, target):
    params = importers.from_torchvision(str(source), spec)
    net = exportable.Network.of(params, spec, mean=mean, scale=scale)
    torchvision_export.write(net, str(target))
    return net

  net = import_export(tmp_path / 'zoo.pth', tmp_path / 'once.pth')
  import_export(tmp_path / 'once.pth', tmp_path / 'twice.pth')
  same_bytes = (tmp_path / 'once.pth').read_bytes() == (tmp_path / 'twice.pth').read_bytes()
  assert same_bytes
  state = torch.load(tmp_path / 'once.pth', weights_only=True)
  assert list(state) == list(torchvision.models.alexnet(num_classes=10).state_dict())
  for k, v in first.items():
    assert state[k].numpy().tobytes() == v.tobytes(), k

  pixels = exportable.check_images(net, 3)
  sidecar = json.loads((tmp_path / 'once.pth.json').read_text())
  norm = sidecar['normalisation']
  assert norm['torchvision_normalize']['mean'] == pytest.approx([0.485, 0.456, 0.406])
  assert norm['torchvision_normalize']['std'] == pytest.approx([0.229, 0.224, 0.225])
  got = run_example('torchvision', path=tmp_path / 'once.pth', pixels=pixels)['logits']
  assert relative_error(got, exportable.jax_logits(net, pixels)) < TOLERANCE


@pytest.mark.parametrize('name', ['paper', 'bvlc_alexnet'])
def test_torchvision_refuses_what_it_cannot_express(name):
  sentence = torchvision_export.refusal(model_config.model_spec(CONFIGS[name].get_config()))
  assert sentence.startswith("torchvision's alexnet cannot express this network: 2 towers")
  assert 'LRN' in sentence and 'padding' in sentence and sentence.count('. ') == 0
  config = torchvision_alexnet.get_config()
  assert torchvision_export.refusal(model_config.model_spec(config)) is None
  config.data.image_size = 256  # pool5 of 7x7
  assert 'pool5' in torchvision_export.refusal(model_config.model_spec(config))


# ---- StableHLO ------------------------------------------------------------------------

STANDALONE = '''
import sys
import numpy as np
path = sys.argv[1]
results = {}
for batch in (1, 3):
  pixels = np.load(sys.argv[2])[:batch]
%s
  results[str(batch)] = logits
np.savez(sys.argv[3], **results)
print(json.dumps({'platforms': list(exported.platforms), 'modules': sorted(
    m for m in sys.modules if m.split('.')[0] in ('alexnet_jax', 'configs', 'flax'))}))
'''


def test_stablehlo_runs_in_a_process_without_the_project(tmp_path):
  net = network_of(narrow_config(alexnet))
  path = str(tmp_path / 'net.stablehlo')
  assert stablehlo_export.write(net, path) == [path, path + '.json']
  pixels = exportable.check_images(net, 3)
  np.save(tmp_path / 'pixels.npy', pixels)
  body = '\n'.join('  ' + line for line in docs_example('stablehlo').splitlines())
  code = 'import json\n' + STANDALONE % body
  result = subprocess.run([sys.executable, '-c', code, path, str(tmp_path / 'pixels.npy'),
                           str(tmp_path / 'logits.npz')], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.splitlines()[-1])
  assert report == {'platforms': ['cpu', 'cuda'], 'modules': []}
  logits = np.load(tmp_path / 'logits.npz')
  want = exportable.jax_logits(net, pixels)
  assert relative_error(logits['3'], want) < TOLERANCE
  assert exportable.relative_error(logits['1'], want[:1]) < TOLERANCE
  sidecar = json.loads(pathlib.Path(path + '.json').read_text())
  assert sidecar['platforms'] == ['cpu', 'cuda'] and sidecar['input']['shape'][0] == 'batch'


# ---- safetensors ----------------------------------------------------------------------


def test_safetensors_names_metadata_and_the_docs_loader(tmp_path):
  config = narrow_config(alexnet)
  net = network_of(config)
  net = exportable.Network.of(net.params, net.spec, mean=net.mean, scale=net.scale,
                              class_names=[f'class {i}' for i in range(7)],
                              config=json.loads(config.to_json_best_effort()), step=12)
  path = str(tmp_path / 'net.safetensors')
  safetensors_export.write(net, path)
  scope = run_example('safetensors', path=path, pixels=exportable.check_images(net, 3))
  tensors, meta = scope['tensors'], scope['meta']
  layers = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
  assert set(tensors) == {f'{l}.tower{t}.{k}' for l in layers for t in (0, 1)
                          for k in ('kernel', 'bias')} | {
      'fc8.tower0.kernel', 'fc8.tower1.kernel', 'fc8.bias', 'input.mean', 'input.scale'}
  assert tensors['conv2.tower1.kernel'].shape == (5, 5, 6, 16)  # HWIO, own tower's 6 maps
  np.testing.assert_array_equal(tensors['input.mean'], net.mean[16:240, 16:240])
  assert meta['format'] == 'alexnet_jax.safetensors' and meta['step'] == '12'
  assert json.loads(meta['config']) == net.config
  assert scope['class_names'] == list(net.class_names)
  assert meta['producer'] == f'alexnet_jax {exportable.project_version()}'
  assert 'within each tower' in meta['lrn']
  # The loaded tree and input in the float64 NumPy network give the project's logits.
  want = reference.forward(scope['params'], scope['x'], net.spec.conv1_stride,
                           net.spec.conv1_pads())
  got = exportable.jax_logits(net, scope['pixels'])
  assert relative_error(got, want) < TOLERANCE


# ---- launch.py ------------------------------------------------------------------------

SMALL = dict(image_size=32, num_classes=10, conv_features=(8, 16, 24, 24, 16),
             conv_kernels=(3, 3, 3, 3, 3), conv1_stride=1, conv1_padding='same',
             fc_features=32)


@pytest.fixture(scope='module')
def small_workdir(tmp_path_factory):
  """A checkpoint of the tests' small two-tower network (helpers.SMALL_MODEL), written as
  scripts/import_weights.py writes one, with a mean image and class names."""
  config = synthetic.get_config()
  config.data.image_size, config.data.num_classes = SMALL['image_size'], SMALL['num_classes']
  for k in ('conv_features', 'conv_kernels', 'conv1_stride', 'conv1_padding', 'fc_features'):
    config.model[k] = SMALL[k]
  workdir = tmp_path_factory.mktemp('export') / 'run'
  spec = model_config.model_spec(config)
  mean = np.random.default_rng(1).uniform(60, 190, (32, 32, 3)).astype(np.float32)
  imported_checkpoint.write_checkpoint(config, reference.random_params(spec.param_shapes(), 0),
                                  mean, str(workdir))
  return config, workdir


def test_export_checkpoint_overwrites_only_when_asked(small_workdir, tmp_path):
  config, workdir = small_workdir
  path = str(tmp_path / 'out' / 'net.safetensors')
  result = export.export_checkpoint(config, str(workdir), None, 'safetensors', path)
  assert result['files'] == [path] and result['max_relative_error'] == 0
  with pytest.raises(export.ExportError, match='already exists; pass --overwrite'):
    export.export_checkpoint(config, str(workdir), None, 'safetensors', path)
  export.export_checkpoint(config, str(workdir), 0, 'safetensors', path, overwrite=True)
  assert os.listdir(tmp_path / 'out') == ['net.safetensors']  # no staging folder left


def test_requests_are_checked_before_anything_is_read(tmp_path):
  with pytest.raises(export.ExportError, match='^--mode=export needs --export_format, one of '):
    export.check_request(None, str(tmp_path / 'x'), False)
  with pytest.raises(export.ExportError, match='is a directory; name a file to write.$'):
    export.check_request('onnx', str(tmp_path), True)
  (tmp_path / 'net.stablehlo.json').write_text('{}')  # the sidecar alone is taken too
  with pytest.raises(export.ExportError, match=r'net.stablehlo.json already exists; pass '):
    export.check_request('stablehlo', str(tmp_path / 'net.stablehlo'), False)
  export.check_request('stablehlo', str(tmp_path / 'net.stablehlo'), True)
  export.check_request('onnx', str(tmp_path / 'net.stablehlo'), False)


def test_a_file_that_computes_other_logits_is_not_put_in_place(tmp_path, monkeypatch):
  net = network_of(narrow_config(alexnet))
  monkeypatch.setattr(safetensors_export, 'check', lambda net, path: {
      'max_relative_error': 3e-4})
  with pytest.raises(export.ExportMismatch, match='differ from the JAX logits by 0.0003'):
    export.write_checked('safetensors', net, str(tmp_path / 'net.safetensors'))
  assert os.listdir(tmp_path) == []


def test_launch_exports_and_refuses_in_one_sentence(small_workdir, tmp_path):
  """`launch.py --mode=export` as a user runs it: one export, and each bad input in one
  `error:` line with nothing written (the runs in parallel)."""
  config, workdir = small_workdir
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'taken.onnx').write_bytes(b'mine')
  (tmp_path / 'empty').mkdir()
  runs = {
      'onnx': ['--export_format=onnx', f'--export_path={out / "net.onnx"}'],
      'unknown format': ['--export_format=tflite', f'--export_path={out / "x"}'],
      'no path': ['--export_format=onnx'],
      'exists': ['--export_format=onnx', f'--export_path={out / "taken.onnx"}'],
      'cannot express': ['--export_format=torchvision', f'--export_path={out / "x.pth"}'],
      'no checkpoint': ['--export_format=onnx', f'--export_path={out / "y.onnx"}',
                        f'--workdir={tmp_path / "empty"}'],
      'changed model': ['--export_format=onnx', f'--export_path={out / "z.onnx"}',
                        '--config.model.lrn_k=1.0'],
  }
  procs = {name: helpers.launch(workdir, *helpers.SMALL_MODEL, '--mode=export', *args,
                                background=True) for name, args in runs.items()}
  results = {name: helpers.finish(proc) for name, proc in procs.items()}
  ok = results.pop('onnx')
  assert ok.returncode == 0, ok.stderr[-3000:]
  line = json.loads(next(l for l in ok.stdout.splitlines()
                         if l.startswith('export: '))[len('export: '):])
  assert line['files'] == [str(out / 'net.onnx')] and line['max_relative_error'] < TOLERANCE
  errors = {name: helpers.one_error_line(r) for name, r in results.items()}
  assert errors['unknown format'] == ("error: --export_format='tflite' is not a format this "
                                      'project exports; choose one of onnx, torchvision, '
                                      'stablehlo, safetensors.')
  assert errors['no path'] == ('error: --mode=export needs --export_path, the file to write '
                               '(e.g. --export_path=alexnet.onnx).')
  assert errors['exists'] == (f'error: {out / "taken.onnx"} already exists; pass --overwrite '
                              'to replace it, or name another --export_path.')
  assert errors['cannot express'].startswith(
      "error: torchvision's alexnet cannot express this network: 2 towers (torchvision has "
      'one column); LRN after conv1 and conv2')
  assert errors['no checkpoint'] == (f'error: No restorable checkpoint in '
                                     f'{tmp_path / "empty" / "checkpoints"}.')
  assert errors['changed model'].startswith(
      'error: The config changes what the network computes (model.lrn_k=1.0 (the checkpoint '
      'has 2.0))')
  assert sorted(os.listdir(out)) == ['net.onnx', 'taken.onnx']
  assert (out / 'taken.onnx').read_bytes() == b'mine'
  for name, r in results.items():
    print(f'{name}: {helpers.one_error_line(r)}')
