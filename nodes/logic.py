"""Node logic that needs no ComfyUI: option objects, identity routing, latent grids, plots, file names.

Everything here is plain Python / PyTorch so it is tested without a ComfyUI checkout; the node classes
(`nodes/nodes_*.py`) only translate ComfyUI types into these calls.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..moca_model.config import MoCAConfig
from ..moca_model.identity import MoCAIdentity
from ..moca_model.options import MoCAOptions

SCALE_NAMES = ("1", "2", "4", "T")          # the temporal scales the pooling / mixing nodes expose
APPLY_TO = ("all", "marked conditioning only")
IDENTITY_MODES = ("with identity", "without identity")


# ---------------------------------------------------------------------------------------------- options
def make_pooling(enabled: dict) -> dict:
    """MOCA_POOLING: {"scale_enabled": {name: bool}}. How much each scale's expert counts is MoCA Expert
    Mixing's gain_* (one multiplier per expert, set in one place)."""
    if not any(enabled.values()):
        raise ValueError("MoCA Temporal Pooling: every scale is disabled. Enable at least one scale "
                         "(scale_1 is the frame-level expert), or set identity strength to 0 in MoCA Expert Mixing.")
    return {"scale_enabled": {str(k): bool(v) for k, v in enabled.items()}}


_BLOCK_ITEM = re.compile(r"^(-?\d+)(?:\s*(?:-|\.\.)\s*(-?\d+))?$")


def parse_blocks(text: str) -> list[tuple[int, int]]:
    """MoCA Expert Mixing's `blocks`: "all", or a comma-separated list of block indices and inclusive ranges
    ("0-9, 20, 25..29"); negative indices count from the last block ("-5..-1" = the last five).
    Returns [(first, last), ...] (unresolved: the model's block count is known only at MoCA Apply)."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return []
    out = []
    for item in text.split(","):
        m = _BLOCK_ITEM.match(item.strip())
        if not m:
            raise ValueError(f"MoCA Expert Mixing: blocks {text!r}: cannot read {item.strip()!r}. Write 'all', or "
                             "block numbers and ranges separated by commas, e.g. '0-9, 20' (first block = 0, "
                             "last block = -1)")
        a = int(m.group(1))
        out.append((a, int(m.group(2)) if m.group(2) is not None else a))
    return out


def select_blocks(ranges: list, num_layers: int) -> tuple[int, ...]:
    """Resolve parse_blocks' ranges against a model with num_layers blocks -> sorted block indices."""
    if not ranges:
        return tuple(range(num_layers))
    chosen = set()
    for a, b in ranges:
        lo, hi = (v + num_layers if v < 0 else v for v in (a, b))
        if not (0 <= lo < num_layers and 0 <= hi < num_layers):
            raise ValueError(f"MoCA Apply: blocks {a}-{b} is outside this model's blocks 0..{num_layers - 1} "
                             f"(or -{num_layers}..-1 from the end); fix 'blocks' in MoCA Expert Mixing")
        if lo > hi:
            raise ValueError(f"MoCA Apply: blocks {a}-{b} runs backwards (block {lo} after {hi}); write it as "
                             f"{b}-{a} in MoCA Expert Mixing")
        chosen.update(range(lo, hi + 1))
    return tuple(sorted(chosen))


def make_mixing(strength=1.0, temperature=1.0, top_k=0, gains=None, start_percent=0.0, end_percent=1.0,
                blocks: str = "all") -> dict:
    """MOCA_MIXING: identity strength, router temperature / top-k, per-scale gains, schedule range, blocks."""
    if not temperature > 0:
        raise ValueError(f"MoCA Expert Mixing: router_temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"MoCA Expert Mixing: top_k must be >= 0 (0 = all experts), got {top_k}")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"MoCA Expert Mixing: need 0 <= start_percent <= end_percent <= 1, got "
                         f"start_percent={start_percent}, end_percent={end_percent}; swap them or lower start_percent")
    parse_blocks(blocks)                     # a typo is reported by this node, not later by MoCA Apply
    return {"strength": float(strength), "temperature": float(temperature), "top_k": int(top_k),
            "gains": {str(k): float(v) for k, v in (gains or {}).items()},
            "start_percent": float(start_percent), "end_percent": float(end_percent),
            "blocks": (blocks or "all").strip() or "all"}


def mixing_blocks(mixing: dict | None, num_layers: int) -> tuple[int, ...]:
    """The DiT blocks MoCA acts on (MoCA Expert Mixing's `blocks`; all of them without that node)."""
    return select_blocks(parse_blocks((mixing or {}).get("blocks", "all")), num_layers)


