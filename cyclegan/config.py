"""Typed run configuration: YAML files plus dotted `key=value` overrides.

The dataclasses below are the schema. `load_config` merges a YAML file and overrides onto
it with OmegaConf, which rejects unknown keys and wrong types, then `validate` checks the
values that only make sense together. Every failure becomes one `ConfigError` naming the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cyclegan.data.normalize import NORMALIZE_FORMS, Normalize
from cyclegan.errors import ConfigError, DataError
from cyclegan.io.files import atomic_write
from cyclegan.models.generator import GeneratorSpec
from cyclegan.models.recompute import LEVELS as RECOMPUTE_LEVELS
from cyclegan.memory import memory_budget_ok

NORMS = ("instance", "batch", "none")
GAN_MODES = ("lsgan", "vanilla")
PREPROCESS = ("resize_and_crop", "crop", "scale_width_and_crop", "scale_shorter_and_crop")
PRECISIONS = ("no", "bf16", "fp16")
BACKENDS = ("wandb", "tensorboard")
TRACKING_MODES = ("online", "offline", "disabled")
EVAL_METRICS = ("fid", "kid", "l1", "psnr", "ssim")
ADAM_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")
DIFFAUG_POLICIES = ("color", "translation", "cutout")
OBJECTIVES = ("cyclegan", "cut", "fastcut")
INITS = ("normal", "xavier")
CUT_ONLY = ("model.nce_layers", "model.head_nc", "train.lambda_gan", "train.lambda_nce", "train.nce_idt",
            "train.flip_equivariance", "train.num_patches", "train.nce_temperature")


@dataclass
class ModelConfig:
    """The networks: ResNet generators, PatchGAN discriminators and, for CUT, the patch head."""

    # cyclegan: two generators and two discriminators (the paper); cut or fastcut: one generator
    # (A -> B), one discriminator (judging B) and PatchNCE's head (Park et al. 2020; docs/training.md)
    objective: str = "cyclegan"
    ngf: int = 64  # generator base width; the paper's 64
    n_blocks: int = 9  # residual blocks: the paper uses 9 at 256 px, 6 at 128 px
    ndf: int = 64  # discriminator base width
    n_layers_d: int = 3  # 3 strided layers give the 70x70 PatchGAN
    # instance (paper); batch or none change the state_dict, so official checkpoints no longer load
    norm: str = "instance"
    # Dropout(0.5) in each residual block shifts the keys after it: breaks official checkpoints
    dropout: bool = False
    init_gain: float = 0.02  # std of the N(0, gain) conv weight init, as the official code
    # channels of domain A's and domain B's images: 3 (RGB), 1 (greyscale) or any N (bands of .npy
    # samples); G_AB maps A's to B's, D_A judges A's. Unequal counts need train.lambda_identity=0
    # (the identity loss feeds B to G_AB)
    input_nc: int = 3
    output_nc: int = 3
    # the official CUT networks' blurred down- and upsampling (official CUT checkpoints need it);
    # null: on for cut and fastcut, off for cyclegan (official CycleGAN checkpoints need that)
    antialias: Optional[bool] = None
    init: Optional[str] = None  # normal (CycleGAN's) or xavier (CUT's), both with init_gain; null: the objective's
    # cut/fastcut: generator layers PatchNCE reads (positions in its `model`); null: the padded
    # input, both downsampling convolutions and residual blocks 1 and 5 (0,4,8,12,16 anti-aliased,
    # 0,4,7,10,14 otherwise), as the official CUT; the last block where there are fewer than 5
    nce_layers: Optional[list[int]] = None
    head_nc: Optional[int] = None  # cut/fastcut: width of the patch head's MLPs (null: 256, the official netF_nc)


@dataclass
class DataConfig:
    """Where the shards are and how images become training crops."""

    root: Optional[str] = None  # folder written by scripts/make_shards.py (holds manifest.json)
    # Explicit shard lists override the manifest: comma-separated paths, brace patterns or URLs
    train_a: Optional[str] = None
    train_b: Optional[str] = None
    test_a: Optional[str] = None
    test_b: Optional[str] = None
    num_a: int = 0  # samples in train_a, needed without a manifest to size an epoch
    num_b: int = 0  # samples in train_b, likewise
    load_size: int = 286  # images are resized to this before the random crop (paper: 286)
    crop_size: int = 256  # training crop (paper: 256)
    preprocess: str = "resize_and_crop"  # also crop, scale_width_and_crop, scale_shorter_and_crop
    flip: bool = True  # random horizontal flip, as the paper
    # Decode large JPEGs at 1/2, 1/4 or 1/8 scale (free in the JPEG decoder) when that still covers
    # the resize target: faster on big photos, but pixels then differ slightly from the official
    # pipeline's full decode (docs/benchmarks.md measures both). Resize modes only.
    jpeg_draft: bool = False
    # how sample values map onto [-1, 1]: "dtype" (the full range of the integer type: 8-bit data
    # then follows the official arithmetic exactly), "range:LO,HI" (a fixed window, clipped; e.g.
    # range:-1000,1000 for CT in Hounsfield units) or "percentile:P1,P99" (each image's own);
    # translation inverts it. Float samples need range or percentile
    normalize: str = "dtype"
    normalize_b: Optional[str] = None  # domain B's, where it differs from A's (e.g. CT in HU <-> MR); None: the same
    num_workers: int = 4  # loader processes per rank
    shuffle_buffer: int = 256  # samples mixed in memory on top of the shard shuffle

    @property
    def normalizations(self) -> tuple[str, str]:
        """Domain A's and domain B's `normalize`."""
        return self.normalize, self.normalize_b or self.normalize


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision and checkpoints."""

    batch_size: int = 1  # per device; the paper trains with 1
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4  # Adam learning rate (paper)
    beta1: float = 0.5  # Adam betas (paper)
    beta2: float = 0.999
    # Adam's epsilon (the paper's 1e-8). A large value makes a step proportional to the
    # gradient rather than to its sign, which lets tests compare gradients through weights.
    adam_eps: float = 1e-8
    epochs: int = 100  # epochs at constant learning rate
    decay_epochs: int = 100  # epochs of linear decay to zero after that
    max_steps: Optional[int] = None  # stop after this many optimizer steps (None: whole schedule)
    gan_mode: str = "lsgan"  # lsgan (paper) or vanilla (BCE with logits)
    lambda_cycle: float = 10.0  # weight of the cycle-consistency L1 (paper)
    lambda_identity: float = 0.5  # identity L1 weight, as a fraction of lambda_cycle (paper)
    # history of generated images shown to D: 50 for cyclegan (paper), 0 turns it off; null: the
    # objective's (cut and fastcut have none)
    pool_size: Optional[int] = None
    # cut/fastcut only, null meaning the official CUT value: the adversarial weight (1); PatchNCE's
    # weight (1 for cut, 10 for fastcut); the identity PatchNCE on B (on for cut); mirrored inputs
    # (on for fastcut); patches sampled per layer (256); the contrastive temperature (0.07)
    lambda_gan: Optional[float] = None
    lambda_nce: Optional[float] = None
    nce_idt: Optional[bool] = None
    flip_equivariance: Optional[bool] = None
    num_patches: Optional[int] = None
    nce_temperature: Optional[float] = None
    mixed_precision: str = "no"  # no, bf16 or fp16
    grad_clip: float = 0.0  # max gradient norm per optimizer; 0 turns clipping off
    # steps with a NaN or inf loss are skipped and counted; this many in a row stop the run (0: never)
    stop_after_nonfinite: int = 10
    checkpoint_every: int = 1000  # optimizer steps between checkpoints
    # compare every rank's weight checksums every N steps and fail loudly if they differ
    # (0: only at the end of the run); DDP keeps replicas bitwise equal, so any difference is a bug
    check_ranks_every: int = 0
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    # exponential moving average of the generators' weights, e.g. 0.999 (0: off), with a warm-up:
    # step t uses min(ema_decay, (1 + t) / (10 + t)); grids, evaluation and exports then use the
    # averaged generators (docs/quality.md measures it)
    ema_decay: float = 0.0
    export_ema: bool = True  # with ema_decay on: export the averaged generators (false: the trained ones)
    # differentiable augmentation of everything the discriminators see, for small data sets:
    # any of "color,translation,cutout" ("": off, the paper); each applied with probability diffaug_p
    diffaug: str = ""
    diffaug_p: float = 1.0


