"""Several processes of one run: joining them (`jax.distributed`), and failing cleanly when one
of them is lost.

Joining (`join`). With `distributed.coordinator_address` the processes join there. Otherwise,
where the scheduler's variables say the job has several processes (`cluster_evidence`:
SLURM_NTASKS, OMPI_COMM_WORLD_SIZE, ...), JAX's own cluster detection joins them
(`jax.distributed.initialize()` without arguments: SLURM, Open MPI, Kubernetes, Cloud TPU).
Where it cannot (a bad coordinator, a node that never came up, a launcher JAX does not know,
a release of JAX that detects differently), the run stops in one sentence: training on as a
single process would quietly train every process alone on the whole batch. Only where no
variable says there are several processes is a run one process.

Losing a process. JAX's coordination service takes a process that sends no heartbeat for
`distributed.heartbeat_timeout_seconds` as lost (SIGKILLed, frozen by SIGSTOP or a hung
kernel, its host gone) and then ends every other process with a native fatal error: a C++
check failure and Python's fault dump, exit 134. A lost coordinator (process 0, which hosts
the service) ends the others the same way, at once. No Python code runs in a process that
aborts, and jaxlib's callback for the event cannot be used (it fails to convert its status
argument). So a run of several processes is supervised (`supervise`): launch.py runs itself
as a child, passes its output through, and turns JAX's fatal block into one line that names
the lost process and the last complete checkpoint, with exit code `EXIT_CODE`. Every other
exit of the child, signals included, is passed on unchanged.

A process whose collective fails first (gloo or NCCL sees the peer's socket close before the
heartbeat times out) waits for the service's verdict instead of printing a traceback
(`await_verdict`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import select
import signal
import subprocess
import sys
import time

from alexnet_jax.errors import UserError

EXIT_CODE = 69  # EX_UNAVAILABLE: a process of the run was lost; rerun every process
SUPERVISED_ENV = 'ALEXNET_JAX_SUPERVISED'
# Every signal a run may stop at (config.stop_signals, alexnet_jax/train/interrupts.py).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU)
HOLD_SECONDS = 3.0  # how long native coordination messages wait for a fatal line to follow
_PR_SET_PDEATHSIG = 1


class ClusterError(UserError):
  """The processes of a run could not join, or one of them was lost."""


# ---- joining --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Evidence:
  """A job of several processes, as its scheduler's variables say (`cluster_evidence`)."""
  scheduler: str
  processes: int | None  # how many, where the variables say
  variables: str  # the variables that say so, as NAME=value
  launcher: str  # what starts every process of it


def _count(env, name: str) -> int:
  try:
    return int(env.get(name, ''))
  except ValueError:
    return 0


