"""Specs of the driver stages, which run in the job's own process and bring their own
parallelism: `ingest` (decode processes), `tvl1_flows` (Ray tasks) and `tune` (Ray Tune
trials, each a training stage with its own scaling). None has a `scaling` field. Pure pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from h2s_dist import tune_spaces
from h2s_dist.data.ingest_defaults import DEFAULT_SEGMENT_OVERLAP_FRAMES
from h2s_dist.specs.common import MotionNetSpec, PositiveFloat, PositiveInt, Strict
from h2s_dist.specs.training import FinetuneSpec, PretrainSpec

# The stage kinds a tune stage can search over, and their specs.
TRIAL_SPECS = {"pretrain_motionnet": PretrainSpec, "finetune_stacked": FinetuneSpec}


class SyntheticSourceSpec(Strict):
    """The synthetic motion dataset (h2s_dist.data.synthetic), rendered in memory."""

    num_videos: PositiveInt = 64
    """Number of videos; video i has label i % 9 (of the `classes` set)."""
    num_frames: int = Field(32, ge=2)
    """Frames per video."""
    height: PositiveInt = 128
    """Frame height in pixels (even)."""
    width: PositiveInt = 160
    """Frame width in pixels (even)."""
    seed: int = 0
    """Base seed of the videos."""
    shared_scenes: bool = False
    """True: the videos of a round (one per class) that may look alike film the same scene
    (all 9 for `motion`; the 3 of each scene type for `scene_x_motion`), so appearance
    carries no motion even for a network that memorises its training videos."""
    classes: Literal["motion", "scene_x_motion"] = "motion"
    """motion: 9 camera motions on look-alike scenes (only the temporal stream can tell them);
    scene_x_motion: 3 scene types (desert, forest, ocean) x 3 motions (translate_left,
    rotate_ccw, zoom_in), named `<scene>_<motion>`: a frame tells the scene, the flow the
    motion, only the fused streams tell the class."""


class IngestSpec(Strict):
    """Encode a corpus into the dataset layout every training stage reads."""

    kind: Literal["ingest"] = "ingest"
    """Stage kind."""
    source: Literal["ucf101", "hmdb51", "videos", "synthetic"]
    """ucf101 / hmdb51 (with split lists), videos (any files, unlabeled) or synthetic."""
    root: str | None = None
    """ucf101/hmdb51: the dataset's root folder; videos: a folder, a glob or a text file of paths."""
    splits: str | None = None
    """ucf101/hmdb51: folder of the official split lists; null = no splits."""
    synthetic: SyntheticSourceSpec = SyntheticSourceSpec()
    """Options of the synthetic source."""
    output: str | None = None
    """Dataset URI to write (path, file:// or s3://); null = this stage's output folder. A job
    that may span nodes needs s3:// here (or a shared filesystem and `workspace_shared: true`)."""
    encoding: Literal["h264", "jpeg", "mp4"] = "h264"
    """h264: H.264 with a keyframe every 8 frames and a frame index (below the source's bytes,
    a window decodes from the keyframe before it); jpeg: JPEG frame stack (several times the
    source's bytes); mp4: H.264 decoded from frame 0 (smallest, a window's cost grows with the video)."""
    size: tuple[PositiveInt, PositiveInt] | None = (340, 256)
    """(width, height) every frame is resized to; null keeps the source size. Synthetic videos
    keep their size unless `size` is given."""
    min_frames: PositiveInt = 11
    """Videos with fewer frames are skipped."""
    quality: int | None = None
    """JPEG quality or x264 CRF; null = the codec's default."""
    shard_size_mb: float = Field(64.0, gt=0)
    """Target shard size in MiB."""
    segment_frames: PositiveInt | Literal["whole"] | None = None
    """A longer video becomes several samples of this many frames (the manifest names each
    one's source video and start frame); "whole" keeps videos whole; null = 300 for `videos`,
    whole for ucf101, hmdb51 and synthetic (evaluation scores whole videos; a test video of
    any split is never cut)."""
    segment_overlap_frames: int = Field(DEFAULT_SEGMENT_OVERLAP_FRAMES, ge=0)
    """Frames consecutive segments of a video share, so a training window of up to this + 1
    frames is never lost at a cut (default 10: the paper's 11-frame clips)."""
    num_tasks: int | None = Field(None, ge=0)
    """Shards in flight as Ray tasks of one CPU each, over the cluster's CPUs; null = twice
    the cluster's CPUs; 0 = one after another in this process, without Ray."""

    @model_validator(mode="before")
    @classmethod
    def _synthetic_keeps_its_size(cls, data: Any) -> Any:
        # A before-validator: assigning in an after-validator would re-validate (validate_assignment).
        if isinstance(data, dict) and data.get("source") == "synthetic" and "size" not in data:
            data = {**data, "size": None}
        return data

    @model_validator(mode="after")
    def _check_source(self) -> IngestSpec:
        if self.source != "synthetic" and not self.root:
            raise ValueError(f"source {self.source!r} needs `root` (the folder, glob or list of videos)")
        if isinstance(self.segment_frames, int) and self.segment_frames < self.min_frames:
            raise ValueError(f"segment_frames {self.segment_frames} < min_frames {self.min_frames}: a segment must hold a clip")
        if isinstance(self.segment_frames, int) and self.segment_overlap_frames >= self.segment_frames:
            raise ValueError(f"segment_overlap_frames {self.segment_overlap_frames} must be < segment_frames "
                             f"{self.segment_frames}")
        return self


