"""Entrypoint: python launch.py --config=configs/alexnet.py --workdir=runs/x [--config.<field>=<value>].

--mode=eval evaluates the workdir's latest checkpoint (or --checkpoint_step's) without training.
--mode=figures draws that checkpoint's conv1 kernels and the run's curves into <workdir>/figures/.
--mode=predict --images=a.png,b.png prints the top-5 classes of image files, one JSON line each.
A problem with the flags, config or workdir prints one line, 'error: <sentence>', and exits 1.
"""

import functools
import json
import logging as py_logging
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and run.json.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'figures', 'predict'],
                  'train: train (resuming from the latest checkpoint); eval: evaluate a '
                  'checkpoint, centre view and 10-crop, without training; figures: conv1 '
                  'kernels of a checkpoint and the training curves as PNGs in '
                  '<workdir>/figures/; predict: top-5 classes of --images.')
flags.DEFINE_integer('checkpoint_step', -1,
                     '--mode=eval, figures, predict: the checkpoint step (-1: latest).')
flags.DEFINE_list('images', [], '--mode=predict: comma-separated image files to classify.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  """absl's parser, with its errors (and ml_collections' traceback for an unknown config
  field) turned into one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).rstrip('.') + '.')
  except (AttributeError, KeyError) as e:  # an unknown --config.<field>
    text = str(e).replace('\\n', ' ').replace("\\'", "'")
    name = re.search(r"'([A-Za-z0-9_]+)'", text)
    name = name.group(1) if name else text
    arg = next((a.split('=')[0] for a in argv if a.startswith('--config.')
                and re.search(rf'[.]{re.escape(name)}(=|$)', a.split('=')[0])), name)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    _fail(f'{arg} is not a config field' + (f' (did you mean {hint.group(1)}?).' if hint
                                             else '.'))


def initialize_distributed(config) -> None:
  """jax.distributed from the config, or from JAX's cluster auto-detection."""
  import jax

  d = config.distributed
  if d.coordinator_address:
    if d.num_processes < 1 or d.process_id < 0:
      _fail('distributed.coordinator_address needs distributed.num_processes and '
            'distributed.process_id.')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU processes
    jax.distributed.initialize(d.coordinator_address, d.num_processes, d.process_id)
  else:
    try:  # SLURM, Open MPI, TPU pods, ... (no-op when no cluster is detected)
      jax.distributed.initialize()
    except (ValueError, RuntimeError):
      pass


def main(argv, make_hooks=None):
  """`make_hooks()`: the training loop's `train.Hooks` (tests pass fault injectors)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  workdir = FLAGS.workdir
  from alexnet_jax import xla_cpu
  xla_cpu.configure()  # before JAX creates its CPU client
  initialize_distributed(config)

  # JAX and the package are imported after the distributed setup.
  from alexnet_jax import evaluation, inference
  from alexnet_jax.errors import UserError

  step = None if FLAGS.checkpoint_step < 0 else FLAGS.checkpoint_step
  try:
    if FLAGS.mode == 'eval':
      result = evaluation.evaluate_checkpoint(config, workdir, step)
      print('eval: ' + json.dumps(result), flush=True)
      return
    if FLAGS.mode == 'figures':
      for path in inference.figures_for_checkpoint(config, workdir, step):
        print(f'figure: {path}', flush=True)
      return
    if FLAGS.mode == 'predict':
      for result in inference.predict(config, workdir, FLAGS.images, step):
        print('predict: ' + json.dumps(result), flush=True)
      return
    from alexnet_jax import train
    result = train.train_and_evaluate(config, workdir, make_hooks() if make_hooks else None)
  except (UserError, FloatingPointError) as e:
    _fail(str(e))
  logging.info('Final evaluation: %s', result)


class _QuietLibraries(py_logging.Filter):
  """Keeps orbax's and tfds's per-save / per-split INFO chatter out of the run's log."""

  def filter(self, record):
    noisy = ('/orbax/', '/tensorflow_datasets/', '/etils/')
    if record.getMessage().startswith('Given directory is read only'):
      return False  # orbax, on our read-only look at the checkpoints before training
    return record.levelno >= py_logging.WARNING or not any(n in record.pathname for n in noisy)


def run(make_hooks=None):
  py_logging.getLogger('absl').addFilter(_QuietLibraries())
  app.run(functools.partial(main, make_hooks=make_hooks), flags_parser=parse_flags)


if __name__ == '__main__':
  run()
