"""MoCAConfig: the Wan 2.1 backbone fields (mirrored exactly) plus the MoCA adapter fields."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

WHOLE_CLIP = 0  # the temporal scale that pools the whole clip (T frames) into one window
IDENTITY_ATTENTION = ("moca", "single")  # MoCA's TACA experts + HTP + router | one plain cross-attention
SUMMARY_SOURCES = ("video", "query")     # window summaries from the video tokens | from the projected queries


@dataclass(frozen=True)
class MoCAConfig:
    # --- Wan 2.1 T2V backbone (names as in Wan's WanModel.__init__) ---
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch_size: tuple = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    # --- MoCA adapter ---
    scales: tuple = (1, 2, 4, WHOLE_CLIP)  # HTP window sizes in latent frames; 0 = whole clip
    moca_dim: int = 768                   # inner width of the TACA experts (shared Q/O)
    moca_heads: int = 6
    id_dim: int = 512                     # identity token width D_id
    arcface_dim: int = 512
    num_global_tokens: int = 8            # N_g, from the ArcFace embedding
    num_local_tokens: int = 32            # N_l, from the face-crop latent (perceiver)
    resampler_depth: int = 2
    face_latent_channels: int = 16
    router_use_time: bool = True          # router sees the diffusion time embedding
    # --- variants (moca_model/variants.py); the defaults are MoCA as designed, and files without these
    # fields (written before they existed) load as that ---
    identity_attention: str = "moca"      # "moca": HTP + TACA experts + router; "single": one plain
    #                                       cross-attention on the identity tokens per block (scales must be (1,))
    expert_kv_rank: int = 0               # 0: each expert owns its K/V projection; r > 0: one shared K/V
    #                                       projection plus a rank-r correction per expert (lean MoCA)
    summary_source: str = "video"         # window summaries projected from the video tokens ("video", a
    #                                       D -> D_id projection) or from the pooled queries ("query": a -> D_id)

    def __post_init__(self):
        # JSON round-trips give lists; keep tuples so configs stay hashable and comparable.
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        problems = []
        if self.dim % self.num_heads:
            problems.append(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.moca_dim % self.moca_heads:
            problems.append(f"moca_dim={self.moca_dim} is not divisible by moca_heads={self.moca_heads}")
        if not self.scales:
            problems.append("scales is empty: give at least one temporal scale, e.g. (1,)")
        if any(s < 0 for s in self.scales) or len(set(self.scales)) != len(self.scales):
            problems.append(f"scales={self.scales} must be distinct and >= 0 (0 = whole clip)")
        if self.num_global_tokens < 0 or self.num_local_tokens < 0 or \
                self.num_global_tokens + self.num_local_tokens == 0:
            problems.append("need at least one identity token (num_global_tokens + num_local_tokens > 0)")
        if self.identity_attention not in IDENTITY_ATTENTION:
            problems.append(f"identity_attention={self.identity_attention!r} is not a known kind "
                            f"{IDENTITY_ATTENTION} (a file of a newer MoCA version? update the node pack)")
        elif self.identity_attention == "single" and self.scales != (1,):
            problems.append(f"identity_attention='single' has no temporal pooling: set scales=(1,), not {self.scales}")
        if self.summary_source not in SUMMARY_SOURCES:
            problems.append(f"summary_source={self.summary_source!r} is not one of {SUMMARY_SOURCES}")
        if self.expert_kv_rank < 0:
            problems.append(f"expert_kv_rank={self.expert_kv_rank} must be >= 0 (0 = a full K/V per expert)")
        if problems:
            raise ValueError("Invalid MoCAConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides) -> "MoCAConfig":
        """Named configurations: 'tiny' (tests), 'toy' (the toy world's trained models), 'small' (CPU benchmarks),
        'wan2.1-1.3b', 'wan2.1-14b' and 'wan2.2-a14b' (the real Wan T2V backbones, with lean MoCA's adapter)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown MoCA preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @property
    def num_experts(self) -> int:
        return len(self.scales)

    @property
    def num_id_tokens(self) -> int:
        return self.num_global_tokens + self.num_local_tokens

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def scale_names(self) -> list[str]:
        return ["T" if s == WHOLE_CLIP else str(s) for s in self.scales]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """All fields, except variant fields at their defaults: MoCA as designed writes the same header as
        before those fields existed, so older readers still load it."""
        d = dataclasses.asdict(self)
        for name in VARIANT_FIELDS:
            if d[name] == _DEFAULTS[name]:
                del d[name]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "MoCAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"MoCAConfig: unknown fields {unknown} (file written by a newer version?)")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "MoCAConfig":
        return cls.from_dict(json.loads(s))

    def backbone_fields(self) -> dict:
        names = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim",
                 "freq_dim", "patch_size", "qk_norm", "cross_attn_norm", "eps")
        return {n: getattr(self, n) for n in names}


VARIANT_FIELDS = ("identity_attention", "expert_kv_rank", "summary_source")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MoCAConfig)}

PRESETS: dict[str, MoCAConfig] = {
    # dim 256 with 2 heads keeps Wan's head width of 128, so ComfyUI (num_heads = dim // 128) loads it.
    "tiny": MoCAConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2,
                       moca_dim=128, moca_heads=2, id_dim=128,
                       num_global_tokens=4, num_local_tokens=8, resampler_depth=1),
    # toy: the toy world's backbone (moca_model/toy), trained from scratch on CPU; 4 blocks of width 256
    # (head width 128, so ComfyUI's own loader takes it) and 16 local identity tokens from a 128 px face crop.
    "toy": MoCAConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=4,
                      moca_dim=128, moca_heads=2, id_dim=128,
                      num_global_tokens=4, num_local_tokens=16, resampler_depth=1),
    # small keeps the 1.3B model's proportions (ffn ~ 6x dim, moca_dim = dim / 2) at CPU-friendly width.
    "small": MoCAConfig(dim=512, ffn_dim=3072, num_heads=4, num_layers=4,
                        moca_dim=256, moca_heads=2, id_dim=256,
                        num_global_tokens=4, num_local_tokens=16, resampler_depth=1),
    # The real Wan presets build lean MoCA (moca_model/variants.py: a shared expert K/V with rank-16 corrections,
    # a narrower inner and identity width, summaries from the pooled queries): 2.5% of 1.3B and 2.7% of 14B
    # instead of 14.3% / 12.4%, within the toy benchmark's interval of MoCA as designed (docs/toybench.md).
    # MoCA as designed is variants.variant_config("moca", preset) (moca_dim 768 / 2048, id_dim 512 / 1024).
    "wan2.1-1.3b": MoCAConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30,
                              moca_dim=256, moca_heads=2, id_dim=256, expert_kv_rank=16, summary_source="query"),
    "wan2.1-14b": MoCAConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40,
                             moca_dim=768, moca_heads=6, id_dim=512, expert_kv_rank=16, summary_source="query"),
}
# Wan 2.2 T2V A14B: each of its two experts (high noise, low noise) has Wan 2.1 14B's geometry and keys.
PRESETS["wan2.2-a14b"] = PRESETS["wan2.1-14b"]