@dataclass
class PerfConfig:
    """Speed switches; docs/benchmarks.md measures each."""

    channels_last: bool = False  # NHWC layout for the four networks and the batches (pays with bf16 on GPUs)
    compile: bool = False  # torch.compile each network: faster steps after minutes of compiling
    adam: str = "auto"  # auto (fused), fused, foreach or for_loop
    cudnn_benchmark: bool = True  # let cuDNN time its kernels once; shapes are fixed during training
    # recompute activations in the backward pass instead of keeping them: none, blocks (the
    # generators' residual blocks) or all (every stage of every network); docs/benchmarks.md says
    # what each level saves and costs at 256, 512 and 1024 px
    activation_checkpointing: str = "none"
    # the memory one training step may take on each device, e.g. "24GiB" or "500MB": a run whose
    # estimated peak is larger stops before any work, naming what would fit; null: the GPU's free
    # memory (no check on a CPU), "off": no check
    memory_budget: Optional[str] = None


@dataclass
class TrackingConfig:
    """Where metrics and sample grids go, and how often."""

    backend: str = "wandb"  # wandb or tensorboard; metrics.jsonl and samples/ are written either way
    mode: str = "offline"  # online, offline (no network needed; `wandb sync` later) or disabled
    project: str = "cyclegan"  # W&B project (TensorBoard: the run's subfolder)
    entity: Optional[str] = None  # W&B team or user; None: your default entity
    run_name: Optional[str] = None  # None: W&B picks one
    tags: list[str] = field(default_factory=list)
    group: Optional[str] = None  # W&B group, e.g. to gather the runs of one sweep
    log_every: int = 50  # optimizer steps between scalar logs (each one syncs the device)
    image_every: int = 500  # optimizer steps between sample grids
    num_images: int = 4  # fixed test images per domain in each grid
    # bands shown in grids of data with other than 1 or 3 channels, e.g. [3, 2, 1] (empty: the first
    # three, or the first alone for 2 bands), each stretched to its own range for display only
    display_bands: list[int] = field(default_factory=list)
    # health warnings, after 3 logs in a row: a generator whose mean |G(x) - x| (on [-1, 1]
    # images) stays below warn_identity_change (0.01: about 1.3 levels of 255) copies its input;
    # a discriminator right on more than warn_d_accuracy of real and of fake patches wins outright
    warn_identity_change: float = 0.01
    warn_d_accuracy: float = 0.99


