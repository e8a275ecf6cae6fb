"""The pieces every stage spec is made of: plain data, validated once, loudly (STYLE habit 7).

Each stage kind has one spec model (specs/training.py, specs/evaluate.py, specs/driver.py),
built from these parts. Nothing here imports torch, Ray or MLflow: `h2s validate` reads specs
without them. Defaults are the paper's values (../shared/PAPER.md);
the CPU quickstart differs only in values (tiny flavours, small crops, few steps), never
in code path. Unknown keys are errors. The job-spec loader (h2s_dist.config) nests these
models, so errors read `stages[2].optim.lr: Input should be greater than 0`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticUndefined

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# Cross-entropy label smoothing of a classifier stage (torch's `label_smoothing`): the target
# puts 1 - x on the true class and x spread evenly over all classes.
LabelSmoothing = Annotated[float, Field(ge=0, lt=1)]
Flavour = Literal["paper", "tiny"]  # VGG16 widths
# MotionNet has a third width between the two (h2s_dist.models.motionnet.MotionNetConfig.small).
MotionNetFlavour = Literal["paper", "small", "tiny"]


class Strict(BaseModel):
    """Base of every spec: unknown keys are errors, values are checked on assignment.

    A partial mapping given for a nested spec is laid over that field's default, so
    `optim: {lr: 1e-4}` in a pretraining stage keeps the stage's Adam and schedule
    instead of falling back to OptimSpec's generic defaults.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _partial_nested_specs_keep_their_defaults(cls, data):
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            given = data.get(name)
            if not isinstance(given, dict):
                continue
            if field.default is not PydanticUndefined:
                default = field.default
            elif field.default_factory is not None:
                default = field.default_factory()
            else:
                continue
            if isinstance(default, BaseModel):
                merged[name] = {**default.model_dump(exclude_unset=True), **given}
        return merged


class ScalingSpec(Strict):
    num_workers: int = Field(0, ge=0)
    """Training processes. 0 runs the loop in this process without Ray (fastest on a laptop);
    N >= 1 starts N Ray Train workers that train with DDP over the shards."""
    use_gpu: bool = False
    """One GPU per worker, NCCL between them. On CPU workers use gloo."""
    cpus_per_worker: PositiveFloat = 1.0
    """CPUs Ray reserves for each worker (its DataLoader processes run inside that share)."""
    max_failures: int = Field(0, ge=0)
    """How often a run restarts its workers from the last checkpoint after a worker dies."""
    min_workers: int | None = Field(None, ge=1)
    """Elastic training: keep going with as few as this many workers when nodes are lost
    (Ray Train resizes between min_workers and num_workers). Null = a fixed num_workers."""
    resources_per_worker: dict[str, float] = {}
    """Extra Ray resources each worker needs, e.g. {"node_type_a100": 1} to pin workers to labelled nodes."""

    @model_validator(mode="after")
    def _min_within_num(self) -> ScalingSpec:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"min_workers ({self.min_workers}) must not exceed num_workers ({self.num_workers})")
        return self


class RayDataFeedSpec(Strict):
    """How the `ray_data` feed decodes (DataSpec.feed): Ray Data tasks of one shard each,
    placed by Ray on any node with free CPUs (CPU-only nodes included: no GPU is requested),
    streaming clips to the training workers' `get_dataset_shard`."""

    decode_cpus: PositiveFloat = 1.0
    """CPUs each decode task reserves (it decodes one shard, one sample after another)."""
    max_decode_tasks: PositiveInt | None = None
    """Decode tasks in flight at most; null = as many as the cluster's free CPUs allow (Ray
    Data scales them with the CPUs, so adding a CPU-only node adds decode)."""
    decode_resources: dict[str, float] = {}
    """Extra Ray resources each decode task needs, e.g. {"decode": 1} to keep decoding on nodes
    started with that resource (CPU-only nodes, away from the trainers' CPUs)."""
    shuffle_clips: int = Field(64, ge=0)
    """Decoded clips each training worker holds in Ray Data's local shuffle buffer (clips of
    one sample, and of one shard, arrive together); 0 = no shuffle. At 11 x 224 x 224 a clip
    is 1.6 MB."""


