"""The scale-out recipes of examples/, run or read as a cluster would: the sbatch script run
by bash on this machine, with an `srun` that starts its tasks as local processes with the
variables srun sets (they join through JAX's own SLURM detection and train bitwise as one
process does), and the Kubernetes JobSet read and checked field by field."""

import json
import os
import re
import stat
import subprocess
import sys

import pytest
import yaml

from tests import helpers
from tests.helpers import assert_bitwise_equal
from tests.helpers import load_state
from tests.helpers import records

SBATCH = helpers.ROOT / 'examples' / 'slurm' / 'alexnet.sbatch'
JOBSET = helpers.ROOT / 'examples' / 'kubernetes' / 'alexnet-jobset.yaml'
TINY = [*helpers.SMALL_MODEL, '--config.num_train_steps=6', '--config.log_every_steps=1',
        '--config.eval_every_steps=6', '--config.checkpoint_every_steps=6']

# srun on one node: SLURM_NTASKS tasks of the command as local processes, with the variables
# srun gives each task; its exit code is the largest of theirs. FAKE_SRUN_EXIT: exit with it
# at once (the sbatch script's handling of an exit code).
FAKE_SRUN = '''#!{python}
import os, subprocess, sys
if os.environ.get('FAKE_SRUN_EXIT'):
  sys.exit(int(os.environ['FAKE_SRUN_EXIT']))
command = sys.argv[1:]
while command[0].startswith('-'):  # srun's own options (--name=value)
  command.pop(0)
n = int(os.environ['SLURM_NTASKS'])
step = dict(SLURM_STEP_ID='0', SLURM_STEP_NODELIST=os.environ['SLURM_JOB_NODELIST'],
            SLURM_STEP_NUM_NODES='1', SLURM_STEP_NUM_TASKS=str(n), SLURM_NODEID='0')
tasks = [subprocess.Popen(command, env=dict(os.environ, **step, SLURM_PROCID=str(i),
                                             SLURM_LOCALID=str(i)))
         for i in range(n)]
sys.exit(max(t.wait() for t in tasks))
'''
FAKE_SCONTROL = '#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n'


def sbatch_header() -> dict[str, str]:
  """The #SBATCH options of the script, {name: value}."""
  found = re.findall(r'^#SBATCH --([\w-]+)(?:=(\S+))?', SBATCH.read_text(), re.M)
  return {name: value for name, value in found}


def run_sbatch(tmp_path, *args, env=None, timeout=600):
  """The sbatch script as SLURM's batch step runs it: bash, in a job of 2 tasks on one node
  (localhost), with fake srun and scontrol first on the PATH."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  for name, text in (('srun', FAKE_SRUN.format(python=sys.executable)),
                     ('scontrol', FAKE_SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
  job = dict(SLURM_JOB_ID='4242', SLURM_NTASKS='2', SLURM_NNODES='1',
             SLURM_JOB_NODELIST='localhost', SLURM_NODELIST='localhost',
             SLURM_SUBMIT_DIR=str(helpers.ROOT), SCONTROL_LOG=str(tmp_path / 'scontrol.log'),
             PATH=f'{bin_dir}:{os.environ["PATH"]}', PYTHON=sys.executable,
             CONFIG='configs/synthetic.py', WORKDIR=str(tmp_path / 'run'),
             DATA_DIR=str(tmp_path / 'tfds'), JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_COORDINATOR_PORT=str(helpers.free_port()))
  cache = os.environ.get(helpers.SHARED_XLA_CACHE)
  if cache:
    job.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return subprocess.run(['bash', str(SBATCH), *args], env=dict(os.environ, **job, **(env or {})),
                        cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                        check=False)


@pytest.mark.slow
def test_the_sbatch_script_trains_two_processes_bitwise_as_one(tmp_path):
  """The script's srun command, as 2 SLURM tasks on this machine (one CPU device each),
  joins through JAX's SLURM detection and trains bitwise as one process on 2 devices."""
  result = run_sbatch(tmp_path, *TINY)
  assert result.returncode == 0, result.stderr[-4000:]
  assert not (tmp_path / 'scontrol.log').exists()  # no requeue of a finished run
  run = json.loads((tmp_path / 'run' / 'run.json').read_text())
  assert (run['process_count'], run['device_count']) == (2, 2), run
  one = helpers.launch(tmp_path / 'one', *TINY, devices=2)
  assert one.returncode == 0, one.stderr[-3000:]
  assert_bitwise_equal(load_state(tmp_path / 'run', 6), load_state(tmp_path / 'one', 6))
  losses = [r['train/loss'] for r in records(tmp_path / 'run', 'train/loss')]
  assert len(losses) == 6 and losses == [
      r['train/loss'] for r in records(tmp_path / 'one', 'train/loss')]


