"""Default: a class-conditional DDPM on a deliberately duplicated 16×16 subset of the offline MNIST.

The paper's regime (Jain et al.): the unconditional branch generalises while a condition memorizes.
Eight classes have 200 unique images each; classes 0 and 1 ("memorized conditions") have 20, one
of which is repeated 60× — the duplicate is 76% of its class but 3% of all data, so unguided
sampling rarely copies it while the class condition points at it. Pre-checks of this and the
rejected scenarios: docs/results/README.md. Training takes ~10 minutes on a 2-core CPU.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist_offline"  # or mnist / fashion_mnist / cifar10 / cifar100 (files in data_dir)
  c.data.data_dir = ""  # IDX files, CIFAR tarball or tfds; "" = $MINIDIFF_DATA_DIR or $TFDS_DATA_DIR
  c.data.resolution = 16
  c.data.channels = 1
  c.data.n_unique_per_class = 200
  c.data.num_duplicated_per_class = 1  # images per duplicated class that are repeated …
  c.data.dup_factor = 60  # … this many times
  c.data.dup_fraction = 0.0  # alternative: this fraction of all unique images is repeated
  c.data.duplicated_classes = (0, 1)  # () = every class
  c.data.n_unique_per_duplicated_class = 20  # 0 = n_unique_per_class

  c.model = ml_collections.ConfigDict()
  c.model.base_channels = 32
  c.model.channel_mults = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (8,)
  c.model.dropout = 0.0
  c.model.num_groups = 8
  c.model.num_heads = 1
  c.model.compute_dtype = "float32"  # "bfloat16" on GPU/TPU: bf16 compute, float32 master weights
  c.model.fused_layers = False  # True: fused GroupNorm + einsum attention (faster on CPU; not bitwise)

  c.parallel = ml_collections.ConfigDict()  # data parallelism (minidiff/train/sharding.py)
  c.parallel.num_devices = 0  # 0: a ("data",) mesh over every device; the batch must divide over it
  c.parallel.multi_host = False  # True: jax.distributed.initialize() (one process per host)
  c.parallel.coordinator_address = ""  # "" lets JAX detect the cluster (SLURM, Cloud TPU, MPI)
  c.parallel.num_processes = 1
  c.parallel.process_id = 0

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "linear"  # β 1e-4 → 0.02
  c.diffusion.T = 1000

  c.train = ml_collections.ConfigDict()
  c.train.steps = 3600  # ~10 min here; batch 32 gives more steps per minute than 64 at the same img/s
  c.train.batch_size = 32
  c.train.lr = 1e-3
  c.train.warmup_steps = 200
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.999
  c.train.p_uncond = 0.1  # condition dropout → null id, for classifier-free guidance
  c.train.log_every = 50
  c.train.checkpoint_every = 300
  c.train.max_to_keep = 3

  c.monitor = ml_collections.ConfigDict()  # memorization monitor during training (train/monitor.py)
  # Off here: the README's first command already takes ~20 min on a 2-core CPU. Turn it on with
  # --config.monitor.every=300 (measured ~3% of training time: each check DDIM-20 on 64 noises).
  c.monitor.every = 0  # steps between checks (0 = off)
  c.monitor.num_samples = 64  # classes 0…9 in turn
  c.monitor.num_steps = 20
  c.monitor.w = 1.0  # the conditional model (0 = null branch, > 1 = CFG)
  c.monitor.stop_copy_rate = 1.0  # stop once more than this share copies a non-duplicated image
  c.monitor.class_accuracy = True  # the study's classifier (cached; trained once, ~25 s)

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.eta = 0.0
  c.sample.spacing = "uniform"
  c.sample.clip_x0 = True

  c.study = ml_collections.ConfigDict()  # `python sample.py` with no --guidance runs this study
  # A compact sweep of every family (each list / range expands to one arm per value); the full
  # sweeps of docs/results/README.md pass --guidance.
  c.study.guidance = ("none,conditional,cfg:w=1.5,3,7.5,static:tau=300:700:200,"
                      "opposite:tau=500,700:s=2,dynamic,interval")
  c.study.num_samples = 200  # per arm: half on the memorized classes, half on the others
  c.study.classifier_epochs = 15  # the evaluation classifier (98.9% held out at 16×16), cached
  return c
