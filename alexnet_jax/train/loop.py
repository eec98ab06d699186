"""The training loop: the paper's procedure (section 5) on a `run_setup.Setup`.

`train_and_evaluate` reads as the procedure: take the next batch, take a step, and at their
intervals log, evaluate (lowering the learning rate when the validation error stops
improving), and save. Everything that can fail on the user's input has failed in `Setup`
before the workdir is touched; every exit path closes the checkpoint manager, the metric
writer and the profiler. Tests inject faults through `Hooks`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from alexnet_jax import errors
from alexnet_jax.checkpoint import checkpointing
from alexnet_jax.checkpoint import compat
from alexnet_jax.checkpoint import workdir as workdir_lib
from alexnet_jax.model import flops as flops_lib
from alexnet_jax.outputs import figures
from alexnet_jax.outputs import profiling
from alexnet_jax.parallel import sharding
from alexnet_jax.train import evaluation
from alexnet_jax.train import interrupts
from alexnet_jax.train import metrics as metrics_lib
from alexnet_jax.train import optimizer as optimizer_lib
from alexnet_jax.train import run_setup
from alexnet_jax.train import steps as steps_lib
from alexnet_jax.weights import fine_tuning


class Hooks:
  """Points where the loop calls out; the defaults do nothing. Tests subclass it to inject
  faults (tests/faults.py): a NaN batch, a kill after a step or right after a save starts."""

  def before_step(self, step: int, images, labels):
    return images, labels

  def after_step(self, step: int) -> None:
    pass

  def after_save(self, step: int) -> None:
    pass


def _due(step: int, every: int, last: int) -> bool:
  return step % every == 0 or step == last


def train_and_evaluate(config, workdir: str, hooks: Hooks | None = None) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the last eval.

  A resumed run continues with exactly the batch after the checkpoint's step, and its
  results are bitwise those of an uninterrupted run. The signals of `config.stop_signals`
  end the run after the current step with a checkpoint of it (`interrupts.Interrupted`).
  """
  hooks = hooks or Hooks()
  lock = workdir_lib.RunLock(workdir, config.allow_no_file_locks)
  workdir_lib.on_process_zero(lock.check_free)  # a busy workdir fails before anything else
  setup = run_setup.Setup(config, workdir)
  layout, spec, total = setup.layout, setup.spec, setup.total_steps
  if setup.start_step >= total:
    return _already_trained(workdir, setup)
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    workdir_lib.on_process_zero(lambda: stack.enter_context(lock))  # the first write
    record = _RunRecord(config, workdir, setup, is_main)
    saver = stack.enter_context(_Saver(config, workdir, setup, hooks.after_save))
    writer = stack.enter_context(_closed_at_exit(
        metrics_lib.MetricWriter(workdir, enabled=is_main, resume_step=setup.start_step)))
    profiler = stack.enter_context(_closed_at_exit(
        profiling.Profiler(config.profile, workdir, setup.start_step + 1, total)))
    log = _TrainLog(config, setup, record, writer)
    state = setup.state if setup.state is not None else steps_lib.create_train_state(
        jax.random.key(config.seed), spec, setup.tx, layout)
    if setup.init is not None:
      state = fine_tuning.with_params(state, setup.init, layout)
    train_steps = {logged: steps_lib.make_train_step(  # the logged steps add grad_norm
        spec, layout, setup.tx, config.batch_size, setup.dtype, skip_nonfinite=log.skip,
        mean=setup.data.mean, scale=setup.data.scale, grad_norm=logged,
        frozen=tuple(config.freeze))
        for logged in (True, False)}
    evaluate = functools.partial(
        evaluation.evaluate, steps_lib.make_eval_step(spec, layout, setup.dtype,
                                                      mean=setup.data.mean,
                                                      scale=setup.data.scale),
        data=setup.data, layout=layout, batch_size=config.eval_batch_size)
    logging.info('Training steps %d-%d of %d images (%d per epoch) on mesh %s, %d parameters.',
                 setup.start_step + 1, total, config.batch_size,
                 setup.data.loader.steps_per_epoch, sharding.describe(layout), spec.num_params())
    last_eval: dict[str, float] = {}
    batches = stack.enter_context(_closed_at_exit(setup.data.loader.batches(
        setup.start_step, total - setup.start_step, layout.batch_sharding(),
        layout.label_sharding(), config.data.prefetch)))
    stop = stack.enter_context(interrupts.StopSignals(
        interrupts.check_signals(config.stop_signals)))
    for step, (images, labels) in zip(range(setup.start_step + 1, total + 1), batches):
      images, labels = hooks.before_step(step, images, labels)
      logged = _due(step, config.log_every_steps, total)
      train_step = log.compiled(train_steps[logged], state, images, labels)
      state, metrics = profiler.run(step, train_step, state, images, labels)
      log.add(step, metrics)
      if logged:
        log.write(step, state, saver.last_good)
      if _due(step, setup.eval_every, total):
        last_eval = evaluate(params=state.params)
        log.check_eval(step, last_eval, saver.last_good)
        state = saver.schedule(state, last_eval, layout)
        writer.write(step, last_eval)
        _write_figures(state, workdir, step, is_main)
        log.restart_clock()
      if _due(step, config.checkpoint_every_steps, total):
        log.check_finite(saver.last_good)  # never save a NaN state as 'good'
        saver.save(step, state)
      hooks.after_step(step)
      saver.check()  # a failed background save ends the run here, not at the next save
      if stop.should_stop(step) and step < total:
        log.flush(step, state, saver.last_good)
        saver.save(step, state, wait=True)
        raise interrupts.Interrupted(f'{stop.received} after step {step} of {total}; the '
                                     f'checkpoint {saver.last_good} is written, and '
                                     'rerunning the same command continues from it.')
    log.progress.clear()
  return last_eval


