"""Entrypoint: python launch.py --config=configs/alexnet.py --workdir=runs/x [--config.<field>=<value>].

--mode=eval evaluates the workdir's latest checkpoint (or --checkpoint_step's) without training.
--mode=figures draws that checkpoint's conv1 kernels and the run's curves (into --figures_dir,
  default <workdir>/figures/).
--mode=predict --images=a.png,b.png prints the top-5 classes of image files, one JSON line each.
--mode=export --export_format=onnx|torchvision|stablehlo|safetensors --export_path=FILE writes
  that checkpoint's network in another format, checked against the JAX logits (docs/export.md).

Exit codes: 0 done; 1 a problem with the flags, config, data, workdir or cluster, printed as
one line 'error: <sentence>' (the workdir is left as it was); 69 a run of several processes
lost one of them (killed, frozen, its host gone: one line names it and the last complete
checkpoint; rerun every process to continue); 75 stopped by a signal of config.stop_signals
(SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 by default) after writing a checkpoint of the current
step, or while a dataset was prepared, after the shards in flight (rerun the same command to
continue); 130 a second SIGINT (at once, without a checkpoint).
"""

import functools
import json
import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from alexnet_jax import cli

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS, argv: list[str] | None = None) -> None:
  """launch.py's flags, into `fv` (tests check the documented commands on a copy); `argv`
  is the command line whose `--config.<field>=` overrides ml_collections defines as flags
  (default sys.argv)."""
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and run.json.',
                      flag_values=fv)
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True,
                                  flag_values=fv, sys_argv=argv)
  flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'figures', 'predict', 'export'],
                    'train: train (resuming from the latest checkpoint); eval: evaluate a '
                    'checkpoint, centre view and 10-crop, without training; figures: conv1 '
                    'kernels of a checkpoint and the training curves as PNGs; predict: top-5 '
                    'classes of --images; export: write a checkpoint\'s network as '
                    '--export_format to --export_path.', flag_values=fv)
  flags.DEFINE_integer('checkpoint_step', -1, '--mode=eval, figures, predict, export: the '
                       'checkpoint step (-1: latest).', flag_values=fv)
  flags.DEFINE_list('images', [], '--mode=predict: comma-separated image files to classify.',
                    flag_values=fv)
  flags.DEFINE_string('figures_dir', None, '--mode=figures: where to write the PNGs (default '
                      '<workdir>/figures; another directory for a read-only workdir).',
                      flag_values=fv)
  flags.DEFINE_string('export_format', None, '--mode=export: onnx, torchvision, stablehlo or '
                      'safetensors (docs/export.md).', flag_values=fv)
  flags.DEFINE_string('export_path', None, '--mode=export: the file to write (torchvision and '
                      'stablehlo also write <path>.json).', flag_values=fv)
  flags.DEFINE_bool('overwrite', False, '--mode=export: replace files at --export_path.',
                    flag_values=fv)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=fv)


define_flags()


def check_paths(workdir: str, figures_dir: str | None, images: list[str]) -> None:
  """The paths given as flags, before anything starts: an empty one (an unset shell
  variable: `--workdir=$RUN`) would otherwise mean the current directory."""
  if not workdir.strip():
    cli.fail('--workdir is empty (an unset shell variable?); name the run\'s directory, such '
             'as --workdir=runs/x.')
  if figures_dir is not None and not figures_dir.strip():
    cli.fail('--figures_dir is empty; name a directory, or leave the flag out for '
             '<workdir>/figures.')
  if any(not p.strip() for p in images):
    cli.fail(f'--images={",".join(images)} has an empty file name.')


