"""Every entrypoint that takes --config funnels its errors alike (alexnet_jax/cli.py): a mistyped
field, a config file that does not load, or the command's own UserError is one line
`error: <sentence>` and exit 1, never absl's or ml_collections' traceback."""

import os
import subprocess
import sys

import pytest

from tests import helpers

MISTYPED = '--config.data.num_clases=5'
SENTENCE = ('error: --config.data.num_clases is not a config field (did you mean '
            'num_classes?).')


def one_line(result) -> str:
  return helpers.one_error_line(result)


@pytest.mark.parametrize('entrypoint', [
    ['launch.py', '--config=configs/synthetic.py', '--workdir={tmp}/run'],
    ['-m', 'scripts.import_weights', '--caffe={tmp}/net.caffemodel', '--workdir={tmp}/run'],
    ['-m', 'scripts.import_weights', '--config=configs/bvlc_alexnet.py',
     '--caffe={tmp}/net.caffemodel', '--workdir={tmp}/run'],
    ['-m', 'scripts.compute_pixel_statistics', '--config=configs/image_folder.py',
     '--out={tmp}/stats.npz'],
    ['-m', 'scripts.ablations', '--out={tmp}/ablations', '--'],
], ids=['launch', 'import_weights', 'import_weights_config', 'compute_pixel_statistics',
        'ablations'])
def test_a_mistyped_field_is_one_sentence_from_every_entrypoint(tmp_path, entrypoint):
  args = [a.format(tmp=tmp_path) for a in entrypoint] + [MISTYPED]
  result = subprocess.run([sys.executable, *args], cwd=helpers.ROOT, capture_output=True,
                          text=True, timeout=300, check=False,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert one_line(result) == SENTENCE, result.stderr[-3000:]
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'ablations').exists()


def test_a_scripts_own_errors_are_one_sentence(tmp_path):
  result = helpers.run_script('scripts.import_weights', f'--workdir={tmp_path}/run')
  assert one_line(result) == ('error: Give one of --caffe=FILE.caffemodel and '
                              '--torchvision=FILE.pth.')
  result = helpers.run_script('scripts.import_weights', f'--workdir={tmp_path}/run',
                              f'--caffe={tmp_path}/net.caffemodel', '--config.model.lrn=maybe')
  assert one_line(result) == ("error: flag --config.model.lrn=maybe: ('Non-boolean argument to "
                              "boolean flag', 'maybe').")
  result = helpers.run_script('scripts.compute_pixel_statistics', '--config=configs/nope.py',
                              f'--out={tmp_path}/s.npz')
  assert one_line(result) == 'error: --config=configs/nope.py: there is no such file.'