class DataSpec(Strict):
    dataset: str
    """URI of an ingested dataset (the folder holding manifest.parquet), e.g. s3://bucket/ucf101."""
    split: int | None = Field(1, ge=1, le=3)
    """Official split (1-3) whose membership selects the videos; null = every video."""
    subset: Literal["train", "test"] | None = "train"
    """Which side of the split to read; null = both."""
    clip_len_frames: int = Field(11, ge=1)
    """Frames per training window (11 -> 10 flow fields; 1 for the spatial stream)."""
    crop_size: PositiveInt = 224
    """Side of the square crop fed to the networks."""
    max_distort: int = Field(0, ge=0, le=2)
    """Multi-scale training crops: 0 = squares of side (1, .875, .75) x min(H, W) (the paper's text);
    1 = the release's `max_distort: 1`: width and height drawn independently from neighbouring
    scales, so crops may be non-square (both resized to crop_size)."""
    flip: bool = True
    """Random horizontal flips. Turn off where mirroring changes the class, as in the
    synthetic motion set (a mirrored `translate_left` video is a `translate_right` one)."""
    batch_size: PositiveInt = 16
    """Clips per optimiser micro-step on each worker."""
    loader_workers: int = Field(2, ge=0)
    """DataLoader processes per training worker (decode and augmentation)."""
    shuffle_buffer: int = Field(64, ge=0)
    """Samples held in the shuffle buffer of each loader process."""
    epoch_length_samples: PositiveInt = 1024
    """Clips per epoch on each worker; shards are re-drawn with a new seed every epoch."""
    cache_dir: str | None = None
    """Local folder to keep downloaded shards of a remote dataset; null streams every time."""
    cache_max_bytes: PositiveInt | None = None
    """Bound of `cache_dir` in bytes: least recently used shards are deleted beyond it; null =
    unbounded. Either way a disk that fills up streams the shard instead of failing."""
    views_per_decode: PositiveInt = 1
    """Training clips made from one sample read, each its own random window, crop and flip:
    k divides the shard bytes read per clip by k (more clips from fewer videos in a while)."""
    prefetch_batches: PositiveInt = 2
    """Batches each loader process prepares ahead of the training step."""
    feed: Literal["loader", "ray_data"] = "loader"
    """Where clips are decoded. `loader`: `loader_workers` DataLoader processes beside each
    training worker, on its node (its data position resumes exactly). `ray_data`: Ray Data
    decode tasks on any node of the cluster with free CPUs (`ray_data`), streamed to the
    workers, so decode grows with CPU nodes, not with GPUs; the same `make_clip`, crops and
    uint8 batches; a resume is statistically equivalent, not exact (docs/data.md). With
    `scaling.num_workers: 0` the same Ray Data stream runs in a local Ray. `loader_workers`
    and `shuffle_buffer` apply to `loader` only; a `ray_data` epoch is whole passes over the
    selected videos, at least `epoch_length_samples` clips over all workers."""
    ray_data: RayDataFeedSpec = RayDataFeedSpec()
    """Decode tasks of the `ray_data` feed (CPUs, how many, where)."""


