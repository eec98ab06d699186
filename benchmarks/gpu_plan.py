"""What the GPU check runs: its stages in order of value (the budget drops the tail), what each
needs to import, the guesses of their times where the calibration has none, and the shapes of
a real run and of the dry run.
"""

from __future__ import annotations

from benchmarks.gpu_runner import Stage

# Guessed seconds on an H100/H200 from CPU compile counts: the fallback where
# benchmarks/gpu_calibration.json has no figure for the device.
ESTIMATE_S = {'environment': 20, 'device': 15, 'tests': 60, 'train_step': 120, 'switches': 90,
              'roofline': 40, 'layers': 40, 'input': 60, 'train_run': 60, 'torch_autotune': 240}
# Seconds per variant of one train-step group, likewise.
GROUP_S = {'jax': 20, 'eager': 10, 'compile': 45, 'torchvision alexnet eager': 10}

_JAX = ('jax', 'optax', 'flax')
STAGES = (
    Stage('environment', 'benchmarks.gpu_env:environment', ESTIMATE_S['environment']),
    Stage('device', 'benchmarks.gpu_env:device', ESTIMATE_S['device'], needs=('jax',)),
    Stage('tests', 'benchmarks.gpu_env:tests', ESTIMATE_S['tests'],
          needs=_JAX + ('orbax.checkpoint', 'pytest')),
    Stage('train_step', 'benchmarks.gpu_stages:train_step', ESTIMATE_S['train_step'],
          needs=_JAX, budgeted=True),
    Stage('switches', 'benchmarks.gpu_stages:switches', ESTIMATE_S['switches'], needs=_JAX),
    Stage('roofline', 'benchmarks.gpu_stages:roofline', ESTIMATE_S['roofline'], needs=_JAX),
    Stage('layers', 'benchmarks.gpu_stages:layers', ESTIMATE_S['layers'], needs=_JAX),
    Stage('input', 'benchmarks.gpu_stages:input_stage', ESTIMATE_S['input'],
          needs=('grain', 'PIL', 'matplotlib')),
    Stage('train_run', 'benchmarks.gpu_env:train_run', ESTIMATE_S['train_run'],
          needs=_JAX + ('ml_collections', 'grain', 'tensorboardX', 'orbax.checkpoint')),
    Stage('torch_autotune', 'benchmarks.gpu_stages:torch_autotune',
          ESTIMATE_S['torch_autotune'], needs=('torch',), optional=True),
)
NAMES = tuple(s.name for s in STAGES)
# Modules the environment stage imports one by one (each failure recorded, the rest tried):
# what the later stages need, and the five the GPU image lacks (carried as wheels).
IMPORTS = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'numpy', 'PIL', 'matplotlib', 'pytest',
           'absl', 'tensorflow_datasets', 'grain', 'ml_collections', 'tensorboardX',
           'array_record', 'simplejpeg', 'torch', 'torchvision', 'alexnet_jax.train.run_setup',
           'alexnet_jax.data.stream', 'alexnet_jax.data.sources')
# Of IMPORTS, those the GPU image lacks: the environment stage installs the carried wheels
# when one of them is missing.
MISSING_ON_IMAGE = ('tensorflow_datasets', 'grain', 'ml_collections', 'tensorboardX',
                    'array_record')
# Distributions whose versions the report records (read from their metadata, no import).
VERSIONS = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda13-pjrt', 'jax-cuda12-plugin',
            'flax', 'optax', 'orbax-checkpoint', 'numpy', 'tensorflow-datasets', 'grain',
            'ml-collections', 'tensorboardX', 'array-record', 'simplejpeg', 'torch',
            'torchvision', 'triton', 'pillow', 'protobuf', 'pytest', 'nvidia-cudnn-cu13',
            'nvidia-cublas', 'nvidia-nvimgcodec-cu13')


class Plan:
  """The shapes of a real run or of the dry run (which takes the same code paths on CPU in
  seconds: the paper's layer geometry at 224, narrow)."""

  def __init__(self, dry_run: bool, groups: list | None = None):
    self.dry_run = dry_run
    if dry_run:
      self.groups = [(2, 'bfloat16'), (2, 'float32')]
      self.steps, self.warmup, self.repeats = 1, 0, 2
      # torch.compile's capture (dynamo) without inductor's CPU code generation (minutes
      # here, and not the GPU's Triton path anyway); one switch: the same code as all five.
      self.compile_backend, self.switches = 'eager', ('lrn',)
      self.input = dict(images=16, workers=2, batch=8, steps=2, process_rows=False)
      self.train_run = ['--config.batch_size=4', '--config.eval_batch_size=4',
                        '--config.num_train_steps=2', '--config.log_every_steps=1',
                        '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
                        '--config.data.synthetic_train_examples=8',
                        '--config.data.synthetic_eval_examples=4',
                        '--config.model.conv_features=(8,16,24,24,16)',
                        '--config.model.fc_features=32']
      # Each kind of layer once (the image's, a tower list's, a dense one's, one without
      # a backward pass): the same code as all fifteen.
      self.layers = ('conv1', 'lrn1', 'fc6', 'optimizer update')
    else:
      # Most informative first: the budget drops the tail. torch.compile only in bfloat16,
      # where the goal is set (1.3x the best PyTorch variant).
      self.groups = [(512, 'bfloat16'), (2048, 'bfloat16'), (2048, 'float32'),
                     (128, 'bfloat16'), (512, 'float32'), (128, 'float32')]
      self.steps, self.warmup, self.repeats = 20, 5, 7
      self.compile_backend, self.switches = 'inductor', None
      self.input = dict(images=2048, workers=16, batch=256, steps=32, process_rows=True)
      self.train_run = ['--config.batch_size=128', '--config.eval_batch_size=128',
                        '--config.num_train_steps=60', '--config.log_every_steps=20',
                        '--config.eval_every_steps=60', '--config.checkpoint_every_steps=60',
                        '--config.data.synthetic_train_examples=2560',
                        '--config.data.synthetic_eval_examples=512']
      self.layers = None  # all
    if groups:
      self.groups = [tuple(g) for g in groups]

  @property
  def spec(self):
    from alexnet_jax.model import network
    if self.dry_run:
      return network.AlexNetSpec(conv_features=(8, 16, 24, 24, 16), fc_features=32)
    return network.AlexNetSpec()


def parse_groups(groups: list[str]) -> list[tuple[int, str]]:
  """'512:bfloat16' -> (512, 'bfloat16'); ValueError in one sentence otherwise."""
  parsed = []
  for g in groups:
    batch, _, dtype = g.partition(':')
    if not batch.isdigit() or int(batch) < 1 or dtype not in ('bfloat16', 'float32'):
      raise ValueError(f'--groups takes BATCH:DTYPE with DTYPE bfloat16 or float32, not {g!r}.')
    parsed.append((int(batch), dtype))
  return parsed
