"""`jax.profiler` traces of chosen training steps, from the config (`config.profile.*`).

A trace of steps S..S+K-1 (`profile.start_step`, `profile.num_steps`) goes to
`<workdir>/profile/` (TensorBoard's profile plugin and Perfetto read it). Each profiled step
runs inside `StepTraceAnnotation('train', step_num=step)` so the trace viewer groups the ops
by step, and is waited for inside its annotation, so that the annotation spans the step's
device work, not just its dispatch (a few milliseconds): xprof's step-time view then shows
the real step. The first step of a run compiles the train step, and compilation would swamp
the trace, so profiling starts at the run's second step at the earliest.
"""

from __future__ import annotations

import logging
import os

import jax

PROFILE_DIR = 'profile'
ANNOTATION = 'train'


class Profiler:
  """Starts and stops the trace around the configured steps of a training run."""

  def __init__(self, profile, workdir: str, first_step: int, last_step: int):
    """`first_step`, `last_step`: the steps this run executes (a resumed run starts later)."""
    here = jax.process_index() == 0 or profile.all_hosts
    self.directory = os.path.join(os.path.abspath(workdir), PROFILE_DIR)
    self.start = self.stop = -1
    self._active = False
    if here and profile.server_port:
      jax.profiler.start_server(profile.server_port)
      logging.info('Profiler server listening on port %d.', profile.server_port)
    if not here or profile.start_step < 0:
      return
    start = max(profile.start_step, first_step + 1)  # never the compiling step
    stop = min(profile.start_step + profile.num_steps - 1, last_step)
    if start > stop:
      logging.warning('profile.start_step=%d, num_steps=%d: no step of this run (steps %d-%d, '
                      'the first compiles) is profiled.', profile.start_step,
                      profile.num_steps, first_step, last_step)
      return
    if start != profile.start_step:
      logging.info('Profiling starts at step %d: step %d compiles the train step.', start,
                   first_step)
    self.start, self.stop = start, stop

  def run(self, step: int, train_step, *args):
    """`train_step(*args)` as step `step`. A profiled step runs inside its
    `StepTraceAnnotation` and is waited for there, so that the annotation frames the step's
    device work (xprof's step-time view), not just its asynchronous dispatch. The trace
    starts at the first profiled step and stops after the last."""
    if step == self.start:
      jax.profiler.start_trace(self.directory)
      self._active = True
      logging.info('Profiling steps %d-%d into %s.', self.start, self.stop, self.directory)
    if not self._active:
      return train_step(*args)
    with jax.profiler.StepTraceAnnotation(ANNOTATION, step_num=step):
      outputs = jax.block_until_ready(train_step(*args))
    if step >= self.stop:
      self.close()
    return outputs

  def close(self) -> None:
    if not self._active:
      return
    jax.profiler.stop_trace()
    self._active = False
    logging.info('Wrote the profile of steps %d-%d to %s.', self.start, self.stop,
                 self.directory)