@contextlib.contextmanager
def _closed_at_exit(thing):
  """`thing`, closed on the way out; when the run is already ending with an error, a failure
  to close (a full disk under the metric writer) is logged, not raised over it."""
  try:
    yield thing
  except BaseException:
    try:
      thing.close()
    # Whatever closing raises must not replace the error the run is ending with (re-raised
    # below): the machine's failure (the same full disk) in a line, anything else, which may
    # be a bug, with its traceback.
    except (OSError, errors.UserError) as e:
      logging.warning('Closing %s after the error failed too: %s', type(thing).__name__, e)
    except Exception:  # pylint: disable=broad-except
      logging.warning('Closing %s after the error failed too:', type(thing).__name__,
                      exc_info=True)
    raise
  thing.close()


def _already_trained(workdir: str, setup: run_setup.Setup) -> dict[str, float]:
  """A rerun of a finished run: nothing is trained or written; the last evaluation is read
  back from metrics.jsonl."""
  logging.info('%s is already trained to step %d of %d: nothing to do.', workdir,
               setup.start_step, setup.total_steps)
  evals = [r for r in figures.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
           if 'eval/top1' in r and r.get('step') == setup.start_step]
  return {k: v for k, v in evals[-1].items() if k.startswith('eval/')} if evals else {}


# ---- the named steps of the loop ------------------------------------------------------------


class _RunRecord:
  """run.json (`workdir.RunRecord`): the resolved config, versions, devices, mesh, parameter
  count, the peak FLOP/s used for MFU and, once compiled, the train step's FLOPs."""

  def __init__(self, config, workdir: str, setup: run_setup.Setup, is_main: bool):
    self.is_main = is_main
    run = run_setup.describe_run(config, setup.layout, setup.spec)
    run['start_step'] = setup.start_step
    self.peak = {'total': None, 'per_device': None, 'source': 'not measured on this process'}
    if is_main:
      self.peak = flops_lib.peak_flops(list(setup.layout.mesh.devices.ravel()),
                                       config.model.dtype, config.peak_flops_per_device)
    run['peak_flops'] = self.peak
    self.record = workdir_lib.RunRecord(workdir, run, enabled=is_main)

  def write(self, **fields) -> None:
    self.record.update(**fields)