@dataclass
class EvalConfig:
    """Scoring the test split during training (scripts/evaluate.py does it standalone)."""

    every: int = 0  # optimizer steps between evaluations; 0 turns them off
    # the number that picks the checkpoint kept in best/: fid or kid (lower is better; need
    # Inception weights), l1 (lower), psnr or ssim (higher; need a paired test split)
    metric: str = "fid"
    inception_weights: Optional[str] = None  # local FID Inception file; or CYCLEGAN_INCEPTION_WEIGHTS
    batch_size: int = 8  # test images per forward pass
    max_images: Optional[int] = None  # score only the first N test images per domain (None: all)
    kid_subsets: int = 100  # KID is a mean over this many random subsets ...
    kid_subset_size: int = 100  # ... of this size (capped by the test set: CycleGAN's hold 100-500)


@dataclass
class RunConfig:
    """One training run."""

    output_dir: str = "runs/cyclegan"  # checkpoints, exports, metrics and samples land here
    seed: int = 0  # seeds weights, data order, augmentation and the image pools
    resume: Optional[str] = None  # None, "auto" (newest complete checkpoint) or a checkpoint path
    # resume on another number of processes or loader workers (refused otherwise: the data stream
    # is split by both); the run goes on, but is no longer bitwise reproducible
    resume_elastic: bool = False
    # start from these weights only (fresh optimizers, schedule, pools, step): an official
    # checkpoint folder, one of our exports (generators only) or checkpoints; a resume wins over it
    init_from: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Build a validated `RunConfig` from an optional YAML file and `key=value` overrides."""
    schema = OmegaConf.structured(RunConfig)
    layers = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as err:  # yaml errors come in many classes
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(err, "problem", None) or " ".join(str(err).split())
            raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-4)")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, path)) from None
    if config.train.mixed_precision == "False":  # YAML reads an unquoted `no` as false
        config.train.mixed_precision = "no"
    if config.perf.memory_budget == "False":  # ... and `off` too
        config.perf.memory_budget = "off"
    resolve_objective(config)
    validate(config)
    return config


def resolve_objective(config: RunConfig) -> None:
    """Fill the keys left null with the objective's values, so that config.yaml and checkpoints
    record what ran; refuse CUT's keys in a CycleGAN run and an image pool in a CUT run."""
    m, t = config.model, config.train
    if m.objective not in OBJECTIVES:
        raise ConfigError(f"config key 'model.objective' must be one of {', '.join(OBJECTIVES)}")
    cut = m.objective != "cyclegan"
    if not cut:
        given = [key for key in CUT_ONLY if _get(config, key) is not None]
        if given:
            raise ConfigError(f"config key '{given[0]}' applies to model.objective=cut or fastcut only; this run "
                              "trains cyclegan: remove it, or set model.objective")
    elif t.pool_size:
        raise ConfigError(f"config key 'train.pool_size' must be 0 or null for model.objective={m.objective}: CUT "
                          "shows its discriminator the newest translations only")
    fast = m.objective == "fastcut"
    m.antialias = cut if m.antialias is None else m.antialias
    m.init = ("xavier" if cut else "normal") if m.init is None else m.init
    t.pool_size = (0 if cut else 50) if t.pool_size is None else t.pool_size
    if cut:
        m.nce_layers = list(generator_spec(m).feature_layers) if m.nce_layers is None else list(m.nce_layers)
        official = [(m, "head_nc", 256), (t, "lambda_gan", 1.0), (t, "lambda_nce", 10.0 if fast else 1.0),
                    (t, "nce_idt", not fast), (t, "flip_equivariance", fast), (t, "num_patches", 256),
                    (t, "nce_temperature", 0.07)]
        for section, key, value in official:
            if getattr(section, key) is None:
                setattr(section, key, value)