class TVL1Spec(Strict):
    """Dual TV-L1 settings (h2s_dist.baseline.tvl1.TVL1Params); defaults are OpenCV's."""

    tau: PositiveFloat = 0.25
    """Time step of the numerical scheme."""
    lambda_: PositiveFloat = 0.15
    """Weight of the data term (smaller = smoother flow)."""
    theta: PositiveFloat = 0.3
    """Coupling of the two sub-problems."""
    num_scales: PositiveInt = 5
    """Levels of the image pyramid."""
    scale_step: float = Field(0.8, gt=0, lt=1)
    """Size ratio between pyramid levels."""
    num_warps: PositiveInt = 5
    """Warpings per pyramid level."""
    epsilon: PositiveFloat = 0.01
    """Stopping threshold of the inner iterations."""
    inner_iterations: PositiveInt = 30
    """Inner iterations per warping."""
    outer_iterations: PositiveInt = 10
    """Outer iterations per warping."""
    median_filtering: PositiveInt = 5
    """Median filter size after each warping (1 = off)."""

    def params(self):
        """These settings as h2s_dist.baseline.tvl1.TVL1Params (imported here: specs stay light)."""
        from h2s_dist.baseline.tvl1 import TVL1Params

        return TVL1Params(**self.model_dump())


class TVL1FlowsSpec(Strict):
    """Precompute the flow of a frame dataset (a two-stage pipeline's first stage): TV-L1 (the
    baseline), or a trained MotionNet (paper Table 2, "MotionNet + temporal stream, flows cached")."""

    kind: Literal["tvl1_flows"] = "tvl1_flows"
    """Stage kind."""
    dataset: str
    """URI of an ingested frame dataset (the folder holding manifest.parquet)."""
    split: int | None = Field(1, ge=1, le=3)
    """Split whose `subset` is computed; ignored when subset is null."""
    subset: Literal["train", "test"] | None = None
    """Side of `split` to compute; null = every video of the dataset."""
    size: tuple[PositiveInt, PositiveInt] | None = None
    """(width, height) frames are resized to before TV-L1; null keeps the dataset's size (340x256 for the paper)."""
    bound: PositiveFloat = 20.0
    """Flow is clipped to [-bound, bound] px and stored as 8 bits; 20 matches FlowNormalize."""
    quality: int = Field(95, ge=1, le=95)  # flow_shards.DEFAULT_FLOW_QUALITY
    """JPEG quality of the stored u and v images."""
    videos_per_shard: PositiveInt = 32
    """Videos per flow shard and per task (a UCF101 video at 340x256 is about 1-2 MB of flow)."""
    num_tasks: int = Field(4, ge=0)
    """Ray tasks in flight (one CPU each); 0 computes in this process without Ray."""
    tvl1: TVL1Spec = TVL1Spec()
    """TV-L1 solver settings."""
    source: Literal["tvl1", "motionnet"] = "tvl1"
    """Flow method: `tvl1` (OpenCV's Dual TV-L1) or `motionnet` (a trained MotionNet,
    `motionnet_weights`); either is quantised with `bound` into the same flow shards."""
    motionnet: MotionNetSpec = MotionNetSpec()
    """source motionnet: the network inside `motionnet_weights`."""
    motionnet_weights: str | None = None
    """source motionnet: URI of its weights (a pretrain stage's `motionnet`)."""
    motionnet_frames: int = Field(2, ge=2)
    """source motionnet: frames per network input (the pretrain stage's data.clip_len_frames; the
    paper's row uses 2). A video's flows come from consecutive windows of this many frames."""
    motionnet_batch_windows: PositiveInt = 8
    """source motionnet: windows per forward pass."""
    gpus_per_task: float = Field(0.0, ge=0)
    """source motionnet: GPUs each Ray task reserves (the network runs on CUDA when > 0)."""

    @model_validator(mode="after")
    def _source_has_its_settings(self) -> TVL1FlowsSpec:
        if self.source == "motionnet" and not self.motionnet_weights:
            raise ValueError("source motionnet needs motionnet_weights (e.g. ${pretrain.motionnet})")
        if self.source == "tvl1" and self.motionnet_weights:
            raise ValueError("motionnet_weights is read only with source: motionnet")
        return self


TrialSpec = Annotated[
    Union[Annotated[PretrainSpec, Tag("pretrain_motionnet")], Annotated[FinetuneSpec, Tag("finetune_stacked")]],  # noqa: UP007
    Discriminator(lambda v: v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)),
]


