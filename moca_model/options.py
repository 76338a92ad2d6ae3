"""MoCAOptions: the inference knobs (the ComfyUI "temporal pooling" and "expert mixing" nodes set these)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import MoCAConfig


@dataclass
class MoCAOptions:
    strength: float = 1.0          # identity strength: multiplies every MoCA residual
    scale_enabled: dict = field(default_factory=dict)   # {scale: bool}; missing = enabled
    scale_weights: dict = field(default_factory=dict)   # {scale: float}; missing = 1.0
    temperature: float = 1.0       # router softmax temperature (>0); higher = flatter mixing
    top_k: int = 0                 # keep the k most likely experts per token (0 = dense)
    expert_gains: tuple = ()       # per-expert output gains, in config.scales order (empty = all 1)

    @classmethod
    def coerce(cls, value) -> "MoCAOptions":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"moca_options: unknown keys {unknown}; known keys are {sorted(known)}")
            return cls(**value)
        raise TypeError(f"moca_options must be a MoCAOptions, a dict or None, not {type(value).__name__}")

    def resolve(self, config: MoCAConfig) -> "ResolvedOptions":
        """Check the knobs against a config and turn them into per-expert numbers."""
        scales = config.scales
        names = {s: ("T" if s == 0 else str(s)) for s in scales}

        def key_to_scale(k):
            k = str(k).strip().upper()
            for s, n in names.items():
                if k == n or (k == "0" and s == 0):
                    return s
            raise ValueError(f"moca_options: scale {k!r} is not one of this adapter's scales "
                             f"{[names[s] for s in scales]}")

        enabled = {key_to_scale(k): bool(v) for k, v in self.scale_enabled.items()}
        weights = {key_to_scale(k): float(v) for k, v in self.scale_weights.items()}
        if self.expert_gains and len(self.expert_gains) != len(scales):
            raise ValueError(f"moca_options: expert_gains has {len(self.expert_gains)} values but the adapter "
                             f"has {len(scales)} experts (scales {[names[s] for s in scales]})")
        gains = [float(g) for g in self.expert_gains] or [1.0] * len(scales)
        if not self.temperature > 0:
            raise ValueError(f"moca_options: temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"moca_options: top_k must be >= 0 (0 = dense), got {self.top_k}")
        experts = tuple(e for e, s in enumerate(scales) if enabled.get(s, True))
        if not experts and self.strength != 0:
            raise ValueError("moca_options: every temporal scale is disabled; enable at least one "
                             "or set strength to 0")
        expert_weight = tuple(weights.get(scales[e], 1.0) * gains[e] for e in experts)
        return ResolvedOptions(float(self.strength), experts, expert_weight,
                               float(self.temperature), int(self.top_k))


@dataclass(frozen=True)
class ResolvedOptions:
    strength: float
    experts: tuple            # enabled expert ids
    expert_weight: tuple      # per enabled expert: scale weight x expert gain
    temperature: float
    top_k: int

    @property
    def active(self) -> bool:
        return self.strength != 0 and bool(self.experts)
