"""launch.py end to end, as a user runs it."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from alexnet_jax import datasets, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL_MODEL = ['--config.data.image_size=32', '--config.data.num_classes=10',
               '--config.model.conv_features=(8,16,24,24,16)',
               '--config.model.conv_kernels=(3,3,3,3,3)', '--config.model.conv1_stride=1',
               '--config.model.conv1_padding=same', '--config.model.fc_features=32',
               '--config.data.synthetic_train_examples=64',
               '--config.data.synthetic_eval_examples=32', '--config.batch_size=16',
               '--config.eval_batch_size=16']


def launch(config, workdir, *overrides, devices=1, timeout=600):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, 'launch.py', f'--config={config}',
                         f'--workdir={workdir}', *overrides], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_alexnet_config_is_the_papers_network():
  from configs import alexnet
  config = alexnet.get_config()
  assert train.model_spec(config).num_params() == 60_965_224
  assert (config.batch_size, config.num_epochs, config.learning_rate, config.momentum,
          config.weight_decay) == (128, 90, 0.01, 0.9, 0.0005)


def test_alexnet_without_imagenet_fails_in_one_sentence(tmp_path):
  result = launch('configs/alexnet.py', tmp_path / 'run',
                  f'--config.data.data_dir={tmp_path}', f'--config.data.manual_dir={tmp_path}')
  assert result.returncode == 1
  error = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1 and 'ILSVRC2012_img_train.tar' in error[0], result.stderr[-2000:]


def test_a_mistyped_override_fails(tmp_path):
  result = launch('configs/synthetic.py', tmp_path / 'run', '--config.batch_sizee=4')
  assert result.returncode != 0 and 'batch_sizee' in result.stderr


@pytest.mark.slow
def test_synthetic_224_records_the_papers_parameter_count(tmp_path):
  result = launch('configs/synthetic.py', tmp_path, '--config.num_train_steps=1',
                  '--config.batch_size=4', '--config.eval_batch_size=4',
                  '--config.data.synthetic_train_examples=8',
                  '--config.data.synthetic_eval_examples=4')
  assert result.returncode == 0, result.stderr[-3000:]
  run = json.loads((tmp_path / 'run.json').read_text())
  assert run['num_params'] == 60_965_224
  assert run['config']['data']['image_size'] == 224


@pytest.mark.slow
def test_fashion_mnist_trains_and_logs(tmp_path):
  result = launch('configs/fashion_mnist.py', tmp_path / 'run', '--config.num_train_steps=40',
                  '--config.log_every_steps=10', '--config.eval_every_steps=20',
                  f'--config.data.manual_dir={datasets.EMBEDDED_FASHION_MNIST}',
                  f'--config.data.data_dir={tmp_path / "tfds"}')
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = tmp_path / 'run'
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train_keys = {'step', 'train/loss', 'train/top1', 'train/top5', 'lr', 'images_per_sec'}
  assert any(train_keys <= set(r) for r in records)
  evals = [r for r in records if 'eval/top1' in r]
  assert [r['step'] for r in evals] == [20, 40]
  assert evals[-1]['eval/top1'] > 0.4 and evals[-1]['eval/top5'] > evals[-1]['eval/top1']
  assert list(workdir.glob('events.out.tfevents.*'))
  run = json.loads((workdir / 'run.json').read_text())
  assert run['num_params'] > 0 and run['device_count'] == 1 and run['jax_version']
  assert run['mesh'] == {'parallelism': 'towers', 'data': 1, 'model': 1, 'devices': 1,
                         'batch_axes': ['data']}


@pytest.mark.slow
@pytest.mark.parametrize('mode,data,model', [('towers', -1, 2), ('data', 8, 1),
                                             ('hybrid', 4, 2)])
def test_each_parallelism_mode_end_to_end(tmp_path, mode, data, model):
  result = launch('configs/synthetic.py', tmp_path, *SMALL_MODEL, '--config.num_train_steps=3',
                  f'--config.parallelism={mode}', f'--config.mesh.data={data}',
                  f'--config.mesh.model={model}', devices=8)
  assert result.returncode == 0, result.stderr[-3000:]
  run = json.loads((tmp_path / 'run.json').read_text())
  assert run['device_count'] == 8
  assert run['mesh']['parallelism'] == mode
  assert run['mesh']['data'] * run['mesh']['model'] == 8 and run['mesh']['model'] == model
