"""The PyTorch baselines the train-step benchmarks compare JAX with: the paper's two-tower
network in PyTorch (grouped convolutions, `LocalResponseNorm`, the paper's init) and
torchvision's one-tower `alexnet`, each trained with `torch.optim.SGD(lr=0.01, momentum=0.9,
weight_decay=5e-4)`, eager or under `torch.compile` (mode 'default', or another named after
the variant: 'compile max-autotune-no-cudagraphs'). `torch` is None where PyTorch does not
import.

What a PyTorch user would set for speed, set the same way for every variant
(`configure_backends`): `cudnn.benchmark=True`; bfloat16 under AMP autocast with channels_last
tensors; float32 with TF32 off for both matmuls and cuDNN convolutions, as the JAX float32
rows run at `jax_default_matmul_precision='float32'` (or both on with `tf32=True`). Each
variant's `settings` says exactly what it ran with, for the report beside its figure.
"""

from __future__ import annotations

import time

from alexnet_jax.model import network

try:
  import torch
  import torch.nn.functional as F
except ImportError:
  torch = None

CARD_FLOPS_PER_IMAGE = 4.35e9  # reference card: training step ~ 3 x 1.449 GFLOP forward


def torch_alexnet(spec):
  """The two-tower network in PyTorch, both towers in one module (groups=2), paper init."""
  nn = torch.nn
  f = [2 * c for c in spec.conv_features]
  (_, pad), _ = spec.conv1_pads()

  class AlexNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(spec.in_channels, f[0], 11, stride=4)
      self.conv2 = nn.Conv2d(f[0], f[1], 5, padding=2, groups=2)
      self.conv3 = nn.Conv2d(f[1], f[2], 3, padding=1)
      self.conv4 = nn.Conv2d(f[2], f[3], 3, padding=1, groups=2)
      self.conv5 = nn.Conv2d(f[3], f[4], 3, padding=1, groups=2)
      self.lrn = nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)
      self.pool = nn.MaxPool2d(3, 2)
      self.fc6 = nn.Linear(f[4] * 6 * 6, 2 * spec.fc_features)
      self.fc7 = nn.Linear(2 * spec.fc_features, 2 * spec.fc_features)
      self.fc8 = nn.Linear(2 * spec.fc_features, spec.num_classes)
      self.dropout = nn.Dropout(0.5)
      for name, m in self.named_children():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
          nn.init.normal_(m.weight, 0.0, 0.01)
          nn.init.constant_(m.bias, 1.0 if name in network.ONE_BIAS_LAYERS else 0.0)

    def forward(self, x):
      x = F.pad(x, (0, pad, 0, pad))  # cuda-convnet sizing: 224 -> 55
      x = self.pool(self.lrn(F.relu(self.conv1(x))))
      x = self.pool(self.lrn(F.relu(self.conv2(x))))
      x = F.relu(self.conv4(F.relu(self.conv3(x))))
      x = self.pool(F.relu(self.conv5(x))).flatten(1)
      x = self.dropout(F.relu(self.fc6(x)))
      x = self.dropout(F.relu(self.fc7(x)))
      return self.fc8(x)

  return AlexNet()


def configure_backends(tf32: bool) -> str:
  """cudnn.benchmark on, TF32 on or off for matmuls and cuDNN convolutions alike; returns
  what is set, as read back from torch."""
  torch.backends.cudnn.benchmark = True
  precision = 'tf32' if tf32 else 'ieee'
  if hasattr(torch.backends.cuda.matmul, 'fp32_precision') and hasattr(
      getattr(torch.backends.cudnn, 'conv', None), 'fp32_precision'):  # torch >= 2.9
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    tf32_text = (f'matmul fp32_precision={torch.backends.cuda.matmul.fp32_precision}, '
                 f'cudnn.conv fp32_precision={torch.backends.cudnn.conv.fp32_precision}')
  else:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    tf32_text = (f'cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, '
                 f'cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}')
  return (f'cudnn.benchmark={torch.backends.cudnn.benchmark}, '
          f'TF32 {"on" if tf32 else "off"} ({tf32_text})')


class TorchVariant:
  """One PyTorch train step: model, optimizer and a synthetic batch on the torch device."""

  framework = 'torch'
  mode = '1 device'
  flops_source = 'card'

  def __init__(self, spec, variant: str, batch: int, dtype: str, device, tf32: bool = False,
               compile_backend: str = 'inductor'):
    self.variant, self.batch, self.dtype, self.device = variant, batch, dtype, device
    self.flops = CARD_FLOPS_PER_IMAGE * batch
    backends = configure_backends(tf32)
    torch.manual_seed(0)
    if variant.startswith('torchvision'):
      import torchvision
      net = torchvision.models.alexnet(num_classes=spec.num_classes)
    else:
      net = torch_alexnet(spec)
    self.amp = dtype == 'bfloat16'  # only offered on GPU
    memory_format = torch.channels_last if self.amp else torch.contiguous_format
    net = net.to(device, memory_format=memory_format).train()
    self.opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    compiled = variant.startswith('compile')
    mode = variant.partition(' ')[2] or 'default'
    self.net = torch.compile(net, dynamic=False, mode=mode,
                             backend=compile_backend) if compiled else net
    self.settings = '; '.join([
        f'torch {torch.__version__} ' + (f'torch.compile(mode={mode!r}, dynamic=False, '
                                         f'backend={compile_backend!r})'
                                         if compiled else 'eager'),
        'torchvision alexnet (one tower, no LRN)' if variant.startswith('torchvision')
        else 'the two-tower network (groups=2, LRN)',
        'AMP autocast bfloat16, float32 parameters, channels_last' if self.amp
        else 'float32, NCHW contiguous', backends, 'SGD momentum 0.9, weight decay 5e-4'])
    self.images = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size,
                              device=device).contiguous(memory_format=memory_format) * 60
    self.labels = torch.randint(0, spec.num_classes, (batch,), device=device)
    self.memory_bytes = None
    t0 = time.perf_counter()
    self.run(1)  # torch.compile compiles here
    self.compile_s = time.perf_counter() - t0 if compiled else None

  def _sync(self):
    if self.device.type == 'cuda':
      torch.cuda.synchronize(self.device)

  def run(self, n: int) -> None:
    cuda = self.device.type == 'cuda'
    if cuda:
      torch.cuda.reset_peak_memory_stats(self.device)
    for _ in range(n):
      self.opt.zero_grad(set_to_none=True)
      with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
        loss = F.cross_entropy(self.net(self.images), self.labels)
      loss.backward()
      self.opt.step()
    self._sync()
    if cuda:
      self.memory_bytes = max(self.memory_bytes or 0,
                              torch.cuda.max_memory_allocated(self.device))


def torch_variant_names(on_gpu: bool, dtype: str, use_torch: bool = True,
                        use_compile: bool = True, dry_run: bool = False) -> list[str]:
  """The PyTorch variants of a (device, dtype): eager, torch.compile (mode 'default') and, on
  GPU, torchvision's alexnet. On CPU torch runs float32 only, except in the GPU check's dry
  run, which takes the GPU's paths (AMP bfloat16, torchvision) on CPU."""
  gpu_paths = on_gpu or dry_run
  if torch is None or not use_torch or (dtype == 'bfloat16' and not gpu_paths):
    return []
  names = ['eager'] + (['compile'] if use_compile else [])
  if gpu_paths:
    try:
      import torchvision  # noqa: F401
      names.append('torchvision alexnet eager')
    except ImportError:
      pass
  return names