def build_options(config: MoCAConfig, pooling: dict | None, mixing: dict | None) -> tuple[MoCAOptions, float, float]:
    """(MoCAOptions for this adapter, start_percent, end_percent) from the pooling and mixing nodes.

    Settings for scales the adapter does not have are ignored while they are the defaults (enabled,
    weight 1, gain 1); a non-default setting for a missing scale is an error that names it."""
    names = config.scale_names()
    pooling = pooling or {}
    mixing = mixing or {}

    def keep(kind, values, default):
        out = {}
        for k, v in values.items():
            if k in names:
                out[k] = v
            elif v != default:
                raise ValueError(f"MoCA Apply: the {kind} sets scale {k} to {v}, but this adapter only has the "
                                 f"temporal scales {names}; reset that scale to {default} or load an adapter "
                                 f"trained with it")
        return out

    enabled = keep("temporal pooling", pooling.get("scale_enabled", {}), True)
    gains = keep("expert mixing gain", mixing.get("gains", {}), 1.0)
    expert_gains = tuple(float(gains.get(n, 1.0)) for n in names) if gains else ()
    opts = MoCAOptions(strength=mixing.get("strength", 1.0), scale_enabled=enabled,
                       temperature=mixing.get("temperature", 1.0), top_k=mixing.get("top_k", 0),
                       expert_gains=expert_gains)
    try:
        opts.resolve(config)
    except ValueError as e:
        raise ValueError(f"MoCA Apply: {e}. Fix it in MoCA Temporal Pooling / MoCA Expert Mixing.") from e
    return opts, float(mixing.get("start_percent", 0.0)), float(mixing.get("end_percent", 1.0))


# ---------------------------------------------------------------------------------------------- identity routing
@dataclass(eq=False)
class IdentityMarker:
    """Carried by a CONDITIONING (model_conds["moca_id"]): this pass gets an identity ("on") or none ("off").
    Conditionings whose markers are the same object are batched together by ComfyUI."""
    mode: str
    identity: MoCAIdentity | None = None

    def __post_init__(self):
        if self.mode not in ("on", "off"):
            raise ValueError(f"IdentityMarker mode must be 'on' or 'off', not {self.mode!r}")


OFF = IdentityMarker("off")


def marker_for(mode: str, identity: MoCAIdentity | None = None) -> IdentityMarker:
    if mode == "without identity" or mode == "off":
        return OFF
    if mode in ("with identity", "on"):
        return IdentityMarker("on", identity)
    raise ValueError(f"MoCA Identity Conditioning: identity must be one of {IDENTITY_MODES}, not {mode!r}")


def check_identity_recognizer(adapter_patcher, identity: MoCAIdentity | None, what: str = "input 'moca_id'"):
    """Refuse an identity whose ArcFace embeddings come from another face recogniser than the adapter's
    training embeddings (moca_model.provenance); unrecorded sides pass (their files gave a notice on load)."""
    from ..moca_model.provenance import check_identity
    from ..moca_model.regions import IdentityBindings
    if isinstance(identity, IdentityBindings):                         # several people: check each one
        for k, one in enumerate(identity.identities, 1):
            check_identity_recognizer(adapter_patcher, one, f"{what} (identity region {k})")
        return
    if identity is not None and identity.arcface is not None:
        check_identity(getattr(adapter_patcher.model, "moca_recognizer", None),
                       f"(input 'moca_adapter', {getattr(adapter_patcher.model, 'moca_name', 'MoCA adapter')})",
                       identity.recognizer, what, "MoCA Apply")


def bind_region(previous, moca_id, mask, overlap: str, mode: str):
    """MoCA Identity Region: `previous` (None, one identity or bindings) + this identity with its MASK
    ([F, H, W] or [H, W] in 0..1, or None for left-to-right) -> IdentityBindings."""
    from ..moca_model.regions import IdentityBindings
    if isinstance(moca_id, IdentityBindings):
        raise ValueError("MoCA Identity Region: input 'moca_id' is already a list of bound identities; connect it to "
                         "'previous' and this person's own identity to 'moca_id'.")
    if mask is not None:
        mask = mask.detach().float().cpu()
        if mask.ndim not in (2, 3):
            raise ValueError(f"MoCA Identity Region: input 'mask' must be a MASK [frames, H, W], got {list(mask.shape)}")
    if previous is None:
        return IdentityBindings([moca_id], [mask], overlap, mode)
    if not isinstance(previous, IdentityBindings):  # a plain identity as 'previous': the first person, left to right
        previous = IdentityBindings([previous], [None], overlap, mode)
    return previous.add(moca_id, mask, overlap, mode)


def single_identity(moca_id, node: str):
    """`moca_id` when it is one identity; a clear error for a list of MoCA Identity Region bindings."""
    from ..moca_model.regions import IdentityBindings
    if isinstance(moca_id, IdentityBindings):
        raise ValueError(f"{node}: input 'moca_id' is a list of {len(moca_id.identities)} identities bound to regions "
                         "(MoCA Identity Region); this node takes one identity. Connect the identity itself (MoCA Encode "
                         "Face or MoCA Load Identity) here.")
    return moca_id


