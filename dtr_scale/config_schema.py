"""The configuration's schema: every section, key, type and default, and the allowed values.

Adding a key means adding a field here (with its default and a comment saying what it does) and,
where it has a fixed set of values or a range, a line in CHOICES or RANGES; `config.py` reads
YAML and overrides against this schema and reports every violation by its dotted key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from .models.attention import ATTENTION_BACKENDS
from .models.block_options import MLPS, NORMS, POS_EMBEDS
from .models.dit import DIT_MODELS
from .models.routing import RoutingConfig


@dataclass
class ModelSection:
    name: str = "DiT-T/2"
    input_size: Optional[int] = None  # latent side; None = from the dataset manifest
    in_channels: Optional[int] = None  # None = from the dataset manifest
    num_classes: Optional[int] = None  # None = from the dataset manifest
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    routing: RoutingConfig = field(default_factory=RoutingConfig)  # β, init, α, tasks, seed (checks its own ranges)
    attention: str = "auto"  # auto | xformers | sdpa | math
    checkpointing: float = 0.0  # fraction of blocks with activation checkpointing
    compile: str = "auto"  # torch.compile each DiT block: true | false | auto (= on CUDA only)
    # The modern block (LightningDiT); the defaults are the official DiT block (models/block_options.py).
    qk_norm: bool = False  # normalise q and k per head before attention
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu | swiglu
    pos_embed: str = "sincos"  # sincos | rope2d (2-D RoPE in attention on top of sin-cos)


@dataclass
class FlowSection:
    """Flow matching (SiT's transport); only with diffusion.objective=flow."""
    path: str = "Linear"  # Linear | GVP | VP
    prediction: str = "velocity"  # velocity | noise | score
    loss_weight: Optional[str] = None  # None | velocity | likelihood (noise/score models only)
    train_eps: Optional[float] = None  # None = SiT's choice per path and prediction
    sample_eps: Optional[float] = None
    time_sampling: str = "uniform"  # uniform (SiT) | logit_normal (SD3): t = sigmoid(N(mean, std²))
    logit_mean: float = 0.0
    logit_std: float = 1.0


@dataclass
class DiffusionSection:
    objective: str = "ddpm"  # a registered objective (dtr_scale/objective/): ddpm (DiT/ADM) | flow (SiT)
    flow: Optional[FlowSection] = None  # the flow objective's section (defaults filled in when chosen)
    schedule: str = "linear"  # linear (DiT) | cosine (ANT)
    steps: int = 1000
    loss_weighting: str = "constant"  # constant | min_snr | p2 | ant_uw
    snr_gamma: float = 5.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0
    ant_clusters: int = 8
    ant_lr: float = 0.025


@dataclass
class DataSection:
    path: str = ""
    num_workers: int = 2
    shuffle_buffer: int = 1000
    mode: str = "resampled"  # epoch | resampled | global (world-size-invariant order)
    on_error: str = "skip"  # skip | raise
    verify_sha256: bool = False
    random_flip: bool = True  # use the stored horizontal flip half the time (off for digits/text)


@dataclass
class TrainSection:
    global_batch_size: int = 256
    grad_accum: int = 1
    max_steps: int = 400000
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max global grad norm; 0 = no clipping (DiT default)
    ema_decay: float = 0.9999
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    log_every: int = 50
    max_consecutive_nonfinite: int = 10
    preempt_check_every: int = 10  # steps between the (collective) checks of the preemption flag
    sample_every: int = 0  # in-loop sample grids (PNG); 0 = off
    peak_tflops: Optional[float] = None  # device peak for the `mfu` metric; None = the table in mfu.py


@dataclass
class ParallelSection:
    engine: str = "single"  # single | ddp | fsdp | deepspeed
    zero_stage: int = 2
    offload: bool = False  # DeepSpeed: optimizer state (and ZeRO-3 params) on the CPU
    deepspeed_config: Optional[str] = None  # JSON whose keys override the generated config
    meta_init: bool = False  # fsdp / ZeRO-3: build the model sharded, never whole on a rank


@dataclass
class CheckpointSection:
    dir: str = "runs/default"
    every: int = 5000
    keep: int = 3
    resume: str = "auto"  # auto | none | PATH
    overwrite: bool = False  # let resume=none delete the checkpoints (and config.yaml) already in dir
    # Write in the background (checkpoint_async.py). `async` is a Python keyword, so the field has
    # another name and the YAML key users write is given in its metadata.
    async_save: bool = field(default=False, metadata={"key": "async"})


@dataclass
class EvalSection:
    every: int = 0  # 0 = no in-loop evaluation
    num_samples: int = 1000
    sampling_steps: str = "250"
    cfg_scale: float = 1.5
    extractor: str = "pixels"  # pixels | inception
    inception_weights: Optional[str] = None
    ref: Optional[str] = None  # reference npz / folder; None = the training shards


@dataclass
class LogSection:
    """Optional experiment tracking beside TensorBoard and metrics.jsonl (dtr_scale/wandb_log.py)."""
    wandb: bool = False  # needs `pip install dtr-scale[wandb]`
    wandb_project: str = "dtr-scale"
    wandb_run_name: Optional[str] = None  # None = the run folder's name
    wandb_mode: str = "auto"  # auto (= $WANDB_MODE, else online) | online | offline | disabled


@dataclass
class RepaSection:
    """REPA (Yu et al., ICLR 2025): align a projection of a DiT block's hidden state with a frozen
    DINOv2's patch features (dtr_scale/objective/repa.py). Needs shards prepped with --store-images."""
    enabled: bool = False
    encoder: str = "dinov2-vit-b"  # dinov2-vit-s | -b | -l | -g (REPA: B), or dinov2-from-file (shape read from the file)
    encoder_weights: Optional[str] = None  # local .safetensors / .pth of the encoder (clusters are offline)
    encoder_sha256: Optional[str] = None  # the file's sha256 (or a prefix of >= 8 hex digits); None = not checked
    depth: int = 8  # align the hidden state after this many blocks (1-based; REPA: 8 for L and XL, 4 for B)
    coeff: float = 0.5  # weight of the alignment loss (REPA's --proj-coeff)
    projector_dim: int = 2048  # hidden width of the projector MLP (REPA's --projector-dim)
    seed: int = 0  # the projector's initialisation, independent of the DiT's draws


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    repa: RepaSection = field(default_factory=RepaSection)


CHOICES = {
    "model.name": DIT_MODELS,
    "model.attention": ATTENTION_BACKENDS,
    "model.norm": NORMS,
    "model.mlp": MLPS,
    "model.pos_embed": POS_EMBEDS,
    "diffusion.schedule": ("linear", "cosine"),
    "diffusion.loss_weighting": ("constant", "min_snr", "p2", "ant_uw"),
    "data.mode": ("epoch", "resampled", "global"),
    "data.on_error": ("skip", "raise"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "parallel.engine": ("single", "ddp", "fsdp", "deepspeed"),
    "model.compile": ("auto", "true", "false"),
    "parallel.zero_stage": (1, 2, 3),
    "eval.extractor": ("pixels", "inception"),
    "log.wandb_mode": ("auto", "online", "offline", "disabled"),
    "repa.encoder": ("dinov2-vit-s", "dinov2-vit-b", "dinov2-vit-l", "dinov2-vit-g", "dinov2-from-file"),
}

# key -> (predicate, description of the allowed range). Every predicate is written so that NaN
# fails it (NaN compares false, so `not (v >= 0)` refuses it where `v < 0` would let it through),
# and floats must be finite unless said otherwise.
def _finite(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def ok(v) -> bool:
        if not math.isfinite(v):
            return False
        if lo is not None and not (v > lo if lo_open else v >= lo):
            return False
        return hi is None or bool(v < hi if hi_open else v <= hi)
    return ok


RANGES = {
    "model.checkpointing": (_finite(0.0, 1.0), "a fraction in [0, 1]"),
    "model.class_dropout_prob": (_finite(0.0, 1.0, hi_open=True), "in [0, 1)"),
    "diffusion.steps": (lambda v: v >= 2, ">= 2"),
    "diffusion.ant_clusters": (lambda v: v >= 1, ">= 1"),
    "diffusion.snr_gamma": (_finite(0.0, lo_open=True), "a finite number > 0"),
    "diffusion.p2_gamma": (_finite(), "a finite number"),
    "diffusion.p2_k": (_finite(0.0, lo_open=True), "a finite number > 0"),
    "diffusion.ant_lr": (_finite(0.0), "a finite number >= 0"),
    "train.global_batch_size": (lambda v: v >= 1, ">= 1"),
    "train.grad_accum": (lambda v: v >= 1, ">= 1"),
    "train.max_steps": (lambda v: v >= 0, ">= 0"),
    "train.lr": (_finite(0.0, lo_open=True), "a finite number > 0"),
    "train.weight_decay": (_finite(0.0), "a finite number >= 0"),
    "train.beta1": (_finite(0.0, 1.0, hi_open=True), "in [0, 1)"),
    "train.beta2": (_finite(0.0, 1.0, hi_open=True), "in [0, 1)"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0 (0 = no warm-up)"),
    "train.ema_decay": (_finite(0.0, 1.0, hi_open=True), "in [0, 1)"),
    "train.grad_clip": (_finite(0.0), "a finite number >= 0 (0 = off)"),
    "train.log_every": (lambda v: v >= 1, ">= 1"),
    "train.max_consecutive_nonfinite": (lambda v: v >= 1, ">= 1"),
    "train.preempt_check_every": (lambda v: v >= 1, ">= 1"),
    "train.sample_every": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "train.peak_tflops": (lambda v: v is None or _finite(0.0, lo_open=True)(v),
                          "a finite number > 0 (the device's dense peak TFLOP/s), or null for the built-in table"),
    "checkpoint.every": (lambda v: v >= 1, ">= 1"),
    "checkpoint.keep": (lambda v: v >= 1, ">= 1"),
    "data.num_workers": (lambda v: v >= 0, ">= 0"),
    "data.shuffle_buffer": (lambda v: v >= 0, ">= 0 (0 or 1 = no shuffle buffer)"),
    "eval.every": (lambda v: v >= 0, ">= 0 (0 = no in-loop evaluation)"),
    "eval.num_samples": (lambda v: v >= 1, ">= 1"),
    "eval.cfg_scale": (_finite(0.0), "a finite number >= 0 (1.0 = no guidance)"),
    "repa.depth": (lambda v: v >= 1, ">= 1 (and at most the model's depth)"),
    "repa.coeff": (_finite(0.0), "a finite number >= 0"),
    "repa.projector_dim": (lambda v: v >= 1, ">= 1"),
}