def cluster_evidence(env=None) -> Evidence | None:
  """A job of several processes, read from the variables schedulers set (not from JAX's
  private cluster registry): a SLURM job or step of several tasks, an Open MPI or MPICH world
  of several ranks, a pod of an indexed Kubernetes Job other than the first, a Cloud TPU
  slice of several hosts. None: one process, as far as anything here says."""
  env = os.environ if env is None else env
  tasks = _count(env, 'SLURM_NTASKS') or _count(env, 'SLURM_STEP_NUM_TASKS')  # as JAX reads
  if env.get('SLURM_JOB_ID') and tasks > 1:
    shown = ('SLURM_JOB_ID', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_STEP_NODELIST')
    return Evidence('SLURM', tasks, _shown(env, shown), 'srun')
  for scheduler, size, rank, launcher in (
      ('Open MPI', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK', 'mpirun'),
      ('MPI (MPICH, Intel MPI)', 'PMI_SIZE', 'PMI_RANK', 'mpiexec')):
    if _count(env, size) > 1:
      return Evidence(scheduler, _count(env, size), _shown(env, (size, rank)), launcher)
  if _count(env, 'JOB_COMPLETION_INDEX') > 0:
    return Evidence('Kubernetes indexed Job', None, _shown(env, ('JOB_COMPLETION_INDEX',)),
                    'the Job (or JobSet) with completionMode: Indexed')
  hosts = [h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]
  if len(hosts) > 1:
    return Evidence('Cloud TPU', len(hosts), _shown(env, ('TPU_WORKER_HOSTNAMES',)),
                    'the same command on every host')
  return None


def _shown(env, names) -> str:
  return ', '.join(f'{n}={env[n]}' for n in names if n in env)


def is_multi_process(d) -> bool:
  """Whether `config.distributed` makes this a run of several processes."""
  return bool(d.coordinator_address) or (d.auto_detect and cluster_evidence() is not None)


def _first_sentence(e: BaseException) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return re.split(r'(?<=[a-z0-9\)])\. ', text)[0].rstrip('.')[:300]


def join_failure(d, cause: str, waited: bool = True) -> str:
  """The sentence for processes that could not join (`cause`: what JAX said; `waited`: after
  the initialization timeout)."""
  if d.coordinator_address:
    return (f'Process {d.process_id} of {d.num_processes} could not join the run at '
            f'distributed.coordinator_address={d.coordinator_address} within '
            f'{d.initialization_timeout_seconds} s ({cause}); start every process, process 0 '
            'first, with the same address.')
  ev = cluster_evidence()
  job = (f'{"an" if ev.scheduler[0] in "AEIOU" else "a"} {ev.scheduler} job of '
         f'{ev.processes or "several"} processes ({ev.variables})' if ev else 'a cluster job')
  how = ev.launcher if ev else "the job's launcher"
  within = f' within {d.initialization_timeout_seconds} s' if waited else ''
  return (f'This is {job} but JAX\'s cluster detection could not join its processes{within} '
          f'({cause}); start every process with {how} '
          '(or give distributed.coordinator_address, num_processes and process_id), or set '
          'distributed.auto_detect=False to train as one process.')


def join(d) -> None:
  """jax.distributed from `config.distributed` (module docstring): at the coordinator given,
  or, where `cluster_evidence` finds a job of several processes, by JAX's own cluster
  detection (`jax.distributed.initialize()` without arguments), checked against the job's
  process count. A failure JAX raises is a ClusterError here; one it aborts on (the
  coordinator never answers) is the supervisor's to report."""
  import jax

  for name in ('heartbeat_timeout_seconds', 'initialization_timeout_seconds'):
    if d[name] < 1:
      raise ClusterError(f'distributed.{name}={d[name]} must be at least 1.')
  if d.coordinator_address and (d.num_processes < 1 or not 0 <= d.process_id < d.num_processes):
    raise ClusterError('distributed.coordinator_address needs distributed.num_processes (at '
                       'least 1) and distributed.process_id (0 to num_processes - 1).')
  evidence = None if d.coordinator_address or not d.auto_detect else cluster_evidence()
  if not d.coordinator_address and evidence is None:
    return  # one process
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU processes
  timeouts = dict(initialization_timeout=d.initialization_timeout_seconds,
                  heartbeat_timeout_seconds=d.heartbeat_timeout_seconds)
  try:
    if d.coordinator_address:
      jax.distributed.initialize(d.coordinator_address, d.num_processes, d.process_id,
                                 **timeouts)
    else:
      jax.distributed.initialize(**timeouts)
  # What initialize raises when it finds no cluster, no coordinator, or one that does not
  # answer in time (JaxRuntimeError is a RuntimeError).
  except (RuntimeError, ValueError) as e:
    cause = _first_sentence(e)
    found = not cause.startswith('coordinator_address should be defined')
    raise ClusterError(join_failure(
        d, cause if found else 'it recognised no cluster environment here', found)) from None
  if evidence is not None and evidence.processes not in (None, jax.process_count()):
    raise ClusterError(join_failure(d, f'JAX joined {jax.process_count()} processes of '
                                       f'the {evidence.processes}', False))


# ---- losing a process: the child's side --------------------------------------------------------

# What a collective that lost its peer raises (gloo on CPU, NCCL on GPU, the coordination
# service), by the words of its message.
_COLLECTIVE_FAILURE = re.compile(
    r'Gloo|NCCL|Connection (reset|closed|refused)|Socket closed|Broken pipe|'
    r'coordination service|DEADLINE_EXCEEDED|UNAVAILABLE')


def is_collective_failure(e: BaseException) -> bool:
  """Whether `e`, raised in a run of several processes, says a peer went away."""
  import jax
  return jax.process_count() > 1 and bool(_COLLECTIVE_FAILURE.search(str(e)))


def await_verdict(e: BaseException, workdir: str, heartbeat_timeout: int) -> None:
  """Waits for JAX's coordination service to end this process after a collective failed
  (its verdict names the lost process; the supervisor prints it). Exits in one line with
  EXIT_CODE if no verdict comes within three heartbeat timeouts."""
  wait = 3 * heartbeat_timeout + 5
  time.sleep(wait)
  _print_and_exit(f'error: a collective between the processes failed ({_first_sentence(e)}) '
                  f'and no lost process was named within {wait} s; {resume_hint(workdir)}')


def _print_and_exit(line: str, code: int = EXIT_CODE) -> None:
  sys.stderr.write(line + '\n')
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def last_complete_checkpoint(workdir: str) -> str | None:
  """The newest finished step directory of `workdir` (orbax renames a step's temporary
  directory once it is complete)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  try:
    steps = [int(n) for n in os.listdir(directory) if n.isdigit()]
  except OSError:
    return None
  return os.path.join(directory, str(max(steps))) if steps else None


def resume_hint(workdir: str) -> str:
  last = last_complete_checkpoint(workdir)
  if last is None:
    return 'no checkpoint is complete yet, and rerunning every process starts again.'
  return (f'the last complete checkpoint is {last}, and rerunning every process with the same '
          'command continues from it.')


# ---- losing a process: the supervisor ---------------------------------------------------------

_LOG_PREFIX = re.compile(rb'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([\w.+-]+):\d+\] ')
_COORDINATION_SOURCES = (b'coordination_service', b'client.h', b'client.cc', b'preemption_',
                         b'distributed')
_FATAL = b'Terminating process because the JAX distributed service detected fatal errors'


class StderrFilter:
  """The child's stderr, line by line, with JAX's fatal block held back: native messages of
  the coordination service wait up to HOLD_SECONDS for a fatal line; once it comes, it and
  all that follows (the C++ stack, Python's fault dump) are kept in `fatal` instead of
  being shown."""

  def __init__(self):
    self.held: list[bytes] = []
    self.held_since: float | None = None
    self.fatal: bytes | None = None

  def feed(self, line: bytes, now: float) -> bytes:
    """What to show now of `line` (and of the lines held before it)."""
    if self.fatal is not None:
      self.fatal += line
      return b''
    if _FATAL in line:
      self.fatal, self.held, self.held_since = b''.join(self.held) + line, [], None
      return b''
    prefix = _LOG_PREFIX.match(line)
    native = prefix and not prefix.group(1).endswith(b'.py')
    if (native and any(s in prefix.group(1) for s in _COORDINATION_SOURCES)) or (
        self.held and not prefix):  # a coordination message, or a later line of one
      self.held.append(line)
      self.held_since = self.held_since or now
      return b''
    return self.release() + line

  def tick(self, now: float) -> bytes:
    """The held lines, once no fatal line has followed them for HOLD_SECONDS."""
    if self.held and now - self.held_since > HOLD_SECONDS:
      return self.release()
    return b''

  def release(self) -> bytes:
    out, self.held, self.held_since = b''.join(self.held), [], None
    return out


def lost_processes(fatal: str) -> list[int] | None:
  """The processes JAX's fatal block names as lost; [] when it blames the coordination
  service itself (the coordinator is lost); None when it names neither."""
  found = set()
  for m in re.finditer(r'Task (\d+) heartbeat timeout', fatal):
    found.add(int(m.group(1)))
  for m in re.finditer(r'stopped sending heartbeats\):\s*([\d,\s]+)', fatal):
    found.update(int(t) for t in re.findall(r'\d+', m.group(1)))
  if found:
    return sorted(found)
  if re.search(r'Failed to send RPC to coordination service|DEADLINE_EXCEEDED|'
               r'Socket closed|UNAVAILABLE', fatal):
    return []
  return None


def verdict_line(fatal: str, workdir: str, d) -> str:
  """The one line for JAX's fatal block `fatal` in a run with `config.distributed` d."""
  status = fatal.split('absl::Status:', 1)[-1].strip().splitlines()[0][:200]
  if 'RegisterTask' in fatal:  # the process never joined
    return f'error: {join_failure(d, status or "no answer from the coordinator")}'
  lost = lost_processes(fatal)
  of = f' of {d.num_processes}' if d.coordinator_address else ''
  why = (f'it stopped answering JAX\'s coordination service, which waits '
         f'{d.heartbeat_timeout_seconds} s for a heartbeat: killed, frozen, or its host or '
         'network lost')
  if lost:
    names = ', '.join(map(str, lost))
    who = f'process{"es" if len(lost) > 1 else ""} {names}{of}'
  elif lost == []:
    who = f'process 0{of}, the coordinator'
  else:
    return (f'error: JAX\'s coordination service ended this process ({status}); '
            f'{resume_hint(workdir)}')
  return f'error: lost {who} ({why}); {resume_hint(workdir)}'


def _die_with_parent() -> None:
  """In the child, before exec: SIGKILL when the supervisor dies (Linux), so that a killed
  supervisor leaves no training process behind."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  except (OSError, AttributeError):
    pass


def supervise(workdir: str, d) -> None:
  """Runs this command again as a child (module docstring) and exits as it did; never
  returns. The child gets a session of its own, so that a terminal's Ctrl-C reaches it once,
  through the supervisor, which forwards FORWARDED_SIGNALS."""
  env = dict(os.environ, **{SUPERVISED_ENV: '1'})
  child = None

  def forward(signum, frame):
    del frame
    if child is not None and child.poll() is None:
      child.send_signal(signum)

  for s in FORWARDED_SIGNALS:
    signal.signal(s, forward)
  child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env,
                           stderr=subprocess.PIPE, start_new_session=True,
                           preexec_fn=_die_with_parent)
  out = sys.stderr.buffer
  filt = StderrFilter()
  fd, pending = child.stderr.fileno(), b''
  exited_at = None
  while True:
    now = time.monotonic()
    if exited_at is None and child.poll() is not None:
      exited_at = now  # drain briefly: a grandchild may hold the pipe open
    ready = select.select([fd], [], [], 0.2)[0]
    chunk = os.read(fd, 65536) if ready else b''
    if ready and not chunk:
      break  # EOF
    pending += chunk
    *lines, pending = pending.split(b'\n')
    for line in lines:
      out.write(filt.feed(line + b'\n', now))
    out.write(filt.tick(now))
    out.flush()
    if exited_at is not None and now - exited_at > 1.0:
      break
  if pending:
    out.write(filt.feed(pending, time.monotonic()))
  code = child.wait()
  if filt.fatal is not None:
    out.write(filt.release())
    out.flush()
    fatal = filt.fatal.decode(errors='replace')
    # A process that never joined is a cluster set-up problem (exit 1), not a lost process.
    _print_and_exit(verdict_line(fatal, workdir, d), 1 if 'RegisterTask' in fatal else EXIT_CODE)
  out.write(filt.release())
  out.flush()
  if code < 0:  # end as the child ended: the same signal, with its default action
    if -code != signal.SIGKILL:
      signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
  os._exit(code)  # pylint: disable=protected-access
