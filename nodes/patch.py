"""How MoCA attaches to ComfyUI's native Wan model, without touching the base model.

MoCA Apply clones the MODEL and adds, on the clone only:
- one `patches_replace["dit"][("double_block", i)]` per block (`MoCABlockPatch`): it runs the original block
  (or the patch that was already there, so other packs' patches keep working) and adds the MoCA residual
  `layer_i(x, vec, identity_tokens, grid, options)` computed by `moca_model`'s MoCALayer;
- an APPLY_MODEL wrapper (`MoCAScheduleWrapper`): turns the start/end percent into sigmas with the model's
  own model_sampling and switches MoCA off outside that range;
- a DIFFUSION_MODEL wrapper (`MoCADiffusionWrapper`): sees the 5-D latent, so it knows the token grid, picks
  the identity of this pass (the conditioning's `model_conds["moca_id"]` marker, or the MoCA Apply identity),
  turns it into tokens with the adapter's tokenizer and hands both to the block patches through a copy of
  `transformer_options` (nothing is stored between calls, so nothing survives a run or an interrupt).
The patches return the adapter's ModelPatcher from `.models()`, so ComfyUI loads and offloads it with the
model. Bypassing MoCA Apply leaves the original MODEL object exactly as it was.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

import torch

import comfy.patcher_extension

from ..moca_model.identity import MoCAIdentity
from ..moca_model.options import MoCAOptions, ResolvedOptions
from ..moca_model.regions import IdentityBindings, ResolvedRegions
from .logic import APPLY_TO, check_identity_recognizer, latent_grid, resolve_identity

KEY = "moca"                 # wrapper key and transformer_options key
MODEL_COND = "moca_id"       # model_conds key set by MoCA Identity Conditioning


class MoCAState:
    """What one MoCA Apply attached: shared (never copied) by its block patches and wrappers."""

    def __init__(self, adapter_patcher, identity: MoCAIdentity | None, options: MoCAOptions,
                 start_percent: float, end_percent: float, apply_to: str, blocks: tuple):
        if apply_to not in APPLY_TO:
            raise ValueError(f"MoCA Apply: apply_to must be one of {APPLY_TO}, not {apply_to!r}")
        self.uid = uuid.uuid4().hex
        self.adapter_patcher = adapter_patcher
        self.identity = identity
        self.options = options
        self.resolved: ResolvedOptions = options.resolve(adapter_patcher.model.config)
        self.start_percent, self.end_percent = float(start_percent), float(end_percent)
        self.apply_to = apply_to
        self.blocks = blocks                                                  # DiT blocks MoCA acts on

    @property
    def adapter(self):
        return self.adapter_patcher.model

    def __deepcopy__(self, memo):   # ModelPatcher.clone() deep-copies model_options: share, don't copy
        return self


@dataclass
class MoCARun:
    """Per model call: identity tokens, token grid, options (lives only inside one transformer_options)."""
    tokens: torch.Tensor | ResolvedRegions   # [1 | B, M, D_id], or several identities with their region weights
    grid: tuple               # (T, h, w)
    opts: ResolvedOptions
    ran: set = field(default_factory=set)     # blocks whose MoCA patch ran (a patch added later may replace it)


class MoCABlockPatch:
    """patches_replace["dit"][("double_block", i)]: block (or previous patch), then + MoCA residual."""

    def __init__(self, state: MoCAState, index: int, previous=None):
        self.state, self.index, self.previous = state, index, previous

    def __call__(self, args, extra):
        if self.previous is not None:
            out = self.previous(args, extra)
        else:
            out = extra["original_block"](args)
        runs = args.get("transformer_options", {}).get(KEY)
        run = runs.get(self.state.uid) if runs else None
        if run is None:
            return out
        run.ran.add(self.index)
        x = out["img"]
        n = run.grid[0] * run.grid[1] * run.grid[2]
        layer = self.state.adapter.layers[self.index]
        if x.shape[1] == n:
            x = x + layer(x, args["vec"], run.tokens, run.grid, run.opts).to(x.dtype)
        elif x.shape[1] > n:   # extra tokens (e.g. a reference latent) are prepended: MoCA acts on the video
            video = x[:, -n:]
            x = torch.cat([x[:, :-n], video + layer(video, args["vec"], run.tokens, run.grid, run.opts).to(x.dtype)], 1)
        else:
            raise ValueError(f"MoCA: block {self.index} has {x.shape[1]} tokens, fewer than the latent grid "
                             f"{run.grid}; this Wan variant is not supported by MoCA Apply")
        return {**out, "img": x}

    def to(self, device_or_dtype):
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self

    def models(self):
        prev = self.previous.models() if self.previous is not None and hasattr(self.previous, "models") else []
        return [self.state.adapter_patcher] + list(prev)

    def __deepcopy__(self, memo):
        return self


class MoCAMarkedCheckWrapper:
    """OUTER_SAMPLE wrapper (apply_to = marked conditioning only): a sampler whose conditionings carry no
    MoCA marker (a plain KSampler) would never use the identity, so stop before sampling and say why."""

    def __init__(self, state: MoCAState):
        self.state = state

    def __call__(self, executor, *args, **kwargs):
        conds = getattr(executor.class_obj, "conds", None) or {}
        marked = any(MODEL_COND in (c.get("model_conds") or {}) for cs in conds.values() for c in (cs or []))
        if not marked:
            raise ValueError(
                "MoCA Apply: apply_to is 'marked conditioning only', but no conditioning of this sampler was marked by "
                "MoCA Identity Conditioning, so the identity would never be used. Either set MoCA Apply's apply_to to "
                "'all' (KSampler: identity on every pass), or mark the prompt with MoCA Identity Conditioning "
                "('with identity'; for separate identity guidance use DualCFGGuider with cond1 = with identity, "
                "cond2 = without identity), or use MoCA Sampler.")
        return executor(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self


class MoCAScheduleWrapper:
    """APPLY_MODEL wrapper: MoCA acts only while start_percent <= progress <= end_percent."""

    def __init__(self, state: MoCAState):
        self.state = state

    def __call__(self, executor, x, t, *args, **kwargs):
        st = self.state
        active = True
        if st.start_percent > 0.0 or st.end_percent < 1.0:
            ms = executor.class_obj.model_sampling
            hi, lo = ms.percent_to_sigma(st.start_percent), ms.percent_to_sigma(st.end_percent)
            sigma = float(t.max()) if torch.is_tensor(t) else float(t)
            active = lo <= sigma <= hi
        args, kwargs = _with_options(args, kwargs, 3, lambda to: _set(to, "moca_active", st.uid, active))
        return executor(x, t, *args, **kwargs)

    def __deepcopy__(self, memo):
        return self


class MoCADiffusionWrapper:
    """DIFFUSION_MODEL wrapper: identity tokens + latent grid for this call -> transformer_options."""

    def __init__(self, state: MoCAState):
        self.state = state

    def __call__(self, executor, x, timestep, context, *args, **kwargs):
        st = self.state
        to = _get_options(args, kwargs, 2)
        if not st.resolved.active or not (to.get("moca_active") or {}).get(st.uid, True):
            return executor(x, timestep, context, *args, **kwargs)
        identity = resolve_identity(st.identity, st.apply_to, kwargs.get(MODEL_COND))
        if identity is None:
            return executor(x, timestep, context, *args, **kwargs)
        if identity is not st.identity:      # a conditioning's own identity (Identity Conditioning, MoCA Sampler)
            check_identity_recognizer(st.adapter_patcher, identity, "the conditioning's identity")
        dm = executor.class_obj
        time_concat = args[1] if len(args) > 1 else kwargs.get("time_dim_concat")
        extra = 0 if time_concat is None else math.ceil(time_concat.shape[2] / dm.patch_size[0]) * dm.patch_size[0]
        grid = latent_grid(x.shape, tuple(dm.patch_size), extra)
        if isinstance(identity, IdentityBindings):     # several people, each bound to a region of this grid
            tokens = identity.regional(st.adapter.tokenizer, device=x.device, dtype=x.dtype).resolve(
                grid, device=x.device, dtype=x.dtype)
        else:
            tokens = identity.tokens(st.adapter.tokenizer, device=x.device).to(x.dtype)
        run = MoCARun(tokens, grid, st.resolved)
        args, kwargs = _with_options(args, kwargs, 2, lambda o: _set(o, KEY, st.uid, run))
        out = executor(x, timestep, context, *args, **kwargs)
        missing = sorted(set(st.blocks) - run.ran)
        if missing:
            dit = ((_get_options(args, kwargs, 2).get("patches_replace") or {}).get("dit") or {})
            now = {_describe(dit.get(("double_block", i))) for i in missing}
            raise ValueError(
                f"MoCA: the identity did not run on DiT block(s) {_ranges(missing)}: their block patch is now "
                f"{', '.join(sorted(now))}, added to the model after MoCA Apply, and it replaced MoCA's instead of "
                "calling it. Connect that node before MoCA Apply (MoCA chains the block patches it finds there), or "
                "remove it.")
        return out

    def __deepcopy__(self, memo):
        return self


# ---------------------------------------------------------------------------------------------- helpers
def _describe(p) -> str:
    if p is None:
        return "missing"
    f = getattr(p, "func", p)                                   # functools.partial
    mod = getattr(f, "__module__", None) or type(f).__module__
    return f"{getattr(f, '__qualname__', type(f).__qualname__)} (from {mod})"


def _ranges(idx: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, i = [], 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ", ".join(parts)


def _get_options(args, kwargs, pos):
    if "transformer_options" in kwargs:
        return kwargs["transformer_options"] or {}
    return (args[pos] if len(args) > pos else None) or {}


def _with_options(args, kwargs, pos, update):
    """Call `update` on a shallow copy of transformer_options (the caller's dict is never modified)."""
    to = dict(_get_options(args, kwargs, pos))
    update(to)
    if "transformer_options" in kwargs or len(args) <= pos:
        kwargs = {**kwargs, "transformer_options": to}
    else:
        args = tuple(args[:pos]) + (to,) + tuple(args[pos + 1:])
    return args, kwargs


def _set(to: dict, key: str, uid: str, value):
    to[key] = {**(to.get(key) or {}), uid: value}


SUPPORTED = "Wan 2.1 text-to-video, 1.3B or 14B (ComfyUI model type WAN21_T2V)"
WAN_VARIANTS = {                      # ComfyUI's Wan classes MoCA does not support, by what users call them
    "VaceWanModel": "a Wan VACE model", "CameraWanModel": "a Wan Fun Camera model",
    "WanModel_S2V": "a Wan 2.2 speech-to-video (S2V) model", "HumoWanModel": "a HuMo model",
    "AnimateWanModel": "a Wan 2.2 Animate model",
}


def wan_model_of(model):
    """The native Wan 2.1 T2V WanModel inside a MODEL, or a ValueError that names what it is instead.

    Only the plain text-to-video WanModel is accepted: the other Wan variants add inputs (image latents
    concatenated on channels, VACE hints, HuMo's reference and audio tokens appended after the video, ...)
    that MoCA was not trained with, and some move the video tokens MoCA's residual must land on."""
    import comfy.ldm.wan.model as wan
    dm = model.get_model_object("diffusion_model")
    config = type(getattr(model.model, "model_config", None)).__name__
    kind = None
    if not isinstance(dm, wan.WanModel):
        kind = f"a {type(dm).__name__}, not a Wan model"
    elif type(dm) is not wan.WanModel:
        kind = WAN_VARIANTS.get(type(dm).__name__, f"a Wan variant ({type(dm).__name__})")
    elif getattr(dm, "model_type", "t2v") != "t2v":
        kind = f"a Wan image-to-video model (I2V / FLF2V / Fun, model_type {dm.model_type!r})"
    elif dm.patch_embedding.in_channels != 16:
        kind = (f"a Wan model with {dm.patch_embedding.in_channels} latent channels (Wan 2.2 TI2V 5B, or a Wan 2.1 "
                "variant with extra input channels)")
    if kind is not None:
        raise ValueError(f"MoCA Apply: input 'model' is {kind} (ComfyUI model type {config}). MoCA supports "
                         f"{SUPPORTED} only: load wan2.1_t2v_1.3B or 14B with Load Diffusion Model (or MoCA-DiT "
                         "Loader) and connect that.")
    return dm


def apply_moca(model, adapter_patcher, identity, options: MoCAOptions, start_percent=0.0, end_percent=1.0,
               apply_to="all", blocks=None):
    """Return a patched clone of `model` (a Wan MODEL); `model` itself is not modified. `blocks`: the DiT
    block indices MoCA acts on (None = all); the others run exactly as without MoCA."""
    dm = wan_model_of(model)
    cfg = adapter_patcher.model.config
    dim = dm.dim if hasattr(dm, "dim") else dm.blocks[0].norm1.normalized_shape[0]
    if len(dm.blocks) != cfg.num_layers or dim != cfg.dim:
        raise ValueError(f"MoCA Apply: input 'moca_adapter' ({adapter_patcher.name}) was made for a Wan model with "
                         f"{cfg.num_layers} blocks of width {cfg.dim}, but input 'model' has {len(dm.blocks)} blocks "
                         f"of width {dim}. Use the adapter trained for this backbone (1.3B: 30 x 1536, 14B: 40 x 5120).")
    blocks = tuple(range(cfg.num_layers)) if blocks is None else tuple(sorted(set(int(b) for b in blocks)))
    if not blocks or blocks[0] < 0 or blocks[-1] >= cfg.num_layers:
        raise ValueError(f"MoCA Apply: blocks {list(blocks)} must be a non-empty subset of 0..{cfg.num_layers - 1}")
    check_identity_recognizer(adapter_patcher, identity)
    state = MoCAState(adapter_patcher, identity, options, start_percent, end_percent, apply_to, blocks)
    m = model.clone()
    existing = ((m.model_options.get("transformer_options") or {}).get("patches_replace") or {}).get("dit") or {}
    for i in blocks:
        m.set_model_patch_replace(MoCABlockPatch(state, i, existing.get(("double_block", i))), "dit", "double_block", i)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, MoCAScheduleWrapper(state))
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, MoCADiffusionWrapper(state))
    if apply_to != "all":
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, MoCAMarkedCheckWrapper(state))
    return m


def moca_states(model) -> list[MoCAState]:
    """The MoCA states attached to a MODEL (empty when MoCA Apply is not upstream)."""
    ws = model.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {}).get(KEY, [])
    return [w.state for w in ws if isinstance(w, MoCADiffusionWrapper)]


def mark_conditioning(conditioning, marker):
    """A copy of a CONDITIONING whose every entry carries `marker` as model_conds["moca_id"]."""
    import comfy.conds
    out = []
    for t, d in conditioning:
        d = dict(d)
        d["model_conds"] = {**(d.get("model_conds") or {}), MODEL_COND: comfy.conds.CONDConstant(marker)}
        out.append([t, d])
    return out
