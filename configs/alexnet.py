"""The paper: two-tower AlexNet on ImageNet (ILSVRC-2012), Krizhevsky et al. 2012, section 5.

  python launch.py --config=configs/alexnet.py --workdir=runs/alexnet \
      --config.data.manual_dir=/path/to/ILSVRC2012_tars

Every other config starts from this one and changes what it must.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data (alexnet_jax/input_pipeline.py, streaming.py). dataset: imagenet2012 (its manual
  # download, ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in data.manual_dir, is
  # built into data.data_dir on first use), fashion_mnist, image_folder (data.folder of
  # <split>/<class>/<image>), synthetic, or any tfds image classification dataset prepared
  # in data.data_dir (cifar10, imagenette, ...).
  config.dataset = 'imagenet2012'
  config.data = ml_collections.ConfigDict()
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.folder = ml_collections.FieldReference(None, field_type=str)
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.image_size = 224  # the network's input: random 224 crops (section 4.1)
  config.data.channels = 3
  config.data.num_classes = 1000
  # stream: decode every step in parallel (ImageNet-style data of any image size);
  # memory: decode once into RAM (small datasets of one image size, data.crop_pad crops).
  config.data.pipeline = 'stream'
  # Each step of the paper's pipeline can be switched off (0 / False / 'none').
  config.data.prepared_size = 256  # shorter side to 256, central 256x256 (section 2); 0: off
  config.data.prepare_once = True  # store the prepared images once in data_dir, as the paper
  # centre_crop: the paper's shorter side to prepared_size and central square; warp: Caffe's
  # whole image resized to prepared_size x prepared_size (configs/bvlc_alexnet.py).
  config.data.prepared_geometry = 'centre_crop'
  # ImageNet's tars are stored at prepared_size in one pass by this many processes (-1: the
  # usable cores; docs/data.md); True also keeps tfds's full-size imagenet2012 (146 GB).
  config.data.prepare_processes = -1
  config.data.keep_originals = False
  # How they are stored (alexnet_jax/data/decoders.py): jpeg at storage_quality, or raw uint8
  # arrays read without decoding (196 KiB an image at 256: disk or page cache must serve
  # about 1.9 GiB/s per 10,000 img/s).
  config.data.storage = 'jpeg'
  config.data.storage_quality = 95
  # turbo (libjpeg-turbo through simplejpeg for plain JPEGs, Pillow for the rest: Pillow's
  # very pixels, 1.45-1.5x its rate a core) | pillow: what decodes them.
  config.data.decoder = 'turbo'
  # host: the loader decodes and crops; device: the devices decode the stored JPEGs of each
  # batch and the step cuts the views (alexnet_jax/data/device_decode.py), with
  # data.decoder=nvimgcodec on a GPU (pillow and turbo: host stand-ins, for tests); auto:
  # device with nvImageCodec where the devices are GPUs and it is installed, else host.
  config.data.decode_on = 'auto'
  config.data.crop_size = 224  # random crops to train, the centre / 10 crops to test; 0: off
  config.data.flip = True  # random horizontal reflections (section 4.1)
  config.data.pca_sigma = 0.1  # PCA colour augmentation (section 4.1); 0: off
  config.data.pca = 'imagenet'  # imagenet: the card's eigenvectors; statistics: computed
  config.data.mean = 'pixel'  # subtract the training set's per-pixel mean (section 2)
  # none: the paper's 0-255 scale; channel: divide by the training set's standard deviation
  # per channel around that mean (unit-variance inputs, as torchvision's normalisation).
  config.data.std = 'none'
  # data.mean=given / data.std=given: these per-channel values (RGB, 0-255) instead of the
  # training set's, as a published network was trained (configs/bvlc_alexnet.py).
  config.data.mean_values = ()
  config.data.std_values = ()
  # .npz of scripts/compute_pixel_statistics.py (mean image, PCA); empty: computed at start
  # over statistics_examples training images (0: all) drawn with the seed.
  config.data.statistics = ''
  config.data.statistics_examples = 10_000
  # Decoding: `threads` grain threads (Pillow decodes and resizes without the GIL) in this
  # process, or in each of `processes` grain worker processes; 0 and 0: in the prefetch thread.
  # -1: from the usable cores (alexnet_jax/data/reading.py: threads alone below 8 cores, then
  # cores // 4 processes of 4 threads). Evaluation cuts its views on as many threads.
  config.data.threads = -1
  config.data.processes = -1
  config.data.max_bad_records = 100  # undecodable training records to skip before stopping; -1: any
  config.data.crop_pad = 0  # memory: random crops of the image zero-padded by this many pixels
  config.data.synthetic_train_examples = 1024  # dataset='synthetic' only
  config.data.synthetic_eval_examples = 256
  config.data.prefetch = 2  # batches placed on the devices ahead of the step

  # Model: the paper's two-tower network (section 3, Fig. 2).
  config.model = ml_collections.ConfigDict()
  config.model.num_towers = 2
  config.model.conv_features = (48, 128, 192, 192, 128)  # per tower
  config.model.conv_kernels = (11, 5, 3, 3, 3)
  config.model.conv1_stride = 4
  config.model.conv1_padding = 'cuda_convnet'  # 224 -> 55 (3 px of zeros bottom/right)
  config.model.fc_features = 2048  # per tower
  config.model.lrn = True
  config.model.lrn_k = 2.0  # section 3.3: k=2, n=5, alpha=1e-4, beta=0.75 (alpha / n, as trained)
  config.model.lrn_n = 5
  config.model.lrn_alpha = 1e-4
  config.model.lrn_beta = 0.75
  config.model.lrn_across_towers = False  # True: Caffe's LRN over both towers' channels
  config.model.pool_window = 3  # overlapping pooling, section 3.4 (2 and 2: non-overlapping)
  config.model.pool_stride = 2
  config.model.dropout_rate = 0.5
  config.model.dropout_placement = 'paper'  # fc6/fc7 outputs; 'inputs': torchvision's
  config.model.init_std = 0.01
  # fc8's weights start at 0, so that the first loss is ln(1000) (chance): section 5's
  # N(0, 0.01) for fc8 starts at 8.5 on high-contrast images. The one departure from the
  # paper's init; -1 restores it (fc8 then takes init_std like every other layer).
  config.model.head_init_std = 0.0
  config.model.init_bias_one = True
  config.model.dtype = 'float32'  # compute dtype; parameters stay float32
  # How layers are computed (alexnet_jax/model/implementations.py): the same sums in other forms,
  # 'auto' by backend from measurements.
  config.model.conv1_impl = 'auto'  # space_to_depth | strided
  config.model.conv1_input = 'auto'  # as_is | pad4 (3 -> 4 channels)
  config.model.pool_backward = 'auto'  # custom | xla
  config.model.tower_conv = 'auto'  # per_tower | grouped
  config.model.lrn_impl = 'auto'  # custom | autodiff

  # Optimisation (section 5).
  config.batch_size = 128
  config.num_epochs = 90
  config.num_train_steps = -1  # -1: num_epochs * steps per epoch, at least min_train_steps
  config.min_train_steps = 0
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 0.0005
  config.lr_schedule = 'plateau'  # constant | step | plateau
  config.lr_boundaries = (0.25, 0.5, 0.75)  # 'step': fractions of training
  config.lr_factor = 0.1  # 'step' and 'plateau'
  # A linear ramp of the rate over the first steps (not in the paper, which starts at 0.01):
  # 0 off.
  config.lr_warmup_steps = 0
  # Transfer (alexnet_jax/weights/fine_tuning.py), not in the paper. init_from: a workdir (its latest
  # checkpoint) or one of its checkpoints/<step> to start from, e.g. weights imported by
  # scripts/import_weights.py; layers of the same shapes are loaded, fc8 starts afresh when
  # the classes differ, the optimizer starts afresh. freeze: layers the updates leave as they
  # are (no gradient is computed for them, no weight decay applied), e.g. the five convs.
  # init_from_skip: layers not loaded, e.g. ('fc8',) for other classes, even as many.
  # init_from_inputs: normalise the inputs with the source's mean and scale (which its
  # features were learned on), not the new data's own.
  config.init_from = ''
  config.init_from_skip = ()
  config.init_from_inputs = True
  config.freeze = ()
  config.plateau_patience = 1  # evaluations without improvement before a drop
  config.plateau_max_drops = 3  # the paper divided the rate by 10 three times

  # Placement (alexnet_jax/parallel/sharding.py).
  config.parallelism = 'towers'  # towers | data | hybrid
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # -1: the devices left over
  config.mesh.model = 0  # 0: 2 when there are >= 2 devices (towers/hybrid), else 1

  # Several hosts (jax.distributed, alexnet_jax/parallel/cluster.py). Empty / -1: JAX's cluster
  # auto-detection (SLURM, Open MPI, ...), or a single process when nothing is detected.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ''
  config.distributed.num_processes = -1
  config.distributed.process_id = -1
  config.distributed.auto_detect = True  # False: one process even inside a detected cluster
  # A process that sends no heartbeat for this long is lost (killed, frozen, host gone): the
  # others stop in one line naming it, within about twice this (JAX's default is 100 s).
  config.distributed.heartbeat_timeout_seconds = 10
  config.distributed.initialization_timeout_seconds = 300  # to wait for every process to join

  # jax.profiler trace of steps start_step..start_step+num_steps-1 into <workdir>/profile/
  # (alexnet_jax/outputs/profiling.py); start_step=-1: off. Only process 0 unless all_hosts.
  config.profile = ml_collections.ConfigDict()
  config.profile.start_step = -1
  config.profile.num_steps = 5
  config.profile.all_hosts = False
  config.profile.server_port = 0  # >0: jax.profiler.start_server(port) for live capture

  config.seed = 0
  # Peak FLOP/s per device for MFU; 0: the data-sheet table (GPU, TPU) or the best matmul
  # measured on this host model (CPU). run.json's peak_flops.source says which was used.
  config.peak_flops_per_device = 0.0
  config.log_every_steps = 100
  config.eval_every_steps = -1  # -1: once per epoch (at most 100 times a run)
  config.eval_batch_size = 256
  config.checkpoint_every_steps = 5000  # and at the end
  config.keep_checkpoints = 3  # the newest complete ones; older ones go once a newer is complete
  # When every checkpoint of the workdir is damaged, the run stops and names them; True moves
  # them to corrupt_checkpoints/ (and metrics.jsonl beside them) and trains from step 0.
  config.start_fresh_if_damaged = False
  config.on_nonfinite_loss = 'stop'  # stop: exit naming the step; skip: drop that update
  # Signals that end the run after the current step with a checkpoint of it, exit 75
  # (alexnet_jax/train/interrupts.py): preemption (TERM), Ctrl-C (INT, twice: at once), a
  # closed terminal (HUP), Ctrl-\ (QUIT), a scheduler's warning (USR1: sbatch --signal=USR1@120).
  # Any of SIGTERM SIGINT SIGHUP SIGQUIT SIGUSR1 SIGUSR2 SIGXCPU; one left out keeps its default.
  config.stop_signals = ('SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1')
  # The workdir's run.lock and data_dir's preparation locks are flocks; where the file system
  # gives none (NFS without a lock daemon) the run stops, unless this accepts the risk.
  config.allow_no_file_locks = False
  return config