@pytest.mark.parametrize('code,requeued', [(75, True), (0, False), (1, False), (69, False)])
def test_the_sbatch_script_requeues_a_job_stopped_by_its_signal(tmp_path, code, requeued):
  """Exit 75 (a checkpoint written at a signal: the time limit's) requeues the job; any other
  exit ends it with that code. The signal the header asks for is one the run stops at."""
  from configs import alexnet
  header = sbatch_header()
  name, _, before = header['signal'].partition('@')
  assert f'SIG{name}' in alexnet.get_config().stop_signals and int(before) >= 60
  assert 'requeue' in header and header['ntasks-per-node'] == header['gpus-per-node']
  result = run_sbatch(tmp_path, env={'FAKE_SRUN_EXIT': str(code)})
  assert result.returncode == code, result.stderr
  log = tmp_path / 'scontrol.log'
  assert (log.read_text() if log.exists() else '') == ('requeue 4242\n' if requeued else '')


# ml_collections loads config files with importlib's deprecated load_module().
@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
def test_the_jobset_sets_what_the_processes_join_by():
  """The manifest: an indexed job of as many pods as processes, each given process 0's
  address under the JobSet's headless Service (and its port open), its index as the process
  id, and a command whose config fields exist."""
  from alexnet_jax import cli
  docs = list(yaml.safe_load_all(JOBSET.read_text()))
  assert len(docs) == 1 and docs[0]['kind'] == 'JobSet'
  jobset = docs[0]
  assert jobset['apiVersion'].startswith('jobset.x-k8s.io/')
  assert jobset['spec']['network']['enableDNSHostnames'] is True
  [workers] = jobset['spec']['replicatedJobs']
  job = workers['template']['spec']
  assert workers['replicas'] == 1 and job['completionMode'] == 'Indexed'
  pod = job['template']['spec']
  [container] = pod['containers']
  env = {e['name']: e for e in container['env']}
  processes = int(env['NUM_PROCESSES']['value'])
  assert job['parallelism'] == job['completions'] == processes == 2
  assert env['JOB_COMPLETION_INDEX']['valueFrom']['fieldRef']['fieldPath'] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  host, port = env['JAX_COORDINATOR_ADDRESS']['value'].rsplit(':', 1)
  name = jobset['metadata']['name']
  assert host == f'{name}-{workers["name"]}-0-0.{name}'  # pod 0 of job 0, JobSet's DNS
  assert int(port) in [p['containerPort'] for p in container['ports']]
  # Kubernetes expands $(NAME) in the command from the container's env.
  values = {'JAX_COORDINATOR_ADDRESS': env['JAX_COORDINATOR_ADDRESS']['value'],
            'NUM_PROCESSES': '2', 'JOB_COMPLETION_INDEX': '1'}
  command = [re.sub(r'\$\((\w+)\)', lambda m: values[m.group(1)], a)
             for a in container['command']]
  assert command[:2] == ['python', 'launch.py']
  flags = dict(a.split('=', 1) for a in command[2:])
  assert flags['--config.distributed.coordinator_address'] == f'{host}:{port}'
  assert flags['--config.distributed.process_id'] == '1'
  assert flags['--config.distributed.num_processes'] == '2'
  config = cli.load_config(str(helpers.ROOT / flags['--config']),
                           [a for a in command[2:] if a.startswith('--config.')])
  assert config.distributed.num_processes == 2 and config.distributed.process_id == 1
  assert pod['terminationGracePeriodSeconds'] >= 60 and pod['restartPolicy'] == 'Never'
  assert 'SIGTERM' in config.stop_signals  # what Kubernetes sends before the kill
  assert container['resources']['limits']['nvidia.com/gpu'] >= 1
