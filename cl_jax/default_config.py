"""Every config field, with its default: the reference SimCLR-on-MNIST set-up.

The files in configs/ start from `get_config()` here and override fields; a
field that is not here is unknown and refused. Any field can also be
overridden on the command line: --config.num_epochs=2 --config.model.norm=layer
"""

import ml_collections


def get_config():
  """Returns the default config (SimpleCNN, the replaced example's hyper-parameters)."""
  config = ml_collections.ConfigDict()
  # "simclr", "moco", "byol", "supcon", "triplet", "margin", "barlow_twins", "vicreg",
  # "simsiam", "mocov3" or "nnclr" (cl_jax/methods/).
  config.method = "simclr"

  # Data.
  # Any TFDS image-classification dataset (any height, width and channels; its "test"
  # split is reported, or "validation" where it has none), or one imported from a folder
  # of images (python -m cl_jax.data.import_folder).
  config.dataset = "mnist"
  config.image_size = 0  # Resize every image to this many pixels square when loading; 0 = keep (one size only).
  # A split of unlabelled images that label-free methods pre-train on too, beside the
  # training split (stl10: "unlabelled"); "" = none.
  config.unlabelled_split = ""
  config.data_dir = ""  # TFDS data dir; "" = TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.data_download = True  # Let TFDS download a missing dataset if its host answers (else fail fast).
  # Pre-train on only the first this many training images (canonical order; for label-free
  # methods these start with the validation split's, for label-reading ones after it); -1 = all.
  config.max_train_examples = -1
  # The first this many training images (canonical order, cl_jax/data) are the validation
  # split: every selection signal (the online monitor, the validation metrics) reads their
  # labels, and the test split is only reported. Label-free methods still pre-train on them
  # (no labels are used); methods that use labels (supcon) pre-train without them. 0 = no
  # validation split (the monitor must then be off).
  config.validation_examples = 10000
  # Where the pre-training images are during training: "device" (the whole split on every
  # device, each step's batch gathered there), "stream" (read each step by Grain from the
  # dataset's ArrayRecord files, each process its own share, prefetched to the devices:
  # the same batches, for data larger than the devices' memory; one step a call), or "auto":
  # "stream" where the split takes more than a quarter of a device's memory (cl_jax/streaming.py).
  config.data_placement = "auto"
  config.stream_read_threads = 8  # Grain threads reading streamed steps (at most this many steps at once).
  config.stream_prefetch_steps = 8  # How many steps ahead the readers put batches on the devices.

  # Views, per example on device, in SimCLR's order: a random resized crop, rotation,
  # shear and elastic distortion (one warp), a horizontal flip, a colour jitter, a random
  # grayscale, a Gaussian blur, a solarization. Fields given as a pair are (view 1, view 2):
  # BYOL's two views differ there.
  config.augment = ml_collections.ConfigDict()
  config.augment.crop_scale = (0.8, 1.0)  # Range of the crop's area, as a fraction of the image.
  config.augment.crop_ratio = (3 / 4, 4 / 3)  # Range of the crop's aspect ratio (width / height).
  config.augment.rotation_degrees = 10.0  # Rotation drawn uniformly from +-this many degrees.
  config.augment.shear_degrees = 0.0  # Horizontal shear (slant) drawn from +-this many degrees.
  config.augment.elastic_alpha = 0.0  # Elastic distortion: std of the offsets in pixels; 0 = off.
  config.augment.elastic_grid = 4  # Elastic distortion: offsets drawn on a grid x grid lattice.
  config.augment.flip_probability = 0.0  # Probability of a horizontal flip.
  # Colour jitter (torchvision's ColorJitter): brightness, contrast and saturation factors
  # uniform in [max(0, 1 - s), 1 + s], a hue shift uniform in +-h, applied in a random order
  # drawn per view; saturation and hue leave one-channel images as they are. 0 = off.
  config.augment.brightness = 0.0  # Brightness strength s (pixels scaled by the factor).
  config.augment.contrast = 0.0  # Contrast strength s (pixels blended with the luma mean).
  config.augment.saturation = 0.0  # Saturation strength s (pixels blended with their luma).
  config.augment.hue = 0.0  # Hue shift h, in turns (at most 0.5).
  config.augment.jitter_probability = 1.0  # Probability that a view is jittered at all (SimCLR: 0.8).
  config.augment.grayscale_probability = 0.0  # Probability of converting a colour view to its luma.
  # Gaussian blur (torchvision's GaussianBlur, kernel 10% of the image side, odd, at least 3)
  # with sigma uniform in blur_sigma, applied with this probability per view.
  config.augment.blur_probability = (0.0, 0.0)
  config.augment.blur_sigma = (0.1, 2.0)  # Range of the blur's standard deviation in pixels.
  config.augment.solarize_probability = (0.0, 0.0)  # Per view: pixels >= 0.5 become 1 - pixel (BYOL).
  # Multi-crop (dino, swav): this many local views of each image beside the two global ones,
  # each a crop of an area fraction in local_crop_scale (DINO's 0.05-0.4; the global views'
  # is crop_scale) resized to local_crop_size square, with view 1's colour settings. An
  # encoder that flattens (simple_cnn) or has one grid of position embeddings (vit) needs
  # them at the images' size. 0 = two views only.
  config.augment.local_crops = 0
  config.augment.local_crop_scale = (0.05, 0.4)
  config.augment.local_crop_size = 0  # Side of the local views in pixels; 0 = the images' size.

  # Model: encoder (evaluated) and projection head (trained on only).
  config.model = ml_collections.ConfigDict()
  # The encoder, by name (cl_jax/encoders.py): "simple_cnn" (the fields below down to
  # dense_features), "resnet18" / "resnet50" (torchvision's, BatchNorm over the global
  # batch) or "vit_tiny" / "vit_small" (timm's).
  config.model.encoder = "simple_cnn"
  config.model.width = -1  # resnet: channels of the first stage; vit: token width; -1 = the named size's (64; 192 / 384).
  config.model.resnet_stem = "cifar"  # "cifar" (3x3 conv, stride 1, no pool) or "imagenet" (7x7 conv, stride 2, max pool).
  config.model.patch_size = 16  # vit: side of the square patches (the image sides must divide by it).
  config.model.vit_depth = -1  # vit: Transformer blocks; -1 = the named size's (12).
  config.model.conv_features = (16, 32)  # Channels of each conv block (each block ends in a 2x2 max pool).
  config.model.convs_per_block = 1  # 3x3 convolutions per block.
  config.model.dense_features = 128  # Size of the embedding (dense + ReLU after the convs).
  config.model.norm = "none"  # Normalisation after each conv: "none", "layer" or "batch".
  config.model.projection_hidden = (128,)  # Hidden sizes of the projection head MLP.
  config.model.projection_dim = 64  # Output size of the projection head; 0 = no head (loss on the embedding).
  config.model.head_norm = "none"  # Normalisation after each hidden layer of the head: "none" or "batch".
  config.model.head_output_norm = "none"  # After the head's output layer: "none" or "batch" (no scale or offset; simsiam, mocov3).
  # The predictor (byol, simsiam, mocov3, nnclr): an MLP from projection_dim to projection_dim.
  config.model.predictor_hidden = ()  # Its hidden sizes; () = projection_hidden's.
  config.model.predictor_norm = "none"  # After each of its hidden layers: "none" or "batch".
  config.model.prototypes = 1024  # dino, swav: prototypes after the head (DINO's K, SwAV's C); the loss reads their scores.
  # BatchNorm ("batch" above): statistics over the global batch (both views, every device and
  # process) in training; running averages, kept in checkpoints, in evaluation.
  config.model.bn_momentum = 0.9  # Decay of BatchNorm's running averages per step.
  config.model.kernels = "auto"  # Conv/pool code: "auto" (custom CPU kernels on CPU, XLA's elsewhere), "xla" or "cpu".
  config.dtype = "float32"  # Compute dtype ("float32" or "bfloat16"); parameters and loss stay float32.
  # Precision of the convs' and dense layers' matmuls: "default" = the backend's (float32 on
  # CPU, TF32 on Ampere+ GPUs, one bf16 pass on TPU), "high" (TPU: 3 bf16 passes; GPU: TF32)
  # or "highest" (float32). The loss's similarities and the augmentation's coordinates always
  # use "highest"; kernels="cpu" ignores this field (XLA:CPU computes float32 anyway).
  config.matmul_precision = "default"

  # Loss and optimisation.
  config.temperature = 0.5  # Softmax temperature of simclr, supcon, moco, mocov3 and nnclr.
  config.margin = 0.5  # Margin of triplet and margin, in distances between unit vectors (0 to 2).
  # triplet's negatives: "batch_hard", "semi_hard", "batch_all" (every violating triplet)
  # or "soft_margin" (batch-hard, no margin).
  # "batch_hard" is what triplet runs did before the field existed (so their workdirs
  # resume unchanged); configs/mnist_triplet.py uses "batch_all".
  config.triplet_mining = "batch_hard"
  config.momentum = 0.99  # EMA rate of moco's key network; byol's, mocov3's and dino's starting rate (cosine to 1).
  # moco: keys in the queue of negatives; nnclr: embeddings in the support set (a ring buffer
  # of earlier view-1 projections; any positive size).
  config.queue_size = 4096
  config.barlow_lambda = 0.0051  # barlow_twins: weight of the off-diagonal terms (the paper's).
  # vicreg: weights of the invariance, variance and covariance terms (the paper's lambda, mu, nu).
  config.vicreg_weights = (25.0, 25.0, 1.0)
  # dino: the student's and the teacher's softmax temperatures; the teacher's rises linearly
  # from the first to the second value over dino_teacher_warmup_epochs (0 = the second from
  # the start), as the paper's (0.04 to 0.07 over 30 of 100 epochs).
  config.dino_student_temperature = 0.1
  config.dino_teacher_temperature = (0.04, 0.07)
  config.dino_teacher_warmup_epochs = 0.0
  config.dino_centre_momentum = 0.9  # dino: EMA rate of the centre subtracted from the teacher's scores.
  config.dino_freeze_prototypes_epochs = 0.0  # dino: the optimizer leaves the student's prototypes (its last layer) as they are for this many epochs (the paper's freeze_last_layer: 1 for ViTs).
  config.swav_temperature = 0.1  # swav: softmax temperature of the swapped prediction.
  config.swav_sinkhorn_epsilon = 0.05  # swav: Sinkhorn-Knopp's entropy weight (assignments from exp(scores / epsilon)).
  config.swav_sinkhorn_iterations = 3  # swav: Sinkhorn-Knopp's row and column scalings.
  # swav: earlier unit projections per view (a ring buffer of the global batch's) that join
  # the Sinkhorn assignments from swav_queue_start_epochs on, once full, for batches much
  # smaller than the prototypes; 0 = no queue.
  config.swav_queue_size = 0
  config.swav_queue_start_epochs = 0.0
  config.swav_freeze_prototypes_epochs = 0.0  # swav: the optimizer leaves the prototypes (and their state) as they are for this many epochs.
  config.batch_size = 128  # Global batch (images; each gives two views); must divide by the device count.
  config.num_epochs = 10  # Passes over the training set (last partial batch dropped).
  # Stop this invocation at this global step, at most the schedule's end (num_epochs), which
  # it does not shorten; -1 = run to the schedule's end. A finished workdir is left as it is.
  config.max_steps = -1
  # "adam", "adamw", "sgd" (momentum 0.9) or "lars" (momentum 0.9; biases and normalisation
  # parameters get neither weight decay nor the trust ratio, as SimCLR's).
  config.optimizer = "adam"
  config.learning_rate = 1e-3  # Peak learning rate (times batch_size / 256 with lr_batch_scaling).
  config.lr_batch_scaling = False  # Scale learning_rate by batch_size / 256 (SimCLR's and solo-learn's rule).
  config.weight_decay = 0.0  # Weight decay of the kernels (adamw: decoupled; lars: added to the gradient; adam, sgd: none).
  config.lars_trust_coefficient = 0.001  # lars: eta of the trust ratio eta * |w| / |g + wd w| (SimCLR's; solo-learn's 0.02).
  # lars: solo-learn's variant instead of optax.lars: the trust ratio eta * |w| / (|g| + wd |w|),
  # clipped so that no weight's step exceeds the learning rate's (its clip_lr).
  config.lars_clip = False
  config.lr_schedule = "constant"  # "constant" or "cosine" (decay to 0 over the run).
  config.warmup_epochs = 0.0  # Linear warm-up from 0 over this many epochs; 0 = none.

  # Parallelism and reproducibility.
  config.parallel = "shard_map"  # Maps the per-device step: "shard_map", or "pmap" (one process only).
  config.num_devices = -1  # Use the first this many local devices; -1 = all (of all processes).
  config.seed = 0  # Seeds initialisation, shuffling and augmentation.
  # Training steps per jitted call (a loop on device; calls also end at logs, checkpoints,
  # monitor points and epoch ends); 0 = automatic: 1 on CPU (XLA:CPU runs the loop 1.8x
  # slower, docs/performance.md), else log_every_steps (at most an epoch).
  config.steps_per_call = 0

  # Logging and checkpoints.
  config.log_every_steps = 50  # Steps between metrics.jsonl / TensorBoard entries.
  config.checkpoint_every_steps = 1000  # Steps between checkpoints (one is always written at the end).
  config.keep_checkpoints = 3  # How many recent checkpoints Orbax keeps.
  config.resume = "auto"  # "auto": resume a workdir written with the same config, refuse another;
  #                         "force": resume whatever config wrote it.
  config.progress_bar = True  # Show a tqdm progress bar.

  # Evaluation (on the encoder output, never the projection head).
  config.knn_k = 5  # Neighbours of the k-NN metrics with uniform votes (the monitor's too).
  # The weighted k-NN of InstDisc (cosine, votes weighted by exp(similarity / T)) that
  # solo-learn, lightly and VISSL report, at each of these k (train -> test and on the
  # validation split); () = none.
  config.weighted_knn_k = (200, 20)
  config.weighted_knn_temperature = 0.1  # T of the weighted k-NN's votes (InstDisc's 0.07, solo-learn's 0.1).
  # Online linear probe (solo-learn's): a linear classifier trained with Adam at this
  # learning rate, beside pre-training, on the encoder's features (through a stop-gradient)
  # of the batch's labelled images outside the validation split; the monitor logs it on the
  # validation queries, the evaluation reports it. 0 = no probe.
  config.online_probe_learning_rate = 1e-3
  config.eval_every_epochs = 1  # Online k-NN monitor every this many epochs; 0 = off.
  config.monitor_bank_size = 10000  # Monitor: first this many training images after the validation split are the k-NN bank.
  config.monitor_query_size = 2000  # Monitor: first this many validation images are the queries.
  config.evaluate_at_end = True  # Run the full evaluation (cl_jax.evaluate) after training.
  # Training images the evaluation's k-NN and probe fit on (the first this many of the
  # training split for test, of the rest after the validation split for validation); -1 = all.
  config.eval_train_examples = -1
  config.eval_batch_size = 1000  # Images per forward pass when embedding a split.
  config.tsne_points = 1000  # Test embeddings shown in tsne.png.
  config.cache_dir = ""  # Baselines' metrics and compiled programs; "" = $CL_JAX_CACHE or ~/.cache/cl_jax.
  config.compilation_cache = True  # JAX's persistent compilation cache in <cache_dir>/xla-<uid>/<machine>: repeated runs skip compiling; False leaves JAX's own setting (off unless JAX_COMPILATION_CACHE_DIR is set).
  return config