class AshaSpec(Strict):
    """Asynchronous successive halving: at each rung keep the best 1/reduction_factor."""

    grace_period_steps: PositiveInt = 10
    """Steps every trial runs before it may be stopped (the first rung)."""
    reduction_factor: float = Field(2.0, gt=1)
    """Rungs at grace x factor^k steps; only the top 1/factor of trials pass each rung."""


class TuneSpec(Strict):
    """A hyperparameter search; each trial is a full training stage of kind `trial.kind`."""

    kind: Literal["tune"] = "tune"
    """Stage kind."""
    trial: TrialSpec
    """The stage every trial runs (a pretrain_motionnet or finetune_stacked spec, with `kind`)."""
    search_space: str | dict[str, tune_spaces.Distribution]
    """Path or URI of a tune/*.yaml, or inline `{dotted.path: {loguniform: [lo, hi]}}`."""
    metric: str = "loss/total"
    """Metric the search optimises: any metric the trial logs. `val/epe` (flow error on
    ground truth, pretraining with `validation`) compares trials with different loss weights
    or terms; `loss/total` only trials that share the loss (learning rates, say)."""
    mode: Literal["min", "max"] = "min"
    """Minimise or maximise `metric`."""
    asha: AshaSpec | None = AshaSpec()
    """Early stopping of poor trials; null = every trial runs its whole step budget."""
    num_samples: PositiveInt = 8
    """Trials to sample (a `grid` distribution multiplies this by the grid's size)."""
    max_concurrent_trials: PositiveInt = 2
    """Trials running at once."""
    cpus_per_trial: PositiveFloat = 1.0
    """CPUs of each Tune function (a multi-worker trial's workers reserve trial.scaling's on top)."""
    gpus_per_trial: float = Field(0.0, ge=0)
    """GPUs of each Tune function: > 0 exactly when the trial trains in that process on a GPU
    (trial.scaling.num_workers 0 and use_gpu; a fraction shares a GPU). A multi-worker trial's
    workers reserve their own GPUs, so it keeps 0 (checked at validation)."""
    max_failures_per_trial: int = Field(0, ge=0)
    """How often a crashed trial restarts from its last checkpoint."""
    seed: int | None = 0
    """Seed of the sampled configs (null = new configs every run)."""

    @model_validator(mode="after")
    def _consistent(self):
        if self.metric.startswith("val/") and getattr(self.trial, "validation", None) is None:
            raise ValueError(f"metric {self.metric!r} needs the trial to validate: give trial.validation "
                             "(pretrain_motionnet logs val/epe) or rank by a logged loss")
        if isinstance(self.search_space, dict):
            space = tune_spaces.parse_search_space(self.search_space, source="search_space")
            tune_spaces.check_against_trial(space, TRIAL_SPECS[self.trial.kind], self.trial_data(), "search_space")
        self._gpus_match_the_trial()
        if self.asha is not None and self.asha.grace_period_steps > self.trial.loop.max_steps:
            raise ValueError(
                f"asha.grace_period_steps ({self.asha.grace_period_steps}) exceeds trial.loop.max_steps "
                f"({self.trial.loop.max_steps}); lower it or train trials longer"
            )
        return self

    def _gpus_match_the_trial(self) -> None:
        """GPUs go where the trial trains: its own process (num_workers 0, gpus_per_trial) or
        its Ray Train workers (one GPU each with use_gpu, reserved by the workers)."""
        scaling = self.trial.scaling
        if scaling.num_workers == 0 and scaling.use_gpu and self.gpus_per_trial == 0:
            raise ValueError("trial.scaling.use_gpu trains in the trial's own process (num_workers 0), which "
                             "gpus_per_trial: 0 gives no GPU; set gpus_per_trial (1, or 0.5 for two trials per GPU)")
        if scaling.num_workers == 0 and not scaling.use_gpu and self.gpus_per_trial > 0:
            raise ValueError(f"gpus_per_trial: {self.gpus_per_trial} reserves GPUs the trial never uses "
                             "(trial.scaling.use_gpu is false); set use_gpu: true or gpus_per_trial: 0")
        if scaling.num_workers > 0 and self.gpus_per_trial > 0:
            raise ValueError(f"gpus_per_trial: {self.gpus_per_trial} would reserve GPUs for the process that "
                             f"drives a {scaling.num_workers}-worker trial, which does not train (its workers "
                             "reserve one GPU each with trial.scaling.use_gpu); set gpus_per_trial: 0")

    def trial_data(self) -> dict[str, Any]:
        return self.trial.model_dump(mode="json")

    def space(self) -> tune_spaces.SearchSpaceFile:
        """The validated search space, read from its file when given as a path or URI."""
        if isinstance(self.search_space, str):
            space, source = tune_spaces.read_search_space(self.search_space), self.search_space
        else:
            space, source = tune_spaces.parse_search_space(self.search_space), "search_space"
        tune_spaces.check_against_trial(space, TRIAL_SPECS[self.trial.kind], self.trial_data(), source)
        return space