def main(argv, make_hooks=None):
  """`make_hooks()`: the training loop's `loop.Hooks` (tests pass fault injectors)."""
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])} (flags are --name=value).')
  config = FLAGS.config
  workdir = FLAGS.workdir
  check_paths(workdir, FLAGS.figures_dir, FLAGS.images)
  from alexnet_jax.parallel import cluster
  d = config.distributed
  if cluster.is_multi_process(d) and not os.environ.get(cluster.SUPERVISED_ENV):
    # Never returns: runs this command as a child and exits as it does (alexnet_jax/parallel/cluster.py).
    cluster.supervise(workdir, d)
  from alexnet_jax import xla_cpu
  xla_cpu.configure()  # before JAX creates its CPU client
  try:
    cluster.join(d)
  except cluster.ClusterError as e:
    cli.fail(str(e))

  # JAX and the package are imported after the distributed setup.
  from alexnet_jax.errors import Stopped
  from alexnet_jax.errors import UserError

  step = None if FLAGS.checkpoint_step < 0 else FLAGS.checkpoint_step
  try:
    if FLAGS.mode == 'eval':
      from alexnet_jax.train import evaluation
      result = evaluation.evaluate_checkpoint(config, workdir, step)
      print('eval: ' + json.dumps(result, ensure_ascii=False), flush=True)
      return
    if FLAGS.mode == 'figures':
      from alexnet_jax.outputs import inference
      for path in inference.figures_for_checkpoint(config, workdir, step, FLAGS.figures_dir):
        print(f'figure: {path}', flush=True)
      return
    if FLAGS.mode == 'predict':
      from alexnet_jax.outputs import inference
      for result in inference.predict(config, workdir, FLAGS.images, step):
        print('predict: ' + json.dumps(result, ensure_ascii=False), flush=True)
      return
    if FLAGS.mode == 'export':
      from alexnet_jax.weights import export
      result = export.export_checkpoint(config, workdir, step, FLAGS.export_format,
                                        FLAGS.export_path, FLAGS.overwrite)
      print('export: ' + json.dumps(result), flush=True)
      return
    from alexnet_jax.train import loop
    result = loop.train_and_evaluate(config, workdir, make_hooks() if make_hooks else None)
  except Stopped as e:  # a stop signal in training (a checkpoint) or in a preparation
    cli.last_line(f'stopped: {e}', e.exit_code)
  except KeyboardInterrupt:  # SIGINT outside the training loop (set-up, evaluation)
    cli.fail('interrupted by SIGINT before any training step; no checkpoint was written.', 130)
  except (UserError, FloatingPointError) as e:
    cli.fail(str(e))
  except OSError as e:  # a full disk, a lost mount, a permission, outside a checked path
    cli.fail(f'{e.strerror or e}{f": {e.filename}" if e.filename else ""}.'.replace('..', '.'))
  # Any other error is a bug and keeps its traceback (re-raised), unless a collective failed
  # because a peer process is gone: JAX's coordination service then names it.
  except Exception as e:  # pylint: disable=broad-except
    if cluster.is_collective_failure(e):
      cluster.await_verdict(e, workdir, d.heartbeat_timeout_seconds)
    raise
  logging.info('Final evaluation: %s', result)


class _QuietLibraries(py_logging.Filter):
  """Keeps orbax's and tfds's per-save / per-split INFO chatter out of the run's log, the
  warnings in `NOISE`, and orbax's tracebacks of a failed background save (the run reports it
  in one line)."""

  # Lines every run printed that need nothing from the user, by their start.
  NOISE = (
      # jax probes for a TPU on every start; on a machine without one this is expected.
      "Unable to initialize backend 'tpu'",
      # tfds: our Fashion-MNIST builder names its config (subset or full) on purpose.
      'Using custom data configuration',
      # tfds decodes with Pillow when OpenCV is missing; both decode the same pixels.
      'OpenCV is not installed',
      # tfds looks for its own prepared fashion_mnist before building ours from the idx files,
      # and warns when it finds that folder empty; the build then goes on as it should.
      'Variant folder',
  )

  def filter(self, record):
    noisy = ('/orbax/', '/tensorflow_datasets/', '/etils/')
    if record.getMessage().startswith(self.NOISE):
      return False
    if record.getMessage().startswith('Given directory is read only'):
      return False  # orbax, on our read-only look at the checkpoints before training
    if '/orbax/' in record.pathname and record.exc_info:
      return False  # a failed save: CheckpointSaveError says it in one line
    if record.name == 'asyncio' and record.exc_info and _from_checkpoint_io(record.exc_info[2]):
      return False  # "exception was never retrieved": another read of a damaged checkpoint
    return record.levelno >= py_logging.WARNING or not any(n in record.pathname for n in noisy)


# Where orbax's array reads and writes run: their frames mark an echo of checkpoint I/O.
_CHECKPOINT_IO = ('/orbax/', '/array_serialization/', '/tensorstore/')


def _from_checkpoint_io(tb) -> bool:
  """Whether a traceback passes through orbax's (or its tensorstore's) array I/O."""
  while tb is not None:
    if any(p in tb.tb_frame.f_code.co_filename for p in _CHECKPOINT_IO):
      return True
    tb = tb.tb_next
  return False


def _unraisable_hook(default):
  """sys.unraisablehook without two echoes of a failure the run reports itself: the "Event
  loop is closed" RuntimeErrors that tensorstore raises when the pending writes of a failed
  asynchronous orbax save finish after orbax closed the save's event loop (the run reports
  the failed save in its one line), and the errors of orbax's other array reads of a
  checkpoint that failed to restore, whose coroutines are dropped once the first one fails
  (the run reports the checkpoint: skipped as damaged, or in its one line)."""

  def hook(unraisable):
    if (isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == 'Event loop is closed'):
      return
    code = getattr(unraisable.object, 'cr_code', None)
    if code is not None and any(p in code.co_filename for p in _CHECKPOINT_IO):
      return
    if _from_checkpoint_io(unraisable.exc_traceback):
      return
    default(unraisable)

  return hook


def run(make_hooks=None):
  sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
  # On absl's handler, which every logger's records reach (jax logs through its own loggers).
  logging.get_absl_handler().addFilter(_QuietLibraries())
  app.run(functools.partial(main, make_hooks=make_hooks), flags_parser=cli.parse_flags)


if __name__ == '__main__':
  from alexnet_jax import xla_cpu
  xla_cpu.preload_allocator()  # re-executes this command once, before anything starts
  run()