class _TrainLog:
  """Train metrics since the last log line: their means, images/s and MFU (compilation left
  out), the live progress line, and the stop at a NaN or Inf loss."""

  def __init__(self, config, setup: run_setup.Setup, record: _RunRecord, writer):
    self.batch_size, self.layout, self.loader = config.batch_size, setup.layout, setup.data.loader
    self.skip = config.on_nonfinite_loss == 'skip'
    self.base_lr, self.warmup = config.learning_rate, config.lr_warmup_steps
    self.std = config.data.std
    self.record, self.writer = record, writer
    self.progress = metrics_lib.Progress(setup.total_steps, config.batch_size,
                                         enabled=record.is_main)
    writer.progress = self.progress
    self.local_devices = [d for d in setup.layout.mesh.devices.ravel()
                          if d.process_index == jax.process_index()]
    self.step_flops = None  # one train step on all devices (XLA's count)
    self.pending, self.t_last, self.timed = [], None, 0
    self._compiled = {}

  def compiled(self, train_step, state, images, labels):
    """The train step compiled ahead of its first call (once: the loop then calls this
    executable), so that XLA's FLOP count is that of the very program that runs."""
    if id(train_step) not in self._compiled:
      compiled = train_step.lower(state, images, labels).compile()
      self._compiled[id(train_step)] = compiled
      per_device = flops_lib.compiled_flops(compiled)
      if per_device is None:
        logging.warning('XLA reports no FLOPs for the train step: no MFU is logged.')
      elif self.step_flops is None or per_device * self.layout.mesh.devices.size < (
          self.step_flops):  # the step without the gradient norm, which most steps run
        self.step_flops = per_device * self.layout.mesh.devices.size
        self.record.write(train_step_flops=self.step_flops)
    return self._compiled[id(train_step)]

  def add(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))
    if self.t_last is None:  # leave compilation out of images_per_sec
      jax.block_until_ready(metrics)
      self.restart_clock()
      self.progress.start(step)
    else:
      self.timed += 1
    self.progress.update(step)

  def restart_clock(self) -> None:
    self.t_last, self.timed = time.perf_counter(), 0

  def diverged(self, what: str, value: float, step: int, last_good: str | None):
    """The one sentence for a run whose loss left the floats, with what to change."""
    where = (f'the last good checkpoint is {last_good}' if last_good
             else 'no checkpoint was written before it')
    return FloatingPointError(
        f'The {what} is {value} at step {step}; {where}; the updates diverged: lower '
        f'learning_rate (now {self.base_lr:g}; try {self.base_lr / 10:g}), ramp it up over more '
        f'steps with lr_warmup_steps (now {self.warmup}; try {max(100, 2 * self.warmup)}), or '
        f'scale the inputs to unit variance with data.std=channel (now {self.std}), and '
        f'rerun{", which resumes from that checkpoint" if last_good else ""}.')

  def check_finite(self, last_good: str | None, host=None) -> None:
    host = jax.device_get(self.pending) if host is None else host
    bad = next(((s, float(m['loss'])) for s, m in host
                if not np.isfinite(m['loss']) or not np.isfinite(m.get('grad_norm', 0.0))),
               None)
    if bad is not None and not self.skip:
      raise self.diverged('training loss', bad[1], bad[0], last_good)

  def check_eval(self, step: int, result: dict, last_good: str | None) -> None:
    """An evaluation whose loss is NaN or Inf ends the run there (the parameters have left
    the floats), not at the next log line."""
    if not np.isfinite(result['eval/loss']) and not self.skip:
      raise self.diverged('evaluation loss', result['eval/loss'], step, last_good)

  def flush(self, step: int, state, last_good: str | None) -> None:
    """Logs the steps since the last log line, if any (a run stopping early)."""
    if self.pending:
      self.write(step, state, last_good)

  def write(self, step: int, state, last_good: str | None) -> None:
    host = jax.device_get(self.pending)
    self.check_finite(last_good, host)
    used = [m for _, m in host if not m.get('skipped')] or [m for _, m in host]
    keys = sorted({k for m in used for k in m} - {'skipped'})
    scalars = {f'train/{k}': float(np.mean([m[k] for m in used if k in m])) for k in keys}
    if self.skip:
      scalars['train/skipped_steps'] = float(sum(m['skipped'] for _, m in host))
      if scalars['train/skipped_steps']:
        logging.warning('Skipped %d updates with a NaN or Inf loss up to step %d.',
                        scalars['train/skipped_steps'], step)
    scalars['lr'] = float(state.opt_state.hyperparams['learning_rate']) * float(
        optimizer_lib.warmup_factor(step, self.warmup))  # the rate of this step
    if self.timed:
      elapsed = time.perf_counter() - self.t_last
      scalars['images_per_sec'] = self.timed * self.batch_size / elapsed
      scalars['step_time'] = elapsed / self.timed
      if self.step_flops and self.record.peak['total']:
        scalars['mfu'] = self.step_flops / scalars['step_time'] / self.record.peak['total']
    if getattr(self.loader, 'bad_records', 0):
      scalars['train/bad_records'] = float(self.loader.bad_records)
    memory = metrics_lib.device_memory_in_use(self.local_devices)
    if memory is not None:
      scalars['memory/bytes_in_use'] = memory
    self.writer.write(step, scalars)
    self.pending = []
    self.restart_clock()