class OptimSpec(Strict):
    name: Literal["adam", "sgd"] = "sgd"
    """Optimiser."""
    lr: PositiveFloat = 1e-3
    """Base learning rate (of the VGG16 in fine-tuning)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: float = Field(5e-4, ge=0)
    """L2 weight decay."""
    bias_lr_multiplier: PositiveFloat = 1.0
    """Learning-rate multiplier for biases (the release uses 2 in fine-tuning)."""
    milestones: list[PositiveInt] = []
    """Optimiser steps at which the learning rate is multiplied by `gamma`."""
    gamma: PositiveFloat = 0.1
    """Learning-rate decay factor at each milestone."""
    reference_batch_size: PositiveInt | None = None
    """Linear learning-rate scaling: the global batch (clips per optimiser step over all
    workers) that `lr` was tuned for. Every group's rate is multiplied by global batch / this,
    global batch = data.batch_size x loop.grad_accum_steps x workers (h2s_dist.train.schedule).
    Null = the rates as written, whatever the batch."""
    warmup_steps: int = Field(0, ge=0)
    """Steps over which the rates ramp linearly up to their (scaled) value, from 1/warmup_steps
    of it; 0 = none. Give a few hundred to a few thousand with a large reference_batch_size scale."""


class LoopSpec(Strict):
    max_steps: PositiveInt = 1000
    """Optimiser steps to train for (the step budget)."""
    grad_accum_steps: PositiveInt = 1
    """Micro-batches accumulated per optimiser step (effective batch = batch_size x this x workers)."""
    log_every_steps: PositiveInt = 10
    """Steps between logged metrics."""
    picture_every_steps: PositiveInt = 200
    """Steps between pictures (flows, warped frames) logged to MLflow."""
    checkpoint_every_steps: PositiveInt = 500
    """Steps between checkpoints (one is always written at the end)."""
    bf16: bool = False
    """bf16 autocast for forward passes (about 1.75x faster on recent CPUs, standard on GPUs)."""
    channels_last: bool = False
    """channels_last memory format (helps convolutions on GPUs)."""
    compile: bool = False
    """torch.compile the model (around DDP). The first steps compile (tens of seconds to
    minutes); worth it for long GPU runs, rarely for short CPU ones (bench/compile.py)."""
    bf16_grad_allreduce: bool = False
    """Compress gradients to bf16 for DDP's all-reduce (torch's bf16_compress_hook): half the
    bytes between workers, at bf16 precision of the averaged gradient. No effect on one worker."""
    keep_checkpoints: PositiveInt = 2
    """Checkpoints kept: the latest this many (Ray Train's CheckpointConfig(num_to_keep)), plus
    the best by `best_checkpoint_metric`. Not part of the spec hash: a resume may change it."""
    best_checkpoint_metric: str | None = None
    """Metric that picks the best checkpoint, kept apart in <output>/checkpoints/best/ (e.g.
    `val/epe` when pretraining validates); null = only the latest are kept."""
    best_checkpoint_mode: Literal["min", "max"] = "min"
    """Whether a lower or a higher `best_checkpoint_metric` is better."""
    seed: int = 0
    """Seed of weights initialisation, augmentation and data order."""


class MotionNetSpec(Strict):
    flavour: MotionNetFlavour = "paper"
    """`paper` = Table 1 widths (42.3M parameters); `small` = same topology, widths 32 ... 192
    (2.6M; sized for ~30 CPU minutes of pretraining); `tiny` = narrow (0.5M; tests, CPU quickstart)."""
    small_displacement: bool = True
    """Table 3 ablation switch: 3x3 stride-1 first layers for small motions."""
    conv_between_deconv: bool = True
    """Table 3 ablation switch: a 3x3 conv after each concat in the decoder."""
    flow_head_init_std: Annotated[float, Field(ge=0)] | Literal["msra"] | None = None
    """Std of the predict_flow heads' normal init, or `msra` (as every other layer, the
    release); null = the flavour's own (paper: msra; small and tiny: 0.001, which starts at
    about zero flow). Only a fresh network uses it."""


class UnsupLossSpec(Strict):
    """MotionNet's unsupervised loss (h2s_dist.losses has the formulas). Defaults are the
    paper's terms with the Caffe release's balance between them; `photometric`,
    `smoothness` and `occlusion` switch on terms from later unsupervised-flow work."""

    smoothness_weight: float = Field(1.0, ge=0)
    """Weight of the flow smoothness term (the paper's lambda2; the level's flow scale is in beta).
    0 switches the term off."""
    ssim_weight_scale: float = Field(1.0, ge=0)
    """Multiplier of the per-level SSIM weights (0.16 ... 0.01; x0.1 again in fine-tuning).
    0 switches the term off."""
    pixel_weight: float = Field(1.0, ge=0)
    """Weight of the photometric term at every level."""
    pixel_alpha: PositiveFloat = 0.4
    """Charbonnier exponent of the photometric term (photometric `charbonnier`)."""
    smoothness_alpha: PositiveFloat = 0.3
    """Charbonnier exponent of the smoothness term."""
    use_lrn: bool = False
    """Local response normalisation of the loss images, as in the Caffe release."""
    normalisation: Literal["release", "mean"] = "release"
    """`release`: each term normalised as the Caffe release's layers do (photometric and
    smoothness means / N, SSIM a per-sample sum over 3(T-1) channels, T = reference_num_frames,
    and every window), which makes SSIM a large share of the loss. `mean`: plain means weighted
    by the equivalent per-term weights (pixel 1, smoothness 4/3, SSIM ladder x 3(T-1) x windows
    x N): the same balance, N times the value."""
    reference_batch_size: PositiveInt | None = None
    """N in the normalisation: the batch whose release loss ours equals, whatever our batch.
    Null = the release's batch for the stage (16 in pretraining, 8 in fine-tuning)."""
    reference_num_frames: int | None = Field(None, ge=2)
    """T in the normalisation: SSIM's per-sample sum counts the 3(T-1) channels of a clip of T
    frames, whatever our clip length. Null = the release's 11, so a 2-frame MotionNet weighs
    SSIM per pair as the 11-frame release does; give the clip's own length for the release's
    layers run as they are on it (SSIM 10x lighter at 2 frames)."""
    photometric: Literal["charbonnier", "census"] = "charbonnier"
    """`charbonnier` of RGB differences (the paper) or `census`: UFlow's soft 7x7 census
    distance on grayscale with (|d| + 0.01)^0.4: blind to a brightness offset, nearly to a gain."""
    smoothness: Literal["first_order", "edge_aware_first", "edge_aware_second"] = "first_order"
    """`first_order` differences of the flow (the paper); `edge_aware_first` or
    `edge_aware_second` (UFlow): first or second differences, each weighted by
    exp(-edge_weight x mean |image gradient|) so the flow may change at image edges.
    Second order leaves any linear (affine) flow unpenalised."""
    edge_weight: float = Field(150.0, ge=0)
    """UFlow's edge constant of the edge-aware smoothness (frames in [0, 1]); 0 = plain."""
    proxy_weight: float = Field(0.0, ge=0)
    """Proxy guidance (paper Table 4): weight of the end-point error (px, mean over the five
    levels) of MotionNet's flow against cached TV-L1 flow, read alongside the frames from the
    pretrain stage's `proxy_flows`. 0 = off: the paper's unsupervised MotionNet. Pretraining only."""
    occlusion: Literal["none", "forward_backward"] = "none"
    """`none` (the paper) or `forward_backward` (UnFlow): MotionNet also runs on the
    time-reversed clip, and pixels whose forward and backward flows disagree leave the
    photometric term and down-weight their SSIM windows. About one more forward pass per step."""

class SpecProblems(ValueError):
    """What a network or loss refuses in a spec, as (field path relative to the spec, message).

    Raised by a spec's validator; the job loader prefixes each path with the stage's own
    (`stages[1].data.crop_size: ...`), so the message names the field to change."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


def raise_problems(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise SpecProblems(problems)
