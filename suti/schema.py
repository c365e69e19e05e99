"""One typed schema per config group. The values (the defaults included) live in the YAML
under `conf/` only: a field here has no default unless a backbone, store or tracking variant
leaves it out (then None). `suti.config.compose` merges the composed YAML into these once, so
a missing key, an unknown key or a value of the wrong type is one ConfigError before any work,
and the code reads `cfg.expert.clusters`, never `cfg.expert.get("clusters", 40)`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING


@dataclass
class WorldSchema:
    seed: int = MISSING
    resolution: int = MISSING
    page_subjects: int = MISSING
    heldout_subjects: int = MISSING
    val_subjects: int = MISSING
    demos_per_heldout: int = MISSING
    mixed_pages: int = MISSING
    duplicate_pages: int = MISSING
    small_pages: int = MISSING
    p_small_subject_page: float = MISSING
    pretrain_subjects: int = MISSING
    pretrain_images: int = MISSING


@dataclass
class UNetSchema:
    block_out_channels: List[int] = MISSING
    layers_per_block: int = MISSING
    down_block_types: List[str] = MISSING
    up_block_types: List[str] = MISSING
    attention_head_dim: int = MISSING
    norm_num_groups: int = MISSING


@dataclass
class BackboneSchema:
    name: str = MISSING
    num_train_timesteps: int = MISSING
    prediction_type: str = MISSING
    # the tiny pixel backbone's (trained here)
    clip_config: Optional[str] = None
    unet: Optional[UNetSchema] = None
    beta_schedule: Optional[str] = None
    # a local diffusers Stable Diffusion folder (`???` until given; tiny: null)
    path: Optional[str] = MISSING
    bundle: bool = MISSING
    sample_precision: str = MISSING


@dataclass
class ClipTrainSchema:
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    caption_drop: float = MISSING
    precision: str = MISSING


@dataclass
class IdentityTrainSchema:
    steps: int = MISSING
    subjects_per_batch: int = MISSING
    views_per_subject: int = MISSING
    lr: float = MISSING
    temperature: float = MISSING
    embed_dim: int = MISSING
    hard_batches: float = MISSING
    width: int = MISSING
    precision: str = MISSING


@dataclass
class RaterTrainSchema:
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    shift: int = MISSING
    width: int = MISSING
    precision: str = MISSING


@dataclass
class BaseTrainSchema:
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    min_snr_gamma: float = MISSING
    caption_drop: float = MISSING
    uncond_prob: float = MISSING
    ema_decay: float = MISSING
    precision: str = MISSING


@dataclass
class FoundationEvalSchema:
    heldout_renders: int = MISSING
    base_prompts: int = MISSING
    guidance: float = MISSING
    sample_steps: int = MISSING
    scheduler: str = MISSING


@dataclass
class FoundationSchema:
    clip: ClipTrainSchema = MISSING
    identity: IdentityTrainSchema = MISSING
    rater: RaterTrainSchema = MISSING
    base: BaseTrainSchema = MISSING
    eval: FoundationEvalSchema = MISSING
    processes: int = MISSING


@dataclass
class MineSchema:
    band: Optional[List[float]] = MISSING
    min_images: int = MISSING
    shard_size: int = MISSING
    null_pairs: int = MISSING
    null_clusters: int = MISSING
    null_quantile: float = MISSING
    dup_images: int = MISSING
    dup_noise: int = MISSING
    dup_quantile: float = MISSING
    dup_margin: float = MISSING
    merger: str = MISSING
    prompt_writer: str = MISSING
    llm_complete: Optional[str] = MISSING
    batch_size: int = MISSING
    threads: int = MISSING


@dataclass
class ExpertSchema:
    method: str = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    optimizer: str = MISSING
    lora_rank: int = MISSING
    guidance: float = MISSING
    prompts_per_cluster: int = MISSING
    samples_per_prompt: int = MISSING
    sample_steps: int = MISSING
    scheduler: str = MISSING
    keep: bool = MISSING
    runner: str = MISSING
    shards: int = MISSING
    deployment: str = MISSING
    clusters: Optional[int] = MISSING
    check: bool = MISSING
    check_clusters: int = MISSING
    compare_clusters: int = MISSING


@dataclass
class FilterSchema:
    lambda_: float = MISSING
    sweep: List[Optional[float]] = MISSING


@dataclass
class ApprenticeSchema:
    demos: int = MISSING
    demos_min: Optional[int] = MISSING
    targets_per_demo_set: int = MISSING
    demo_sites: str = MISSING
    heads: int = MISSING
    demo_timestep: int = MISSING
    demo_pool: int = MISSING
    gate_init: float = MISSING
    out_init: str = MISSING
    source: str = MISSING
    init_from: Optional[str] = MISSING
    demo_guidance: Optional[float] = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    train_base: bool = MISSING
    base_lr: float = MISSING
    demo_grad: bool = MISSING
    weight_decay: float = MISSING
    warmup_frac: float = MISSING
    grad_clip: float = MISSING
    text_drop: float = MISSING
    demo_drop: float = MISSING
    demo_text_drop: float = MISSING
    guidance: float = MISSING
    sample_steps: int = MISSING
    scheduler: str = MISSING
    num_images: int = MISSING
    checkpoint_every: int = MISSING
    log_every: int = MISSING
    grid_rows: int = MISSING
    val_check_subjects: int = MISSING
    val_check_prompts: int = MISSING
    run_name: Optional[str] = MISSING
    register: bool = MISSING
    model_name: str = MISSING
    alias: str = MISSING
    model: str = MISSING
    accelerator: str = MISSING
    strategy: str = MISSING
    devices: int = MISSING
    precision: str = MISSING
    dreamsuti_steps: int = MISSING
    dreamsuti_lr: float = MISSING
    dreamsuti_batch_size: int = MISSING
    dreamsuti_train_base: bool = MISSING


@dataclass
class EvalSchema:
    images_per_prompt: int = MISSING
    limit: Optional[int] = MISSING
    methods: List[str] = MISSING
    model: Optional[str] = MISSING
    guidance: float = MISSING
    demo_guidance: Optional[float] = MISSING
    scheduler: str = MISSING
    sample_steps: int = MISSING
    kshot_prompts: int = MISSING
    dreambench_dir: Optional[str] = MISSING
    split: str = MISSING
    curves: bool = MISSING


@dataclass
class StorageSchema:
    uri: str = MISSING
    endpoint_url: Optional[str] = None


@dataclass
class TrackingSchema:
    uri: str = MISSING
    experiment: str = MISSING
    artifact_location: Optional[str] = MISSING


@dataclass
class SweepSchema:
    steps: Optional[int] = MISSING
    eval_limit: Optional[int] = MISSING
    eval_images_per_prompt: int = MISSING


@dataclass
class PipelineSchema:
    final_lambda: Any = MISSING  # best | config | none | a number (checked by validate)
    eval_limit: Optional[int] = MISSING


@dataclass
class ReimagenSchema:
    model_name: str = MISSING
    model: str = MISSING


@dataclass
class PromoteSchema:
    margin: float = MISSING


@dataclass
class SutiSchema:
    workdir: str = MISSING
    reports_dir: str = MISSING
    seed: int = MISSING
    num_workers: int = MISSING
    progress: bool = MISSING
    torch_threads: Optional[int] = MISSING
    profile_name: str = MISSING
    world: WorldSchema = MISSING
    backbone: BackboneSchema = MISSING
    foundation: FoundationSchema = MISSING
    mine: MineSchema = MISSING
    expert: ExpertSchema = MISSING
    filter: FilterSchema = MISSING
    apprentice: ApprenticeSchema = MISSING
    eval: EvalSchema = MISSING
    storage: StorageSchema = MISSING
    tracking: TrackingSchema = MISSING
    sweep: SweepSchema = MISSING
    pipeline: PipelineSchema = MISSING
    reimagen: ReimagenSchema = MISSING
    promote: PromoteSchema = MISSING
