"""MoCA variants: MoCA as designed, the ablations the toy benchmark trains, and the lean MoCA adapter.

Every model variant is a set of `MoCAConfig` fields, so an adapter file's header (its config) says which
modules to build and any loader (`load_moca`, `MoCADiT.load_adapter`, ComfyUI's MoCA Adapter Loader) rebuilds
the right ones; MoCA as designed writes no variant fields, so its files are what they always were.

| variant | what changes |
|---|---|
| `moca` | nothing: HTP at scales {1, 2, 4, T}, one TACA expert per scale, router |
| `single_xattn` | one plain cross-attention on the identity tokens per block (`identity_xattn.py`): no HTP, no experts, no router |
| `frame_scale` | scales (1,): one expert, per-frame windows |
| `clip_scale` | scales (T,): one expert, the whole clip as one window |
| `no_lvpl` | the model of `moca`, trained without LVPL (a training setting: objective.lvpl.weight 0) |
| `lean` | lean MoCA, below |
| `no_identity` | the backbone alone (no adapter) |

**Lean MoCA is the default of the real presets** (`wan2.1-1.3b`, `wan2.1-14b`, `wan2.2-a14b`): the toy benchmark
(docs/toybench.md) found its likeness within the 95% interval of MoCA as designed (-0.009 [-0.020, +0.001]) at a
sixth of the parameters. `variant_config("moca", preset)` (a training config's `model.variant: moca`) builds MoCA
as designed at the widths it was designed with (`DESIGNED_WIDTHS`); every adapter file carries its own config in
its header, so files of either design load as what they are, whatever the presets say.

**Lean MoCA** keeps everything the paper adds (HTP, one temporal-aware expert per scale, window summaries,
router) and cuts where MoCA's parameters are: at Wan 2.1 1.3B, 93% of its 203M sit in each block's
per-expert K/V (95M: four full `D_id -> 2a` projections), the shared Q and O (71M: `D <-> a` at a = 768) and
the summary projection (24M: `D -> D_id`). Lean MoCA
  1. gives the experts one shared K/V projection plus a rank-16 correction each (`expert_kv_rank`; zero-init,
     so experts start from the shared K/V and differ by their queries' scale embedding until trained): ~E x
     fewer K/V parameters. The experts' keys are ~40 identity tokens plus a few summaries, so K/V capacity is
     the least needed;
  2. narrows the inner width to a = D / 6 rounded to 128-wide heads (1.3B: 256, 2 heads; 14B: 768, 6 heads)
     and the identity width D_id to 256 / 512: Q and O shrink 3x;
  3. makes each window summary from the window's pooled, projected queries (`summary_source = "query"`, an
     `a -> D_id` map) instead of a `D -> D_id` projection of the video tokens: the pooled queries are already
     computed, and the summary's projection shrinks D / a-fold.
That gives 35M = 2.5% of the backbone at 1.3B and 384M = 2.7% at 14B (`lean_shares()`; the 3% bar is tested), against
14.3% and 12.4% for MoCA as designed. Whether it keeps MoCA's likeness is what `python -m moca_model toybench`
measures (its row `lean`).
"""
from __future__ import annotations

from .config import MoCAConfig

MODEL_VARIANTS = ("moca", "single_xattn", "frame_scale", "clip_scale", "no_lvpl", "lean", "no_identity")
ADAPTER_VARIANTS = MODEL_VARIANTS[:-1]           # the ones with an adapter to train (all but no_identity)
# lean widths of the test / toy presets: (moca_dim, moca_heads, id_dim); the real presets are lean MoCA themselves
# (config.PRESETS), and any other preset gets moca_dim = dim / 6 rounded down to whole heads of its head width
LEAN_WIDTHS = {"toy": (64, 1, 64), "tiny": (64, 1, 64), "small": (128, 1, 128)}
LEAN_KV_RANK = 16
# MoCA as designed at the real presets, whose preset fields are lean MoCA's: (moca_dim, moca_heads, id_dim)
DESIGNED_WIDTHS = {"wan2.1-1.3b": (768, 6, 512), "wan2.1-14b": (2048, 16, 1024), "wan2.2-a14b": (2048, 16, 1024)}


