"""Periodic validation: sample a video for a fixed training sample with the standalone sampler, write it as
mp4 (latent preview colours via `latent_to_rgb`), log the fixed-draw eval loss and, when a face model
root is configured and `moca_model.face` is available, the likeness score of the frames to the reference.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from ..latents import latent_to_rgb
from ..sampling import make_noise, sample
from ..video import write_video


@functools.lru_cache(maxsize=2)
def _face_analyzer(root: str, pack: str):
    try:
        from ..face import FaceAnalyzer
    except ImportError:
        warnings.warn("validation.face_models is set but moca_model.face is not available in this checkout; "
                      "no likeness score", stacklevel=2)
        return None
    return FaceAnalyzer.load(root, pack=pack)


def likeness_to_embedding(root: str, pack: str, frames: torch.Tensor, arcface: torch.Tensor) -> float | None:
    """Mean cosine similarity between ArcFace embeddings of the faces found in frames [T, H, W, 3] and the
    sample's reference embedding(s); None when no face model or no face is found (a latent preview is
    usually too blurry for detection: configure a VAE decode for meaningful scores)."""
    analyzer = _face_analyzer(root, pack)
    if analyzer is None:
        return None
    try:
        ident = analyzer.encode(list((frames.clamp(0, 1) * 255).byte().numpy()), on_no_face="skip", fusion="separate")
    except Exception as e:  # no face at all, or a face-model problem: never stop training for a metric
        warnings.warn(f"likeness score skipped: {e}", stacklevel=2)
        return None
    emb = torch.nn.functional.normalize(torch.as_tensor(ident.embeddings).float(), dim=-1)        # [F, 512]
    ref = torch.nn.functional.normalize(arcface.float().reshape(-1, 512), dim=-1).mean(0)
    return float((emb @ torch.nn.functional.normalize(ref, dim=0)).mean())


class _SamplerView:
    """MoCADiT's call signature on top of MoCATrainModule (identity tokens come from the fixed reference)."""

    def __init__(self, module, arcface, face_latent):
        self.module, self.arcface, self.face_latent = module, arcface, face_latent

    def __call__(self, x, timestep, context, identity=None, moca_options=None, identity_mask=None):
        B = x.shape[0]
        if identity is None:
            mask = x.new_zeros(B)
        else:
            mask = identity_mask if identity_mask is not None else x.new_ones(B)
        return self.module(x, timestep, context, self.arcface.expand(B, -1), self.face_latent.expand(B, -1, -1, -1, -1),
                           mask)


@torch.no_grad()
def run_validation(trainer) -> dict:
    c, v = trainer.cfg, trainer.cfg.validation
    fsdp = c.train.strategy == "fsdp" and trainer.dist.enabled
    if not (fsdp or trainer.dist.is_main):          # DDP: rank 0 alone, on the unwrapped module
        trainer.dist.barrier()
        return {}
    module = trainer.module
    was_training = module.training
    module.eval()
    try:
        loss = trainer.eval_loss()
        out = {"val/eval_loss": loss}
        gain = trainer.identity_gain(matched=loss) if v.identity_gain else None
        if gain is not None:
            out["val/identity_gain"] = gain
        if v.video:
            out.update(_validation_video(trainer, module, fsdp))
        if trainer.dist.is_main:
            trainer._scalars(out, trainer.step)
        return out
    finally:
        module.train(was_training)
        if not fsdp:
            trainer.dist.barrier()


def _validation_video(trainer, module, fsdp: bool) -> dict:
    """Sample the fixed validation sample's video, write it, and score its likeness when configured."""
    c, v = trainer.cfg, trainer.cfg.validation
    s = trainer.dataset[v.sample % len(trainer.dataset)]
    dev = trainer.device
    dt = next(p for p in module.parameters() if p.requires_grad).dtype
    obj = trainer.objective
    ctx = obj._pad_text(s["text"])[None].to(dev, dt)
    neg = obj._pad_text(obj.empty_text)[None].to(dev, dt)
    a, fl = s["arcface"], s["face_latent"]
    arc = (a[0] if a.ndim == 2 else a)[None].to(dev, dt)
    face = (fl[0] if fl.ndim == 5 else fl)[None].to(dev, dt)
    with trainer._autocast():
        # Through the (possibly FSDP-wrapped) training module: it makes the identity tokens itself, and
        # identity_mask = 0 gives the backbone for the sampler's passes without identity.
        noise = make_noise((1, *s["latents"].shape), v.seed, device=dev, dtype=dt)
        z = sample(_SamplerView(trainer.model if fsdp else module, arc, face), noise, ctx, neg,
                   torch.zeros(1, 1, 1, device=dev, dtype=dt), steps=v.steps, text_cfg=v.text_cfg,
                   id_cfg=v.id_cfg, shift=v.shift, progress=False)
    frames = latent_to_rgb(z.float())[0]                                       # [T, H, W, 3]
    out = {}
    if trainer.dist.is_main:
        path = Path(c.out_dir) / "validation" / f"step_{trainer.step:08d}.mp4"
        write_video(path, frames, fps=v.fps, overwrite=True)  # a resumed run redoes its own step
        if v.face_models:
            score = likeness_to_embedding(v.face_models, v.face_pack, frames, s["arcface"])
            if score is not None:
                out["val/likeness"] = score
        trainer.log(f"[moca-train] validation video {path}")
    return out