def _get(config: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def generator_spec(m: ModelConfig) -> GeneratorSpec:
    """The A -> B generator a model config builds."""
    return GeneratorSpec(m.input_nc, m.output_nc, m.ngf, m.n_blocks, m.norm, m.dropout, bool(m.antialias))


def _describe(err: OmegaConfBaseException, path: Optional[Path]) -> str:
    key = getattr(err, "full_key", None) or "?"
    source = f" (from {path} or the overrides)" if path else ""
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "not in" in first_line or "Key" in type(err).__name__:
        return f"unknown config key '{key}'{source}; see cyclegan/config.py for the valid keys"
    return f"bad value for config key '{key}'{source}: {first_line}"


def _parses(parse, value: str) -> bool:
    try:
        parse(value)
    except DataError:
        return False
    return True


def validate(config: RunConfig) -> None:
    """Reject values that are well typed but impossible, naming the key."""
    m, d, t, k = config.model, config.data, config.train, config.tracking
    diffaug_ops = [op.strip() for op in t.diffaug.split(",") if op.strip()]
    banded = [n for n in (m.input_nc, m.output_nc) if n not in (1, 3)]
    checks = [
        ("model.ngf", m.ngf >= 1, "must be at least 1"),
        ("model.n_blocks", m.n_blocks >= 0, "must not be negative"),
        ("model.ndf", m.ndf >= 1, "must be at least 1"),
        ("model.n_layers_d", m.n_layers_d >= 1, "must be at least 1"),
        ("model.norm", m.norm in NORMS, f"must be one of {', '.join(NORMS)}"),
        ("model.input_nc", m.input_nc >= 1, "must be at least 1"),
        ("model.output_nc", m.output_nc >= 1, "must be at least 1"),
        ("train.lambda_identity", m.objective != "cyclegan" or m.input_nc == m.output_nc or t.lambda_identity == 0,
         f"must be 0 when model.input_nc ({m.input_nc}) and model.output_nc ({m.output_nc}) differ: the identity "
         "loss feeds domain B images to G_AB, which takes domain A's channels"),
        ("model.init_gain", m.init_gain > 0, "must be positive"),
        ("model.init", m.init in INITS, f"must be one of {', '.join(INITS)}"),
        ("model.head_nc", m.head_nc is None or m.head_nc >= 1, "must be at least 1"),
        ("model.objective", m.objective == "cyclegan" or m.input_nc == m.output_nc,
         f"{m.objective} needs model.input_nc ({m.input_nc}) equal to model.output_nc ({m.output_nc}): PatchNCE "
         "passes the translation back through the generator's encoder"),
        ("model.nce_layers", m.nce_layers is None or nce_layers_ok(m),
         f"{m.nce_layers} must be distinct, ascending generator layers from 0 to {generator_spec(m).depth - 1} "
         f"(model.n_blocks={m.n_blocks})"),
        ("train.lambda_gan", t.lambda_gan is None or t.lambda_gan >= 0, "must not be negative"),
        ("train.lambda_nce", t.lambda_nce is None or t.lambda_nce >= 0, "must not be negative"),
        ("train.num_patches", t.num_patches is None or t.num_patches >= 2,
         "must be at least 2 (each patch needs a negative)"),
        ("train.nce_temperature", t.nce_temperature is None or t.nce_temperature > 0, "must be positive"),
        ("train.nce_idt", not (m.objective != "cyclegan" and t.nce_idt and t.lambda_nce == 0),
         "needs train.lambda_nce above 0"),
        ("data.crop_size", d.crop_size >= 16, "must be at least 16"),
        ("data.crop_size", d.crop_size % 4 == 0, "must be a multiple of 4 (two stride-2 layers)"),
        ("data.load_size", d.load_size >= 1, "must be positive"),
        ("data.crop_size", d.preprocess == "crop" or d.crop_size <= d.load_size,
         f"({d.crop_size}) is larger than data.load_size ({d.load_size})"),
        ("data.preprocess", d.preprocess in PREPROCESS, f"must be one of {', '.join(PREPROCESS)}"),
        ("data.jpeg_draft", not (d.jpeg_draft and d.preprocess == "crop"),
         "applies to the resize modes only: data.preprocess=crop takes its window at the image's own resolution"),
        ("data.normalize", _parses(Normalize.parse, d.normalize), f"must be one of {NORMALIZE_FORMS}, with LO < HI"),
        ("data.normalize_b", d.normalize_b is None or _parses(Normalize.parse, d.normalize_b),
         f"must be null or one of {NORMALIZE_FORMS}, with LO < HI"),
        ("data.num_workers", d.num_workers >= 0, "must not be negative"),
        ("data.num_a", d.num_a >= 0, "must not be negative"),
        ("data.num_b", d.num_b >= 0, "must not be negative"),
        ("data.shuffle_buffer", d.shuffle_buffer >= 1, "must be at least 1"),
        ("train.batch_size", t.batch_size >= 1, "must be at least 1"),
        ("train.grad_accum", t.grad_accum >= 1, "must be at least 1"),
        ("train.lr", t.lr > 0, "must be positive"),
        ("train.beta1", 0 <= t.beta1 < 1, "must lie in [0, 1)"),
        ("train.beta2", 0 <= t.beta2 < 1, "must lie in [0, 1)"),
        ("train.adam_eps", t.adam_eps > 0, "must be positive"),
        ("train.epochs", t.epochs >= 0, "must not be negative"),
        ("train.decay_epochs", t.decay_epochs >= 0, "must not be negative"),
        ("train.epochs", t.epochs + t.decay_epochs >= 1, "plus train.decay_epochs must be at least 1"),
        ("train.max_steps", t.max_steps is None or t.max_steps >= 1, "must be at least 1 (or null)"),
        ("train.gan_mode", t.gan_mode in GAN_MODES, f"must be one of {', '.join(GAN_MODES)}"),
        ("train.lambda_cycle", t.lambda_cycle >= 0, "must not be negative"),
        ("train.lambda_identity", t.lambda_identity >= 0, "must not be negative"),
        ("train.pool_size", t.pool_size >= 0, "must not be negative"),
        ("train.mixed_precision", t.mixed_precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
        ("train.grad_clip", t.grad_clip >= 0, "must not be negative"),
        ("train.stop_after_nonfinite", t.stop_after_nonfinite >= 0, "must not be negative"),
        ("train.checkpoint_every", t.checkpoint_every >= 1, "must be at least 1"),
        ("train.keep_checkpoints", t.keep_checkpoints >= 1, "must be at least 1"),
        ("train.check_ranks_every", t.check_ranks_every >= 0, "must not be negative"),
        ("train.ema_decay", 0 <= t.ema_decay < 1, "must lie in [0, 1)"),
        ("train.diffaug", all(op in DIFFAUG_POLICIES for op in diffaug_ops) and len(set(diffaug_ops)) == len(diffaug_ops),
         f"takes a comma-separated list of {', '.join(DIFFAUG_POLICIES)}, each at most once"),
        ("train.diffaug_p", 0 <= t.diffaug_p <= 1, "must lie in [0, 1]"),
        ("perf.adam", config.perf.adam in ADAM_IMPLEMENTATIONS, f"must be one of {', '.join(ADAM_IMPLEMENTATIONS)}"),
        ("perf.activation_checkpointing", config.perf.activation_checkpointing in RECOMPUTE_LEVELS,
         f"must be one of {', '.join(RECOMPUTE_LEVELS)}"),
        ("perf.activation_checkpointing", config.perf.activation_checkpointing == "none" or m.norm != "batch",
         "needs model.norm=instance or none: recomputing a batch norm would update its running statistics twice"),
        ("perf.memory_budget", memory_budget_ok(config.perf.memory_budget),
         "takes a size such as 24GiB, 500MB or 8e9 (bytes), or off"),
        ("tracking.backend", k.backend in BACKENDS, f"must be one of {', '.join(BACKENDS)}"),
        ("tracking.warn_identity_change", k.warn_identity_change >= 0, "must not be negative"),
        ("tracking.warn_d_accuracy", 0 <= k.warn_d_accuracy <= 1, "must lie in [0, 1]"),
        ("tracking.mode", k.mode in TRACKING_MODES, f"must be one of {', '.join(TRACKING_MODES)}"),
        ("tracking.log_every", k.log_every >= 1, "must be at least 1"),
        ("tracking.image_every", k.image_every >= 1, "must be at least 1"),
        ("tracking.num_images", k.num_images >= 0, "must not be negative"),
        ("tracking.display_bands", len(k.display_bands) in (0, 1, 3), "must list 1 or 3 bands (or none)"),
        ("tracking.display_bands", all(0 <= b < min(banded, default=3) for b in k.display_bands),
         f"must be band numbers from 0 to {min(banded, default=3) - 1} (of the domains with other than 1 or 3)"),
        ("eval.every", config.eval.every >= 0, "must not be negative"),
        ("eval.metric", config.eval.metric in EVAL_METRICS, f"must be one of {', '.join(EVAL_METRICS)}"),
        ("eval.batch_size", config.eval.batch_size >= 1, "must be at least 1"),
        ("eval.max_images", config.eval.max_images is None or config.eval.max_images >= 2, "must be at least 2"),
        ("eval.kid_subsets", config.eval.kid_subsets >= 1, "must be at least 1"),
        ("eval.kid_subset_size", config.eval.kid_subset_size >= 2, "must be at least 2"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {message}")


def nce_layers_ok(m: ModelConfig) -> bool:
    layers = list(m.nce_layers)
    return bool(layers) and layers == sorted(set(layers)) and 0 <= layers[0] and layers[-1] < generator_spec(m).depth


def run_normalize(checkpoint: Path) -> tuple[str, str] | None:
    """Domain A's and B's `normalize` of the run a checkpoint comes from (its run folder, or an
    export or checkpoint inside it: a folder holding the run's config.yaml and run.json), so that
    translation and evaluation read and write data as training did; None when there is no run."""
    path = Path(checkpoint).resolve()
    for folder in (path, *path.parents[:3]):
        if (folder / "config.yaml").is_file() and (folder / "run.json").is_file():
            try:
                data = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")).get("data") or {}
            except Exception:  # not a run's config after all (YAML errors come in many classes)
                return None
            normalize = str(data.get("normalize") or "dtype")
            return normalize, str(data.get("normalize_b") or normalize)
    return None


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML, so that a run folder says how it was made."""
    atomic_write(path, OmegaConf.to_yaml(OmegaConf.structured(config)))