def variant_overrides(variant: str, preset: str = "wan2.1-1.3b") -> dict:
    """The MoCAConfig fields of a variant at a preset. MoCA as designed and its ablations are MoCA as designed's
    widths and variant fields (spelled out only where the preset's own are lean MoCA's: the real presets, whose
    lean variant is the preset itself); no_identity has no adapter, so it changes nothing."""
    if variant not in MODEL_VARIANTS:
        raise ValueError(f"Unknown MoCA variant {variant!r}; choose one of {list(MODEL_VARIANTS)}")
    if variant == "no_identity":
        return {}
    if variant == "lean":
        if preset in DESIGNED_WIDTHS:                                    # the real presets: lean MoCA already
            return {}
        if preset in LEAN_WIDTHS:
            a, heads, d = LEAN_WIDTHS[preset]
        else:
            base = MoCAConfig.preset(preset)
            head = base.moca_dim // base.moca_heads
            heads = max(1, base.dim // 6 // head)
            a, d = heads * head, min(base.id_dim, heads * head)
        return {"moca_dim": a, "moca_heads": heads, "id_dim": d, "expert_kv_rank": LEAN_KV_RANK,
                "summary_source": "query"}
    designed = {}
    if preset in DESIGNED_WIDTHS:
        a, heads, d = DESIGNED_WIDTHS[preset]
        designed = {"moca_dim": a, "moca_heads": heads, "id_dim": d, "expert_kv_rank": 0, "summary_source": "video"}
    if variant == "single_xattn":
        return {**designed, "identity_attention": "single", "scales": (1,)}
    if variant == "frame_scale":
        return {**designed, "scales": (1,)}
    if variant == "clip_scale":
        return {**designed, "scales": (0,)}
    return designed                                                       # moca, no_lvpl


def variant_config(variant: str, preset: str = "wan2.1-1.3b", **overrides) -> MoCAConfig:
    return MoCAConfig.preset(preset, **{**variant_overrides(variant, preset), **overrides})


def model_config(preset: str, variant: str | None = None, overrides: dict | None = None) -> MoCAConfig:
    """A training run's MoCA model: the preset (lean MoCA at the real presets), or `variant` at that preset;
    `overrides` last. no_identity trains nothing, so it is refused here."""
    if variant is None:
        return MoCAConfig.preset(preset, **(overrides or {}))
    if variant not in ADAPTER_VARIANTS:
        raise ValueError(f"{variant!r} is not a MoCA variant with an adapter; choose one of "
                         f"{list(ADAPTER_VARIANTS)} (no_identity is the backbone alone)")
    return variant_config(variant, preset, **(overrides or {}))


def variant_of(config: MoCAConfig) -> str:
    """The name of the model variant a config builds ("custom" when it is none of them; widths aside)."""
    c = config
    if c.identity_attention == "single":
        return "single_xattn"
    if c.expert_kv_rank or c.summary_source != "video":
        return "lean" if c.expert_kv_rank and c.summary_source == "query" else "custom"
    return {(1, 2, 4, 0): "moca", (1,): "frame_scale", (0,): "clip_scale"}.get(c.scales, "custom")


def adapter_share(config: MoCAConfig) -> dict:
    """Parameters of the adapter and the backbone (shapes only, no memory) and the adapter's share."""
    from .dit import MoCADiT
    model = MoCADiT(config, device="meta")
    backbone, adapter = model.num_parameters(), model.num_parameters("adapter")
    return {"backbone": backbone, "adapter": adapter, "share": adapter / backbone}


def lean_shares() -> dict:
    """Lean MoCA's adapter share at the real presets: {preset: adapter_share(...)}."""
    return {p: adapter_share(variant_config("lean", p)) for p in ("wan2.1-1.3b", "wan2.1-14b")}