class _Saver:
  """Checkpoints with what a resume and inference need, and the plateau schedule whose state
  they carry (paper section 5: divide the learning rate by 10 when the validation error
  stops improving)."""

  def __init__(self, config, workdir: str, setup: run_setup.Setup, after_save):
    self.config, self.setup = config, setup
    self.ckpt = checkpointing.Checkpoints(workdir, config.keep_checkpoints,
                                          after_save=after_save)
    if setup.damaged and setup.meta is None:  # start_fresh_if_damaged: keep the old curves too
      self.ckpt.quarantine_metrics()
    self.ckpt.quarantine(sorted(setup.damaged))
    self.plateau = optimizer_lib.Plateau(factor=config.lr_factor,
                                         patience=config.plateau_patience,
                                         max_drops=config.plateau_max_drops)
    self.last_good = None
    if setup.meta:
      self.plateau = optimizer_lib.Plateau(**setup.meta['plateau'])
      self.last_good = self.ckpt.path(setup.start_step)
      logging.info('Resumed from %s.', self.last_good)
    self.config_json = compat.config_dict(config)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *exc):
    failing = exc_type is not None and exc_type is not interrupts.Interrupted
    if failing and issubclass(exc_type, (OSError, errors.OutputError)):
      # A full disk shows first wherever the run writes next; a failed save in flight is the
      # error that says which checkpoint survived, so it is the one reported.
      self.ckpt.close()
    else:
      self.ckpt.close(failing=failing)

  def check(self) -> None:
    self.ckpt.check_errors()

  def schedule(self, state, evaluation_result: dict, layout):
    """The state with the learning rate divided when the plateau schedule says so."""
    if self.config.lr_schedule != 'plateau' or not self.plateau.update(
        1.0 - evaluation_result['eval/top1']):
      return state
    new_lr = float(state.opt_state.hyperparams['learning_rate']) * self.config.lr_factor
    logging.info('Validation error stopped improving: learning rate now %g.', new_lr)
    lr = jax.device_put(jnp.asarray(new_lr, jnp.float32), NamedSharding(layout.mesh, P()))
    hyperparams = dict(state.opt_state.hyperparams, learning_rate=lr)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))

  def save(self, step: int, state, wait: bool = False) -> None:
    """Saves `step` in the background (`wait`: and waits for it), once."""
    if self.last_good != self.ckpt.path(step):
      self._save(step, state)
    if wait:
      self.ckpt.wait()

  def _save(self, step: int, state) -> None:
    data = self.setup.data
    meta = {'step': step, 'loader': {'step': step, 'seed': self.config.seed},
            'plateau': self.plateau.state_dict(), 'config': self.config_json,
            'class_names': list(data.info.class_names),
            'input_scale': None if data.scale is None else [float(v) for v in data.scale]}
    self.ckpt.save(step, state, meta, {'mean': np.asarray(data.mean, np.float32)})
    self.last_good = self.ckpt.path(step)


def _write_figures(state, workdir: str, step: int, is_main: bool) -> None:
  """conv1's kernels per tower and the curves so far, into <workdir>/figures/."""
  kernel = sharding.host_array(state.params['conv1']['kernel'])
  if is_main:
    out = os.path.join(workdir, figures.FIGURES_DIR)
    try:
      figures.save_conv1(kernel, out, step)
      figures.save_curves(workdir, out)
    except OSError as e:
      raise errors.OutputError(f'Writing the figures of step {step} into {out} failed '
                               f'({e.strerror or e}).') from None
