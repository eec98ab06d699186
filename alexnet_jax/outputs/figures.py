"""Figures: conv1's kernels per tower (the paper's Figure 3) and the training curves.

The paper's Figure 3 shows that the two towers specialise (colour-agnostic edges on one GPU,
colour blobs on the other): one panel per tower makes that visible in any run. Each kernel is
scaled to [0, 1] on its own, as in the paper, so weak kernels are as visible as strong ones;
3-channel kernels are shown in colour, any other number of channels as grey (their mean).

matplotlib runs with the Agg backend (no display); figures have a fixed pixel size.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

FIGURES_DIR = 'figures'
DPI = 100
PANEL_WIDTH_IN, PANEL_HEIGHT_IN = 8.0, 2.5  # one conv1 panel: 800 x 250 pixels
CURVES_SIZE_IN = (10.0, 4.0)  # 1000 x 400 pixels


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def kernel_mosaic(kernels: np.ndarray, columns: int | None = None) -> np.ndarray:
  """One tower's kernels (k, k, cin, f) -> an (rows*(k+1)-1, cols*(k+1)-1, 3) image in [0, 1],
  each kernel min-max normalised on its own, 1-pixel white gaps between kernels."""
  k, _, cin, f = kernels.shape
  columns = columns or min(f, max(1, math.ceil(math.sqrt(f * 3))))  # wide, like Figure 3
  rows = math.ceil(f / columns)
  tiles = np.moveaxis(np.asarray(kernels, np.float64), -1, 0)  # (f, k, k, cin)
  if cin != 3:
    tiles = np.repeat(tiles.mean(axis=-1, keepdims=True), 3, axis=-1)
  lo = tiles.min(axis=(1, 2, 3), keepdims=True)
  span = tiles.max(axis=(1, 2, 3), keepdims=True) - lo
  tiles = np.where(span > 0, (tiles - lo) / np.where(span > 0, span, 1), 0.5)
  out = np.ones((rows * (k + 1) - 1, columns * (k + 1) - 1, 3))
  for i in range(f):
    r, c = divmod(i, columns)
    out[r * (k + 1):r * (k + 1) + k, c * (k + 1):c * (k + 1) + k] = tiles[i]
  return out


def conv1_figure(kernel: np.ndarray, title: str = ''):
  """A matplotlib figure of conv1's kernels (towers, k, k, cin, f): one panel (axes) per
  tower, PANEL_WIDTH_IN x PANEL_HEIGHT_IN inches each, stacked vertically."""
  plt = _pyplot()
  towers = kernel.shape[0]
  fig, axes = plt.subplots(towers, 1, figsize=(PANEL_WIDTH_IN, PANEL_HEIGHT_IN * towers),
                           dpi=DPI, squeeze=False)
  for t, ax in enumerate(axes[:, 0]):
    ax.imshow(kernel_mosaic(kernel[t]), interpolation='nearest')
    ax.set_title(f'tower {t}: {kernel.shape[-1]} kernels {kernel.shape[1]}x{kernel.shape[2]}'
                 f'x{kernel.shape[3]}', fontsize=9)
    ax.axis('off')
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def save_conv1(kernel: np.ndarray, out_dir: str, step: int) -> str:
  """Writes `<out_dir>/conv1_step<step>.png`; returns its path."""
  plt = _pyplot()
  path = os.path.join(out_dir, f'conv1_step{step}.png')
  os.makedirs(out_dir, exist_ok=True)
  fig = conv1_figure(np.asarray(kernel), f'conv1 kernels, step {step}')
  fig.savefig(path, dpi=DPI)  # no bbox_inches='tight': the pixel size stays fixed
  plt.close(fig)
  return path


def read_metrics(path: str) -> list[dict]:
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue  # a half-written last line of a killed run
  return records


def save_curves(workdir: str, out_dir: str) -> str | None:
  """Training and evaluation loss and top-1 / top-5 error against the step, from
  `<workdir>/metrics.jsonl`, to `<out_dir>/curves.png`; None without metrics."""
  source = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(source):
    return None
  records = read_metrics(source)
  plt = _pyplot()
  fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=CURVES_SIZE_IN, dpi=DPI)

  def series(key):
    pts = [(r['step'], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and isinstance(r.get('step'), int)]
    return [p[0] for p in pts], [p[1] for p in pts]

  for key, style in (('train/loss', '-'), ('eval/loss', 'o-')):
    x, y = series(key)
    if x:
      loss_ax.plot(x, y, style, label=key, markersize=3)
  for key, style in (('train/top1', '-'), ('train/top5', '-'), ('eval/top1', 'o-'),
                     ('eval/top5', 'o-')):
    x, y = series(key)
    if x:
      err_ax.plot(x, [1.0 - v for v in y], style, label=key.replace('top', 'top-') + ' error',
                  markersize=3)
  loss_ax.set(xlabel='step', ylabel='loss', title='loss')
  err_ax.set(xlabel='step', ylabel='error', title='error', ylim=(0, 1))
  for ax in (loss_ax, err_ax):
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(out_dir, 'curves.png')
  os.makedirs(out_dir, exist_ok=True)
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def _show(ax, view: np.ndarray):
  view = np.asarray(view)
  ax.imshow(view[..., 0] if view.shape[-1] == 1 else view, cmap='gray' if view.shape[-1] == 1
            else None, vmin=0, vmax=255, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])


def save_top5(views, labels, probs, names, path: str, title: str) -> str:
  """Figure 4, left: each image over a bar chart of its five most probable classes, the
  true class's bar red (as in the paper), its name under the image."""
  plt = _pyplot()
  n, cols = len(views), 4
  rows = -(-n // cols)
  fig, axes = plt.subplots(2 * rows, cols, figsize=(3.0 * cols, 4.2 * rows), dpi=DPI,
                           gridspec_kw={'height_ratios': [1.4, 1.0] * rows}, squeeze=False)
  for ax in axes.ravel():
    ax.axis('off')
  for i in range(n):
    r, c = divmod(i, cols)
    image_ax, bar_ax = axes[2 * r, c], axes[2 * r + 1, c]
    image_ax.axis('on')
    _show(image_ax, views[i])
    image_ax.set_xlabel(names[labels[i]], fontsize=9)
    top = np.argsort(-probs[i])[:min(5, len(probs[i]))]
    bar_ax.axis('on')
    bar_ax.barh(range(len(top)), probs[i][top],
                color=['tab:red' if k == labels[i] else 'tab:blue' for k in top])
    bar_ax.set_yticks(range(len(top)), [names[k] for k in top], fontsize=8)
    bar_ax.invert_yaxis()
    bar_ax.set_xlim(0, 1)
    bar_ax.tick_params(axis='x', labelsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def save_neighbours(queries, query_labels, neighbours, neighbour_labels, names, path: str,
                    title: str) -> str:
  """Figure 4, right: each test image (first column) and its nearest training images."""
  plt = _pyplot()
  q, k = neighbours.shape[:2]
  fig, axes = plt.subplots(q, k + 1, figsize=(1.6 * (k + 1), 1.8 * q), dpi=DPI, squeeze=False)
  for i in range(q):
    _show(axes[i, 0], queries[i])
    axes[i, 0].set_xlabel(f'test: {names[query_labels[i]]}', fontsize=7, color='tab:red')
    for j in range(k):
      _show(axes[i, j + 1], neighbours[i, j])
      axes[i, j + 1].set_xlabel(names[neighbour_labels[i, j]], fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path
