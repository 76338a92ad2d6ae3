"""The training objective: per-sample randomness, batch assembly, flow-matching loss + lambda * LVPL.

Every random choice for a sample (noise, sigma, text/identity dropout, which reference) comes from a
generator seeded by (seed, stream position of the sample). So a sample gets the same draws whichever
process trains it, with any world size or accumulation split, and after a resume.

Dropout: a text-dropped sample gets the empty-prompt states (the cached encoding of "" if configured,
else zeros, which is also the sampler's default negative); an identity-dropped sample runs with
identity_mask = 0, i.e. exactly the backbone, so both text and identity guidance work at inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..regions import RegionalIdentity, left_to_right_regions
from . import flow
from .config import TrainConfig
from .data import num_people

_MASK64 = (1 << 63) - 1


def sample_generator(seed: int, position: int) -> torch.Generator:
    """A CPU generator unique to (seed, global sample position)."""
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 1) & _MASK64)


@dataclass
class Batch:
    x0: torch.Tensor            # [B, 16, T, h, w]   clean latents (model space)
    noise: torch.Tensor         # [B, 16, T, h, w]
    sigma: torch.Tensor         # [B]
    context: torch.Tensor       # [B, text_len, 4096]
    arcface: torch.Tensor       # [B, 512]
    face_latent: torch.Tensor   # [B, 16, 1, hf, wf]
    identity_mask: torch.Tensor  # [B] 1 = identity on, 0 = dropped
    face_mask: torch.Tensor | None   # [B, T, h, w]
    has_mask: torch.Tensor      # [B] bool
    people: "People | None" = None   # several people in a clip (None: every sample shows one person)

    def to(self, device, dtype=None):
        def mv(t):
            if t is None:
                return None
            if isinstance(t, People):
                return People(*(mv(x) for x in (t.arcface, t.face_latent, t.region)))
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)
        return Batch(**{k: mv(v) for k, v in self.__dict__.items()})


@dataclass
class People:
    """Identities and regions of a batch in which some clip shows several people (K = most people in a clip).
    Person 0 is the batch's `arcface` / `face_latent`; a one-person clip's region 0 is the whole frame and its
    other regions are empty (their identities repeat person 0's, never used)."""
    arcface: torch.Tensor       # [B, K, 512]
    face_latent: torch.Tensor   # [B, K, 16, 1, hf, wf]
    region: torch.Tensor        # [B, K, T, h, w] 0..1 (latent grid)


class FlowObjective:
    def __init__(self, config: TrainConfig, text_len: int, text_dim: int, empty_text: torch.Tensor | None,
                 lvpl: nn.Module | None):
        self.cfg = config
        self.text_len, self.text_dim = text_len, text_dim
        self.empty_text = empty_text if empty_text is not None else torch.zeros(1, text_dim)   # [L0, 4096]
        self.lvpl = lvpl

    # ------------------------------------------------------------------ batch
    def _pad_text(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()[: self.text_len]
        if t.shape[-1] != self.text_dim:
            raise ValueError(f"text states are {t.shape[-1]}-d but the model expects {self.text_dim} "
                             "(umT5-XXL: 4096); the shards were made with another text encoder")
        out = t.new_zeros(self.text_len, self.text_dim)
        out[: t.shape[0]] = t
        return out

    def make_batch(self, samples: list[dict], positions: list[int]) -> Batch:
        """Collate samples (from ShardDataset) and draw their randomness by stream position."""
        o = self.cfg.objective
        shape = tuple(samples[0]["latents"].shape)
        x0, noise, sig, ctx, arc, flat, idm, masks, has = [], [], [], [], [], [], [], [], []
        for s, pos in zip(samples, positions):
            if tuple(s["latents"].shape) != shape:
                raise ValueError(f"Samples in one batch must share a latent shape: {shape} vs "
                                 f"{tuple(s['latents'].shape)} ({s.get('source', '?')}). Bucket clips by size "
                                 "(same frames and resolution per shard set) or use data.batch_size 1")
            g = sample_generator(self.cfg.train.seed, pos)
            u = torch.rand((), generator=g)
            drop_text = bool(torch.rand((), generator=g) < o.text_dropout)
            drop_id = bool(torch.rand((), generator=g) < o.id_dropout)
            a, fl = s["arcface"], s["face_latent"]
            n_ref = a.shape[0] if a.ndim == 2 else 1
            r = int(torch.randint(n_ref, (), generator=g)) if self.cfg.data.reference == "random" else 0
            noise.append(torch.randn(shape, generator=g))
            x0.append(s["latents"].float())
            sig.append(flow.sample_sigmas(u.view(1), o.shift, o.timestep_sampling, o.sigma_range)[0])
            ctx.append(self._pad_text(self.empty_text if drop_text else s["text"]))
            arc.append((a[r] if a.ndim == 2 else a).float())
            flat.append((fl[r] if fl.ndim == 5 else fl).float())
            idm.append(0.0 if drop_id else 1.0)
            m = s.get("face_mask")
            has.append(m is not None)
            masks.append(m.float() if m is not None else torch.zeros(shape[1:]))
        people = None
        if any(num_people(s) > 1 for s in samples):
            people = self._people(samples, positions, arc, flat)
        return Batch(torch.stack(x0), torch.stack(noise), torch.stack(sig), torch.stack(ctx), torch.stack(arc),
                     torch.stack(flat), torch.tensor(idm), torch.stack(masks) if any(has) else None,
                     torch.tensor(has), people)

    def _people(self, samples, positions, arc, flat) -> People:
        """Every person's identity and region; the reference of persons 2.. is drawn after the sample's other
        draws (so a one-person sample draws exactly what it always did), then, with data.automatic_binding > 0,
        whether this clip trains the automatic binding (left-to-right strips) instead of its masks."""
        K = max(num_people(s) for s in samples)
        arcs, flats, regions = [], [], []
        for s, pos, a0, f0 in zip(samples, positions, arc, flat):
            T, h, w = s["latents"].shape[1:]
            P = num_people(s)
            g = sample_generator(self.cfg.train.seed, pos)
            g.manual_seed(g.initial_seed() + 7919)                  # persons 2..P: a stream of their own
            pa, pf = [a0], [f0]
            for k in range(2, P + 1):
                a, fl = s[f"person{k}.arcface"], s[f"person{k}.face_latent"]
                n_ref = a.shape[0] if a.ndim == 2 else 1
                r = int(torch.randint(n_ref, (), generator=g)) if self.cfg.data.reference == "random" else 0
                pa.append((a[r] if a.ndim == 2 else a).float())
                pf.append((fl[r] if fl.ndim == 5 else fl).float())
            region = s["person_mask"].float() if P > 1 else torch.ones(1, T, h, w)
            share = self.cfg.data.automatic_binding
            if P > 1 and share > 0 and bool(torch.rand((), generator=g) < share):     # drawn only when asked
                region = left_to_right_regions(region)
            arcs.append(torch.stack(pa + [a0] * (K - P)))
            flats.append(torch.stack(pf + [f0] * (K - P)))
            regions.append(torch.cat([region, region.new_zeros(K - P, T, h, w)]))
        return People(torch.stack(arcs), torch.stack(flats), torch.stack(regions))

    # ------------------------------------------------------------------ loss
    def losses(self, module: nn.Module, b: Batch) -> dict:
        """Per-sample terms, each [B] float32: "loss" (total), "flow", "lvpl" (0 where not applied), "lvpl_on"."""
        x_t = flow.add_noise(b.x0, b.noise, b.sigma)
        args = (x_t, flow.timesteps(b.sigma), b.context, b.arcface, b.face_latent, b.identity_mask)
        v = module(*args) if b.people is None else module(*args, b.people)
        target = flow.velocity_target(b.x0, b.noise)
        flow_loss = (v.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        lv = self.cfg.objective.lvpl
        lvpl = torch.zeros_like(flow_loss)
        on = (b.sigma <= lv.max_sigma) if (self.lvpl is not None and lv.weight > 0) else torch.zeros_like(b.sigma, dtype=torch.bool)
        if on.any():
            idx = on.nonzero().flatten()
            x0_hat = flow.predict_x0(x_t[idx], v[idx], b.sigma[idx])
            mask = b.face_mask[idx] if b.face_mask is not None else None
            lvpl = lvpl.index_put((idx,), self.lvpl(x0_hat, b.x0[idx], mask, b.has_mask[idx]).float())
        total = flow_loss + lv.weight * lvpl
        return {"loss": total, "flow": flow_loss, "lvpl": lvpl, "lvpl_on": on.float()}


class MoCATrainModule(nn.Module):
    """What DDP/FSDP wrap: the MoCADiT (with its adapter) and optional LoRA; identity tokens are made inside
    forward so the tokenizer trains with the rest."""

    def __init__(self, dit: nn.Module, lora: nn.Module | None = None):
        super().__init__()
        self.dit = dit
        self.lora = lora

    def forward(self, x_t, t, context, arcface, face_latent, identity_mask, people: People | None = None):
        if people is None:
            identity = self.dit.adapter.tokenizer(arcface=arcface, face_latent=face_latent)     # [B, M, D_id]
        else:                                   # several people: each identity bound to its region
            K = people.arcface.shape[1]
            tokens = self.dit.adapter.tokenizer(arcface=people.arcface.flatten(0, 1),
                                                face_latent=people.face_latent.flatten(0, 1))  # [B*K, M, D_id]
            tokens = tokens.unflatten(0, (-1, K))                                               # [B, K, M, D_id]
            identity = RegionalIdentity([tokens[:, k] for k in range(K)],
                                        masks=[people.region[:, k] for k in range(K)])     # [B, T, h, w] each
        return self.dit(x_t, t, context, identity=identity, identity_mask=identity_mask)
