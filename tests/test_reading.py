"""How the stream pipeline reads on a given machine (alexnet_jax/data/reading.py): threads
and processes from the usable cores, and the device decode where the devices are GPUs and
nvImageCodec is installed (the machine faked: these run on any CPU)."""

import pytest

from alexnet_jax.data import reading
from configs import alexnet


def data(**changes):
  config = alexnet.get_config()
  config.data.update(changes)
  return config.data


def test_the_papers_config_reads_with_what_the_machine_has():
  d = data()
  assert (d.threads, d.processes, d.decode_on) == (-1, -1, 'auto')


@pytest.mark.parametrize('cores, want', [(1, (1, 0)), (2, (2, 0)), (4, (4, 0)), (6, (6, 0)),
                                         (7, (7, 0)), (8, (4, 2)), (16, (4, 4)), (64, (4, 16))])
def test_threads_and_processes_follow_the_usable_cores(cores, want):
  assert reading.loader_workers(cores) == want
  threads, processes = want
  assert threads * max(processes, 1) <= cores  # never more decoders than cores


def test_given_counts_are_kept_and_the_device_decode_needs_no_worker_process():
  assert reading.loader_workers(16, threads=3, processes=0) == (3, 0)
  assert reading.loader_workers(16, threads=-1, processes=2) == (8, 2)
  assert reading.loader_workers(16, processes=5) == (3, 5)
  assert reading.loader_workers(16, device=True) == (16, 0)


def test_the_usable_cores_are_this_process_s_allotment(monkeypatch):
  import os
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {3, 5, 7})  # a SLURM allotment
  how = reading.reading(data(), backend='cpu', nvimgcodec=False)
  assert (how.threads, how.processes) == (3, 0)
  assert '3 usable cores' in how.why


def test_auto_decodes_on_the_gpu_where_nvimgcodec_is_installed():
  how = reading.reading(data(), backend='gpu', nvimgcodec=True, cores=16)
  assert (how.device_decoder, how.host_decoder) == ('nvimgcodec', 'turbo')
  assert (how.threads, how.processes) == (16, 0)
  assert how.why == ('Decoding on the devices with nvimgcodec (data.decode_on=auto: GPUs and '
                     'nvImageCodec are present), 16 threads (16 usable cores; data.threads=-1, '
                     'data.processes=-1).')


@pytest.mark.parametrize('backend, installed, changes, because', [
    ('cpu', True, {}, 'the devices are not GPUs'),
    ('gpu', False, {}, 'nvImageCodec is not installed (pip install nvidia-nvimgcodec-cu13)'),
    ('gpu', True, {'storage': 'raw'}, 'the images are not stored once as JPEG'),
    ('gpu', True, {'prepare_once': False}, 'the images are not stored once as JPEG'),
    ('gpu', True, {'processes': 2}, 'data.processes > 0 decodes in worker processes'),
])
def test_auto_falls_back_to_the_host_and_says_why(backend, installed, changes, because):
  how = reading.reading(data(**changes), backend=backend, nvimgcodec=installed, cores=16)
  assert how.device_decoder is None
  assert how.why.startswith(f'Decoding on the host with {how.host_decoder} '
                            f'(data.decode_on=auto: {because}')
  assert how.processes == changes.get('processes', 4)


def test_an_explicit_place_is_kept():
  how = reading.reading(data(decode_on='host'), backend='gpu', nvimgcodec=True, cores=2)
  assert how.device_decoder is None and '(data.decode_on=host)' in how.why
  how = reading.reading(data(decode_on='device', decoder='pillow'), backend='cpu',
                        nvimgcodec=False, cores=2)
  assert (how.device_decoder, how.host_decoder, how.processes) == ('pillow', 'pillow', 0)
