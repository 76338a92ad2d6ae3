"""TrainConfig: every knob of a training run, in sections, loaded from YAML or JSON and validated.

Unknown keys are errors that name the key, its section and the known keys, so a typo never silently
falls back to a default. `python train_moca.py --config FILE` reads this; docs/training.md lists it.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

TRAINABLE = ("adapter", "lora", "full")
PRECISIONS = ("no", "bf16")          # fp16 would need a GradScaler; bf16 does not
STRATEGIES = ("ddp", "fsdp")
# The one table of dtype names the trainer accepts (model.*_dtype, export.dtype, `train_moca.py export --dtype`).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class ModelSection:
    preset: str = "tiny"                    # MoCAConfig preset: tiny | toy | small | wan2.1-1.3b | wan2.1-14b |
    #                                         wan2.2-a14b
    variant: str | None = None              # None: the preset's model (lean MoCA at the real presets); or a
    #                                         moca_model.variants name: moca (MoCA as designed), single_xattn, ...
    overrides: dict = field(default_factory=dict)   # MoCAConfig fields to change, e.g. {num_local_tokens: 16}
    backbone: str | None = None             # Wan 2.1 T2V .safetensors; None = random init (tests, benchmarks)
    adapter_init: str | None = None         # start from this adapter file instead of a fresh adapter
    backbone_dtype: str = "float32"         # storage dtype of the frozen backbone (bfloat16 halves its memory)
    param_dtype: str = "float32"            # dtype of the trainable parameters (float64 only for exactness tests)


@dataclass
class DataSection:
    shards: list = field(default_factory=list)   # shard files, folders of shards or glob patterns
    batch_size: int = 1                     # micro-batch per process
    grad_accum: int = 1                     # micro-batches per optimiser step (global batch = B * accum * world)
    text_len: int | None = None             # pad text states to this many tokens (None = 512, as Wan does)
    reference: str = "random"               # several references per sample: a "random" one per step, or the "first"
    automatic_binding: float = 0.0          # share of several-people clips trained with the left-to-right strips the
    #                                         automatic binding gives (regions.left_to_right_regions) instead of
    #                                         their masks, so that binding without masks works at inference
    shuffle: bool = True
    num_workers: int = 2                    # background processes reading micro-batches ahead (0 = read in the loop)
    prefetch: int = 2                       # micro-batches each worker keeps ready


@dataclass
class LVPLSection:
    weight: float = 0.1                     # lambda; 0 disables LVPL
    max_sigma: float = 0.5                  # only where sigma <= this (t <= 500 of 1000: low noise)
    face_weight: float = 1.0                # weight inside the face mask
    background_weight: float = 0.25         # weight outside it
    temporal_weight: float = 0.5            # weight of the frame-difference term
    extractor: str = "wan_vae_decoder"      # "wan_vae_decoder" | "identity" | "module.path:factory"
    vae: str | None = None                  # wan_2.1_vae.safetensors for the decoder stages (None = random init)
    vae_dim: int = 96                       # base width of a random extractor (vae=None); a vae file's own width wins
    stages: list = field(default_factory=lambda: ["conv1", "middle", "up0"])
    stage_weights: list | None = None       # per stage (default: equal, summing to 1)
    checkpoint: bool = True                 # recompute extractor activations in backward (saves memory)


@dataclass
class ObjectiveSection:
    shift: float = 5.0                      # timestep shift for training-time sigma sampling
    timestep_sampling: str = "uniform"      # "uniform" or "logit_normal" u, then shifted
    sigma_range: list = field(default_factory=lambda: [0.0, 1.0])   # train only here (one Wan 2.2 A14B expert)
    text_dropout: float = 0.1               # probability of the empty prompt (enables text CFG)
    id_dropout: float = 0.1                 # probability of no identity (enables identity CFG)
    empty_text: str | None = None           # safetensors with key "text" [L, 4096] (the encoded ""); None = zeros
    lvpl: LVPLSection = field(default_factory=LVPLSection)


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-2
    eps: float = 1e-8
    warmup_steps: int = 100
    max_steps: int = 1000
    min_lr_ratio: float = 0.0               # cosine floor as a fraction of lr
    grad_clip: float = 1.0                  # max global grad norm (0 = off)
    backbone_lr_scale: float = 1.0          # trainable full / lora: the backbone's (or LoRA's) LR = lr * this


@dataclass
class TrainSection:
    trainable: str = "adapter"              # adapter | lora | full
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: list = field(default_factory=lambda: ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                                                         "cross_attn.q", "cross_attn.k", "cross_attn.v",
                                                         "cross_attn.o", "ffn.0", "ffn.2"])
    mixed_precision: str = "no"             # no | bf16 (autocast; master weights stay param_dtype)
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0                  # 0 = no EMA; e.g. 0.999 (with warm-up: min(decay, (1+n)/(10+n)))
    seed: int = 0
    strategy: str = "ddp"                   # ddp | fsdp (FSDP2 fully_shard; for the 14B backbone)
    grad_sync: str = "step"                 # step: reduce gradients once per optimiser step; micro_batch: after
    #                                         every micro-batch (FSDP2 then never holds unsharded gradients)
    deterministic: bool = True              # strict deterministic kernels (exact resume; docs/training.md §8)


@dataclass
class CheckpointSection:
    every: int = 500                        # optimiser steps between checkpoints (0 = only the last)
    keep_last: int = 3
    strict_resume: bool = True              # refuse to resume with another data stream (seed, shards, text_len)


@dataclass
class LoggingSection:
    every: int = 10                         # steps between TensorBoard scalars / log lines
    tensorboard: bool = True                # needs the `tensorboard` package; falls back to a JSONL log
    progress: bool = True                   # tqdm bar with ETA (rank 0)


@dataclass
class ValidationSection:
    every: int = 0                          # steps between validations (0 = off)
    video: bool = True                      # sample the fixed validation sample's video (else losses only)
    sample: int = 0                         # dataset index of the fixed validation sample
    eval_samples: int = 4                   # val/eval_loss: the first N samples, batched like training
    identity_gain: bool = True              # val/identity_gain: eval loss with shuffled references - matched
    steps: int = 20
    text_cfg: float = 5.0
    id_cfg: float = 1.0
    shift: float = 8.0
    seed: int = 42
    fps: int = 16
    face_models: str | None = None          # insightface models root: adds the likeness score
    face_pack: str = "antelopev2"


@dataclass
class ExportSection:
    name: str = "moca_adapter.safetensors"  # written into out_dir/ at the end
    use_ema: bool = True                    # export EMA weights when EMA is on
    dtype: str = "bfloat16"                 # half the size of fp32 (the 14B adapter: 3.3 GiB); ComfyUI casts anyway


@dataclass
class TrainConfig:
    out_dir: str = "runs/moca"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    export: ExportSection = field(default_factory=ExportSection)

    def __post_init__(self):
        problems = []
        if self.train.trainable not in TRAINABLE:
            problems.append(f"train.trainable={self.train.trainable!r} (choose {TRAINABLE})")
        if not self.optim.backbone_lr_scale > 0:
            problems.append(f"optim.backbone_lr_scale={self.optim.backbone_lr_scale} must be > 0 (to keep the backbone "
                            "fixed, set train.trainable: adapter)")
        if self.train.mixed_precision not in PRECISIONS:
            problems.append(f"train.mixed_precision={self.train.mixed_precision!r} (choose {PRECISIONS})")
        if self.train.grad_sync not in ("step", "micro_batch"):
            problems.append(f"train.grad_sync={self.train.grad_sync!r} (choose step, micro_batch)")
        if self.train.strategy not in STRATEGIES:
            problems.append(f"train.strategy={self.train.strategy!r} (choose {STRATEGIES})")
        for name in ("backbone_dtype", "param_dtype"):
            if getattr(self.model, name) not in DTYPES:
                problems.append(f"model.{name}={getattr(self.model, name)!r} (choose {tuple(DTYPES)})")
        if self.export.dtype not in DTYPES:
            problems.append(f"export.dtype={self.export.dtype!r} (choose {tuple(DTYPES)})")
        if self.data.batch_size < 1 or self.data.grad_accum < 1:
            problems.append("data.batch_size and data.grad_accum must be >= 1")
        if self.data.num_workers < 0 or self.data.prefetch < 1:
            problems.append("data.num_workers must be >= 0 and data.prefetch >= 1")
        if not 0.0 <= self.data.automatic_binding <= 1.0:
            problems.append(f"data.automatic_binding={self.data.automatic_binding} (a share: 0 to 1)")
        if self.data.reference not in ("random", "first"):
            problems.append(f"data.reference={self.data.reference!r} (choose random, first)")
        if self.model.backbone_dtype in ("bfloat16", "float16") and self.train.mixed_precision == "no" \
                and self.train.trainable != "full":
            problems.append(f"model.backbone_dtype={self.model.backbone_dtype} needs train.mixed_precision: bf16 "
                            "(the fp32 adapter runs on the backbone's activations under autocast)")
        if self.objective.timestep_sampling not in ("uniform", "logit_normal"):
            problems.append(f"objective.timestep_sampling={self.objective.timestep_sampling!r} "
                            "(choose uniform, logit_normal)")
        lo_hi = self.objective.sigma_range
        if len(lo_hi) != 2 or not 0.0 <= float(lo_hi[0]) < float(lo_hi[1]) <= 1.0:
            problems.append(f"objective.sigma_range={lo_hi!r}: need [lo, hi] with 0 <= lo < hi <= 1 (Wan 2.2 A14B: "
                            "[0.875, 1.0] for the high-noise expert, [0.0, 0.875] for the low-noise one)")
        for name in ("text_dropout", "id_dropout"):
            if not 0.0 <= getattr(self.objective, name) < 1.0:
                problems.append(f"objective.{name} must be in [0, 1)")
        if self.optim.max_steps < 1:
            problems.append("optim.max_steps must be >= 1")
        lv = self.objective.lvpl
        if lv.stage_weights is not None and len(lv.stage_weights) != len(lv.stages):
            problems.append(f"objective.lvpl.stage_weights has {len(lv.stage_weights)} entries for "
                            f"{len(lv.stages)} stages")
        from ..variants import ADAPTER_VARIANTS
        if self.model.variant is not None and self.model.variant not in ADAPTER_VARIANTS:
            problems.append(f"model.variant={self.model.variant!r} (choose {ADAPTER_VARIANTS}, or leave it out "
                            "for the preset's model; no_identity has no adapter to train)")
        if problems:
            raise ValueError("Invalid training config: " + "; ".join(problems))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _build(cls, d or {}, "")

    @classmethod
    def load(cls, path) -> "TrainConfig":
        """Read a .yaml/.yml (needs PyYAML) or .json config file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Training config not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as e:
                raise ImportError(f"{path.name} is YAML, which needs PyYAML: pip install pyyaml "
                                  "(or pip install -r requirements-train.txt), or use a .json config") from e
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level of a training config must be a mapping")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def with_overrides(self, pairs: list[str]) -> "TrainConfig":
        """Apply `section.key=value` strings (value parsed as JSON, else kept as a string)."""
        d = self.to_dict()
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"Override {pair!r} must look like section.key=value")
            key, raw = pair.split("=", 1)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node = d
            parts = key.split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ValueError(f"Override {key!r}: {p!r} is not a config section")
                node = node[p]
            node[parts[-1]] = value
        return TrainConfig.from_dict(d)


def _build(cls, d: dict, where: str):
    """Build dataclass `cls` from a dict, recursively, rejecting unknown keys with a clear message."""
    if not isinstance(d, dict):
        raise TypeError(f"config section {where or 'top level'!r} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section {where or 'top level'!r}; "
                         f"known keys: {names}")
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{where}.{name}".lstrip("."))
        else:
            kwargs[name] = value
    return cls(**kwargs)