def resolve_identity(default: MoCAIdentity | None, apply_to: str, marker) -> MoCAIdentity | None:
    """Which identity one model pass uses: the conditioning's marker wins; unmarked passes get the
    MoCA Apply identity when apply_to == "all", none otherwise."""
    if marker is None:
        return default if apply_to == "all" else None
    if not isinstance(marker, IdentityMarker):
        raise TypeError(f"model_conds['moca_id'] holds {type(marker).__name__}, not a MoCA identity marker; "
                        "only MoCA Identity Conditioning should set it")
    if marker.mode == "off":
        return None
    return marker.identity if marker.identity is not None else default


# ---------------------------------------------------------------------------------------------- geometry
def latent_grid(x_shape, patch_size=(1, 2, 2), extra_frames: int = 0) -> tuple[int, int, int]:
    """Token grid (T, h, w) of a Wan latent [B, C, T, H, W] after padding to the patch size (ceil)."""
    if len(x_shape) != 5:
        raise ValueError(f"MoCA needs 5-D video latents [B, C, T, H, W], got shape {list(x_shape)}; "
                         "MoCA works with Wan 2.1 text-to-video models only")
    _, _, T, H, W = x_shape
    pt, ph, pw = patch_size
    return (math.ceil((T + extra_frames) / pt), math.ceil(H / ph), math.ceil(W / pw))


def latent_frames(frames: int) -> int:
    """Wan 2.1 VAE: T video frames -> (T - 1) // 4 + 1 latent frames."""
    return (int(frames) - 1) // 4 + 1


# ---------------------------------------------------------------------------------------------- files
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_prefix(prefix: str, default: str) -> str:
    """A filename prefix with path parts kept ('a/b') but no '..', absolute paths or odd characters."""
    parts = [p for p in re.split(r"[\\/]+", str(prefix or "").strip()) if p not in ("", ".", "..")]
    parts = [_SAFE.sub("_", p) for p in parts]
    return "/".join(parts) or default


# ---------------------------------------------------------------------------------------------- likeness plot
def likeness_plot(scores, width: int = 640, height: int = 240, threshold: float | None = None) -> torch.Tensor:
    """Line plot of per-frame likeness (None / NaN = no face) as an IMAGE [1, H, W, 3] in 0..1."""
    from PIL import Image, ImageDraw

    vals = [None if s is None or (isinstance(s, float) and math.isnan(s)) else float(s) for s in scores]
    img = Image.new("RGB", (width, height), (24, 24, 28))
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 44, width - 12, 14, height - 26
    lo, hi = -0.2, 1.0
    d.rectangle([left, top, right, bottom], outline=(90, 90, 100))

    def ypos(v):
        return bottom - (min(max(v, lo), hi) - lo) / (hi - lo) * (bottom - top)

    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = ypos(v)
        d.line([left, y, right, y], fill=(50, 50, 58))
        d.text((4, y - 6), f"{v:.2f}", fill=(170, 170, 180))
    n = len(vals)

    def xpos(i):
        return left + (i + 0.5) / max(n, 1) * (right - left)

    if threshold is not None:
        y = ypos(threshold)
        d.line([left, y, right, y], fill=(160, 80, 60))
    prev = None
    for i, v in enumerate(vals):
        if v is None:
            d.line([xpos(i), bottom - 6, xpos(i), bottom], fill=(200, 60, 60))   # tick: no face here
            prev = None
            continue
        p = (xpos(i), ypos(v))
        if prev is not None:
            d.line([prev, p], fill=(90, 200, 120), width=2)
        d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=(90, 200, 120))
        prev = p
    scored = [v for v in vals if v is not None]
    label = f"likeness over {n} frames" + (f" - mean {sum(scored) / len(scored):.3f}" if scored else " - no face")
    d.text((left, bottom + 8), label, fill=(220, 220, 230))
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return (t.float() / 255.0)[None]


def check_choice(node: str, name: str, value, options) -> bool | str:
    """validate_inputs helper: ComfyUI 0.3.x does not check V3 combo values against their options, so the
    nodes do (None = linked input, checked at run time).

    ComfyUI reports a failed validate_inputs once for *every* input the function takes, so each node's
    validate_inputs takes one input (the file list, which changes on disk); other combos are checked by
    `require_choices` when the node runs."""
    if value is None or value in options:
        return True
    shown = ", ".join(map(str, list(options)[:12])) + (" ..." if len(options) > 12 else "")
    if not options:
        return f"{node}: input '{name}' = {value!r}, but the list is empty; put the file in its folder and refresh (R)"
    return f"{node}: input '{name}' = {value!r} is not one of: {shown}"


def require_choices(node: str, **checks):
    """check_choices at run time: a ValueError with the same message (names the input and the options)."""
    r = check_choices(node, **checks)
    if r is not True:
        raise ValueError(r)


def check_choices(node: str, **checks) -> bool | str:
    """check_choice over several inputs: name=(value, options); the first problem, or True."""
    for name, (value, options) in checks.items():
        r = check_choice(node, name, value, options)
        if r is not True:
            return r
    return True
