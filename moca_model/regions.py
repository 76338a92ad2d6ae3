"""Identity regions: several people in one video, each identity bound to a region of the latent token grid.

`RegionalIdentity` is what a caller passes as `identity` to `MoCADiT.forward` (and what ComfyUI's block patch
hands to the MoCA layer) instead of one token tensor: up to 4 identities (token tensors), each with a region.
`resolve(grid)` turns the regions into per-token weights on the DiT's token grid (T, h, w) -> `ResolvedRegions`.

Regions (one per identity):
- a mask: static [H, W] or per frame [F, H, W], values in 0..1, at any spatial size (pixels, VAE latent or
  token grid): it is area-averaged onto the (h, w) token grid. In time, F = 1 means every frame; F = T means
  one mask per latent frame; F = 4(T - 1) + 1 means pixel frames, mapped by Wan's causal grouping (frame 0
  alone, then groups of 4, max over each group: a person anywhere in the group counts), exactly as the
  trainer maps face masks (`training/cache.py: mask_to_latent_grid`).
- None: automatic binding by left-to-right order. The i-th automatic identity (in list order) takes the i-th
  vertical strip of the frame. The strips split at the midpoints between the people's horizontal face centres
  (`centres`, 0..1 of the width, from face detections of a layout picture or of a preview frame: the model
  cannot see where people are before it draws them, so the caller decides, once, before sampling); without
  centres the frame is split into equal strips.

Overlaps (`overlap`): "largest" (default) - where masks overlap, the identity with the larger mask weight takes
the token (ties go to the earlier identity) and keeps its own weight; "blend" - every identity keeps its
weight, scaled down by the sum where the weights add up to more than 1 (w_k / max(1, sum_j w_j)).
Tokens outside every region get weight 0: no identity residual there.

In the MoCA layer, a token's residual is sum_k w_k * MoCA_k(x): MoCA_k attends only to identity k's tokens,
its HTP pools each token's queries over time weighted by region k (a token that leaves the person does not
mix its other frames in), and its per-window video summaries are region-k-weighted means (one person's
summary never mixes in the other). `mode="concat"` is the naive baseline for comparison: all identities'
tokens concatenated into one identity, no regions (the ordinary single-identity path).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_IDENTITIES = 4
OVERLAPS = ("largest", "blend")
MODES = ("regions", "concat")


@dataclass(frozen=True)
class ResolvedRegions:
    """Identities and their per-token weights on one token grid (what a MoCA layer takes)."""
    tokens: tuple               # K tensors [B|1, M_k, D_id]
    weights: torch.Tensor       # [B|1, K, T, N=h*w], 0..1, sum over K <= 1 per token

    def __len__(self):
        return len(self.tokens)


def mask_to_token_grid(mask: torch.Tensor, grid: tuple, name: str = "mask") -> torch.Tensor:
    """A region mask -> its weights on the token grid. mask [H, W] | [F, H, W] | [B, F, H, W] (0..1);
    grid (T, h, w). Returns [B|1, T, h, w] float32 (see the module docstring for the mapping)."""
    T, h, w = grid
    m = torch.as_tensor(mask).float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 3:
        m = m[None]
    if m.ndim != 4:
        raise ValueError(f"{name}: a region mask must be [H, W], [F, H, W] or [B, F, H, W], got {list(m.shape)}")
    Fm = m.shape[1]
    if Fm == 4 * (T - 1) + 1 and Fm != T:                       # pixel frames: Wan's causal time grouping
        m = torch.stack([m[:, :1].amax(1)] + [m[:, i:i + 4].amax(1) for i in range(1, Fm, 4)], 1)
    elif Fm not in (1, T):
        raise ValueError(f"{name}: {Fm} mask frames fit neither the video's {T} latent frames nor its "
                         f"{4 * (T - 1) + 1} pixel frames; give one mask, one per latent frame, or one per frame")
    m = F.adaptive_avg_pool2d(m.clamp(0, 1), (h, w))             # [B, F', h, w] area average onto the grid
    return m.expand(-1, T, -1, -1) if m.shape[1] == 1 else m


def left_to_right_masks(count: int, grid: tuple, centres=None) -> torch.Tensor:
    """Automatic binding: `count` vertical strips of the token grid, left to right -> [count, 1, h, w].
    centres: the people's horizontal face centres (0..1 of the width, any order, len == count) or None (equal
    strips). Strips split at the midpoints between the sorted centres; a token column goes to the strip its
    centre lies in."""
    _, h, w = grid
    if centres is None:
        edges = [i / count for i in range(1, count)]
    else:
        c = sorted(float(v) for v in centres)
        if len(c) != count:
            raise ValueError(f"left-to-right binding: {len(c)} face centres for {count} automatic identities; "
                             "give one centre per person without a mask, or none for equal strips")
        edges = [(a + b) / 2 for a, b in zip(c, c[1:])]
    col = (torch.arange(w, dtype=torch.float32) + 0.5) / w                         # [w] column centres
    strip = torch.bucketize(col, torch.tensor(edges, dtype=torch.float32))        # [w] strip index
    masks = torch.stack([(strip == i).float() for i in range(count)])              # [count, w]
    return masks[:, None, None, :].expand(count, 1, h, w)


def left_to_right_regions(regions: torch.Tensor) -> torch.Tensor:
    """What the automatic binding gives people whose regions are known (training it: data.automatic_binding).
    regions [P, T, h, w] in 0..1 -> strips [P, T, h, w]: the split `left_to_right_masks` makes from the people's
    horizontal centres (here each region's centre of mass over all frames), each person taking the strip of its
    rank from the left. A person with an empty region makes the split equal strips, in list order."""
    P, T, h, w = regions.shape
    mass = regions.float().sum(dim=(1, 2))                                         # [P, w]
    total = mass.sum(dim=1)                                                        # [P]
    if bool((total <= 0).any()):
        return left_to_right_masks(P, (T, h, w)).expand(P, T, h, w).clone()
    col = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    centres = (mass * col).sum(dim=1) / total                                      # [P] 0..1
    strips = left_to_right_masks(P, (T, h, w), centres.tolist())                   # [P, 1, h, w], left to right
    rank = torch.argsort(torch.argsort(centres, stable=True), stable=True)         # person -> its strip
    return strips[rank].expand(P, T, h, w).clone()


def resolve_overlap(weights: torch.Tensor, overlap: str = "largest") -> torch.Tensor:
    """weights [B, K, T, N] -> per-token weights under the overlap rule (module docstring)."""
    if overlap == "largest":
        win = weights.argmax(dim=1, keepdim=True)                                  # first maximum wins ties
        return torch.zeros_like(weights).scatter_(1, win, weights.gather(1, win))
    if overlap == "blend":
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    raise ValueError(f"identity regions: overlap must be one of {OVERLAPS}, not {overlap!r}")


@dataclass
class RegionalIdentity:
    """Several identities, each bound to a region. tokens: K tensors [B|1, M_k, D_id] (K <= 4); masks: K
    masks (module docstring) or None for the left-to-right binding; centres: face centres for the automatic
    ones; overlap: "largest" | "blend"; mode: "regions" | "concat" (the naive baseline: no regions)."""
    tokens: list
    masks: list | None = None
    centres: list | None = None
    overlap: str = "largest"
    mode: str = "regions"

    def __post_init__(self):
        self.tokens = list(self.tokens)
        if not 1 <= len(self.tokens) <= MAX_IDENTITIES:
            raise ValueError(f"identity regions: 1 to {MAX_IDENTITIES} identities per video, got {len(self.tokens)}")
        self.masks = list(self.masks) if self.masks is not None else [None] * len(self.tokens)
        if len(self.masks) != len(self.tokens):
            raise ValueError(f"identity regions: {len(self.tokens)} identities but {len(self.masks)} masks; "
                             "give one mask (or None for left-to-right order) per identity")
        if self.overlap not in OVERLAPS:
            raise ValueError(f"identity regions: overlap must be one of {OVERLAPS}, not {self.overlap!r}")
        if self.mode not in MODES:
            raise ValueError(f"identity regions: mode must be one of {MODES}, not {self.mode!r}")

    def region_weights(self, grid: tuple) -> torch.Tensor:
        """The identities' weights on the token grid before the overlap rule, [B|1, K, T, h, w]."""
        T = grid[0]
        auto = [i for i, m in enumerate(self.masks) if m is None]
        strips = left_to_right_masks(len(auto), grid, self.centres) if auto else None
        per = []
        for i, m in enumerate(self.masks):
            if m is None:
                per.append(strips[auto.index(i)][None].expand(1, T, -1, -1))
            else:
                per.append(mask_to_token_grid(m, grid, name=f"identity region {i + 1}"))
        B = max(p.shape[0] for p in per)
        return torch.stack([p.expand(B, -1, -1, -1) for p in per], 1)

    def resolve(self, grid: tuple, device=None, dtype=None):
        """-> ResolvedRegions on the token grid, or (mode "concat") one token tensor [B|1, sum M_k, D_id]."""
        toks = [t.to(device=device, dtype=dtype) for t in self.tokens]
        if self.mode == "concat":
            B = max(t.shape[0] for t in toks)
            return torch.cat([t.expand(B, -1, -1) for t in toks], dim=1)
        w = resolve_overlap(self.region_weights(grid).flatten(3), self.overlap)    # [B, K, T, N]
        return ResolvedRegions(tuple(toks), w.to(device=device, dtype=dtype))


@dataclass
class IdentityBindings:
    """Identities bound to regions before an adapter makes their tokens (what ComfyUI's *MoCA Identity Region*
    nodes pass along a `MOCA_ID` link): identities are MoCAIdentity objects; masks as in RegionalIdentity (None =
    left-to-right); overlap and mode as there. `tokens(tokenizer, grid, device, dtype)` gives what a MoCA layer
    takes on that grid."""
    identities: list
    masks: list
    overlap: str = "largest"
    mode: str = "regions"

    def __post_init__(self):
        RegionalIdentity([None] * len(self.identities), self.masks, None, self.overlap, self.mode)   # same checks

    def add(self, identity, mask=None, overlap: str | None = None, mode: str | None = None) -> "IdentityBindings":
        """A new list with one more bound identity (the last node of a chain sets overlap and mode)."""
        if isinstance(identity, IdentityBindings):
            ids, masks = identity.identities, identity.masks
        else:
            ids, masks = [identity], [mask]
        return IdentityBindings(self.identities + list(ids), self.masks + list(masks),
                                overlap or self.overlap, mode or self.mode)

    def regional(self, tokenizer, device=None, dtype=None) -> RegionalIdentity:
        toks = [i.tokens(tokenizer, device=device) for i in self.identities]            # [1, M_k, D_id] each
        if dtype is not None:
            toks = [t.to(dtype) for t in toks]
        return RegionalIdentity(toks, self.masks, None, self.overlap, self.mode)

    def summary(self) -> str:
        where = ["left-to-right position" if m is None else f"mask {list(torch.as_tensor(m).shape)}"
                 for m in self.masks]
        return (f"{len(self.identities)} identities ({self.mode}, overlap {self.overlap}): " +
                "; ".join(f"{k + 1}: {w}" for k, w in enumerate(where)))
