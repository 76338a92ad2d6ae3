"""The toy world's Wan 2.1-layout VAE: a narrow `moca_model.wan_vae.WanVAE` trained on toy clips.

Shipped (2026-12-01): toy_models/vae/toy_wan_vae.safetensors, width 8, 0.92M parameters, 1.9 MB in fp16, 7,000
steps (~4,000 s of one CPU core; the run was planned for 12,000 steps and shortened on resume, at steps 1,500
and 3,000, to fit the session: the cosine schedule shrank from there). On 32 held-out clips: 22.9 dB
[21.9, 23.9] mean PSNR (worst clip 16.5 dB); the evaluation recogniser's likeness to the person's reference
photo is 0.57 on the reconstructions against 0.88 on the original clips (0.23 after 750 steps, 0.39 after
2,000, 0.63 on 8 clips after 5,500) - identity survives, blurred; it caps any toy video's likeness.
What the recipe rests on (PSNR of reconstructions, one CPU thread):
- the reconstruction loss is MSE. With L1 (+ edge L1) the VAE learned ~5x slower: over-fitting one 64x64
  crop reached 18.5 dB after 250 steps with L1 and 26.4 dB with MSE (40 dB after 1,000); on the training
  stream an L1 run was at 18.2 dB on a held-out clip after 5,500 steps;
- small batches (2 windows) learn ~3x more per CPU second than 6, at lr 5e-4 (2e-3 and 2e-4 were worse);
- init_for_training (below) keeps the decoder from starting dead;
- no moment loss while training (see Latent space).

Design
- Architecture: Wan 2.1's VAE exactly (causal 3-D convs, 4x time / 8x space, 16 latent channels, Wan's
  parameter names) at base width `dim` (Wan: 96), so ComfyUI's core "Load VAE" (0.8.0 reads the width from
  the weights; 0.3.64 assumes 96 and refuses it) and `moca_model.wan_vae.load_wan_vae` both take the file.
- Latent space: the toy DiT and the MoCA trainer see *normalised* latents (mu - WAN21_MEAN) / WAN21_STD,
  what ComfyUI's Wan21 latent format feeds the model. Training pulls nothing towards N(0, 1) (a moment loss
  cost ~1.4 dB after 500 steps: 15.9 vs 17.3 dB on a held-out clip); after training, `standardize_latents`
  folds an exact per-channel affine into the 1x1 convs around the latent so the normalised latents of
  training clips have mean 0 and std 1, without changing a single reconstruction. (Noise on the decoder's
  input, `noise_sigma`, is off: a learned posterior with a KL term drifted to sigma ~0.8 and the decoder
  learned to ignore the latent.)
- Loss: MSE (edge L1, moment matching and KL are there, weighted 0); bf16 autocast on the CPU.
- Data: clips rendered on the fly from TRAIN_IDS (a sliding pool; some two-person clips) - mostly random
  64x64 crops of 5-frame (1 + 4) windows (the convs are translation-equivariant, so crops teach the same
  weights far cheaper), some 17-frame 64x64 crops and full 17x128x128 clips (longer causal context, image
  borders), and single frames of reference photos at random zoom (the aligned face crops the identity path
  encodes). Held-out identities (HELDOUT_IDS) are used only for the evaluation.
- Resume: atomic checkpoints (`training.train_state`) every `checkpoint_every` steps; every batch and the
  posterior noise are drawn from generators seeded by (seed, step), so a resumed run equals an
  uninterrupted one bit for bit.

Entry points: `train_toy_vae(out_path, steps, seed, resume_dir)` (what `make toy` runs),
`load_toy_vae(path=None)`, `evaluate_vae(vae)`, and `python -m moca_model.toy.vae_train -h`.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..latents import WAN21_MEAN, WAN21_STD
from ..wan_vae import WanVAE, load_wan_vae

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO / "toy_models" / "vae" / "toy_wan_vae.safetensors"
FORMAT = "wan2.1-vae"
POOL_STREAM, REF_STREAM, BATCH_STREAM, NOISE_STREAM = 0x7AE1, 0x7AE2, 0x7AE3, 0x7AE4


@dataclass
class VAETrainConfig:
    dim: int = 8                     # base width (Wan: 96)
    steps: int = 7000
    batch: int = 2                   # windows per "window" step (small batches: more updates per CPU second)
    window: int = 5                  # frames per window (1 + 4: the first frame alone, then one chunk)
    crop: int = 64                   # crop size of window / long / image steps
    image_batch: int = 16            # single frames per "image" step
    long_batch: int = 2              # 17-frame crops per "long" step
    full_batch: int = 1              # 17x128x128 clips per "full" step
    cycle: str = "wwwwwwwiwwwwwwwf"  # step kinds, repeated: w window, i image, l long (17-frame crops), f full
    lr: float = 5e-4                 # held-out dB after 500 steps: 16.3 at 5e-4, 15.5 at 2e-3, 15.4 at 2e-4
    warmup: int = 20
    grad_clip: float = 10.0          # only against spikes: at 1.0 (every step clipped) L1 fell slower over 100 steps
    min_lr: float = 0.05             # cosine floor, as a fraction of lr
    recon: str = "mse"               # reconstruction loss: "mse" or "l1"
    edge_weight: float = 0.0         # L1 on finite differences in x and y
    kl_weight: float = 0.0           # KL of the (unused) log-variance half; logged only at 0
    noise_sigma: float = 0.0         # noise on the decoder's input, in normalised latent units (0: none)
    moment_weight: float = 0.0       # pull the normalised latents to N(0, 1) while training (0: standardise after)
    pool: int = 192                  # clips held at a time
    new_per_step: float = 0.5        # clips that enter the pool per step
    two_person: float = 0.15         # fraction of two-person clips
    checkpoint_every: int = 250
    amp: bool = True                 # bf16 autocast (CPU AMX); losses in fp32
    compile: bool = False            # torch.compile the encoder / decoder in place (eager if it fails)
    init_sigma: float = 0.05         # initial posterior std in normalised latent units (conv1's log_var bias)

    def __post_init__(self):
        if self.recon not in ("mse", "l1"):
            raise ValueError(f"VAE training: recon={self.recon!r}; choose 'mse' or 'l1'")

    @classmethod
    def from_dict(cls, d: dict) -> "VAETrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown VAE training settings {unknown}; known: {sorted(names)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------- data
def _rng(*key) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


class ClipPool:
    """Clip k of the stream is a deterministic function of (seed, k); at step s the pool holds clips
    [floor(s * rate), floor(s * rate) + size). Rendered on demand, forgotten when they leave the window."""

    def __init__(self, seed: int, size: int, rate: float, two_person: float, ids=None):
        from . import world
        self.world = world
        self.ids = list(ids if ids is not None else world.TRAIN_IDS)
        self.seed, self.size, self.rate, self.two_person = seed, size, rate, two_person
        self.cache: dict[int, np.ndarray] = {}

    def window(self, step: int) -> range:
        lo = int(math.floor(step * self.rate))
        return range(lo, lo + self.size)

    def clip(self, k: int) -> np.ndarray:
        """[T, H, W, 3] uint8."""
        if k not in self.cache:
            r = _rng(POOL_STREAM, self.seed, k)
            a, b = (self.ids[int(i)] for i in r.integers(len(self.ids), size=2))
            cs = int(r.integers(1 << 30))
            if r.random() < self.two_person and a != b:
                self.cache[k] = self.world.make_two_person_clip((a, b), cs).frames
            else:
                self.cache[k] = self.world.make_clip(a, cs).frames
        return self.cache[k]

    def forget_before(self, k0: int):
        for k in [k for k in self.cache if k < k0]:
            del self.cache[k]


def _to_video(frames: np.ndarray) -> torch.Tensor:
    """[..., T, H, W, 3] uint8 -> [..., 3, T, H, W] float in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return x.movedim(-1, -4)


KINDS = {"w": "window", "i": "image", "l": "long", "f": "full"}


def step_kind(step: int, cfg: VAETrainConfig) -> str:
    return KINDS[cfg.cycle[step % len(cfg.cycle)]]


def make_batch(step: int, cfg: VAETrainConfig, pool: ClipPool, seed: int) -> tuple[str, torch.Tensor]:
    """(kind, video [B, 3, T, H, W] in [-1, 1]) for this step; a function of (seed, step) only."""
    kind = step_kind(step, cfg)
    r = _rng(BATCH_STREAM, seed, step)
    win = pool.window(step)
    pool.forget_before(win.start)
    out = []
    if kind == "image":
        from PIL import Image
        for _ in range(cfg.image_batch):
            pid = pool.ids[int(r.integers(len(pool.ids)))]
            img = pool.world.make_reference(pid, int(r.integers(1 << 30))).image            # [256, 256, 3]
            s = int(r.integers(cfg.crop + 16, img.shape[0] + 1))
            img = np.asarray(Image.fromarray(img).resize((s, s), Image.BILINEAR))
            y, x = (int(v) for v in r.integers(0, s - cfg.crop + 1, size=2))
            out.append(img[None, y:y + cfg.crop, x:x + cfg.crop])
    else:
        n, T, crop = {"window": (cfg.batch, cfg.window, cfg.crop), "long": (cfg.long_batch, None, cfg.crop),
                      "full": (cfg.full_batch, None, None)}[kind]
        for k in r.choice(np.asarray(win), size=n, replace=False):
            frames = pool.clip(int(k))
            t_len = T or frames.shape[0]
            t0 = int(r.integers(0, frames.shape[0] - t_len + 1))
            c = crop or frames.shape[1]
            y, x = (int(v) for v in r.integers(0, frames.shape[1] - c + 1, size=2))
            out.append(frames[t0:t0 + t_len, y:y + c, x:x + c])
    batch = np.stack(out)
    flip = r.random(len(out)) < 0.5
    batch[flip] = batch[flip][:, :, :, ::-1]
    return kind, _to_video(batch)


# ---------------------------------------------------------------------------------------------- loss
def _stats():
    shape = (1, 16, 1, 1, 1)
    return (torch.tensor(WAN21_MEAN, dtype=torch.float32).view(shape),
            torch.tensor(WAN21_STD, dtype=torch.float32).view(shape))


def latent_shape(video_shape) -> tuple:
    B, _, T, H, W = video_shape
    return (B, 16, 1 + (T - 1) // 4, H // 8, W // 8)


def vae_losses(vae: WanVAE, video: torch.Tensor, cfg: VAETrainConfig, eps: torch.Tensor | None) -> dict:
    """Loss terms for one batch (video [B, 3, T, H, W] in [-1, 1]; eps: standard normal noise shaped like the
    latents, or None to decode mu); 'loss' is their weighted sum."""
    mean, std = _stats()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp):
        mu, log_var = vae.encode_moments(video)                                # raw, [B, 16, t, h, w]
    mu_n = (mu.float() - mean) / std                                           # what the DiT sees
    lv_n = log_var.float().clamp(-30.0, 20.0) - 2 * std.log()
    z_n = mu_n
    if eps is not None and cfg.noise_sigma > 0:  # a fixed level: a learned posterior drifted to sigma ~0.8 on
        z_n = mu_n + cfg.noise_sigma * eps        # toy clips and the decoder learned to ignore the latent

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp):
        rec = vae.decode(z_n * std + mean)
    rec = rec.float()
    l1 = (rec - video).abs().mean()
    mse = (rec - video).square().mean()
    edge = ((rec.diff(dim=-1) - video.diff(dim=-1)).abs().mean() +
            (rec.diff(dim=-2) - video.diff(dim=-2)).abs().mean())
    kl = 0.5 * (mu_n.square() + lv_n.exp() - 1.0 - lv_n).mean()
    dims = (0, 2, 3, 4)
    moment = (mu_n.mean(dim=dims).square() + (mu_n.std(dim=dims) - 1.0).square()).mean()
    loss = (mse if cfg.recon == "mse" else l1) + cfg.edge_weight * edge + cfg.kl_weight * kl + cfg.moment_weight * moment
    return {"loss": loss, "l1": l1, "mse": mse, "edge": edge, "kl": kl, "moment": moment,
            "sigma": (0.5 * lv_n).exp().mean()}


def init_for_training(vae: WanVAE, cfg: VAETrainConfig) -> WanVAE:
    """Variance-preserving init (every conv: He-normal with unit gain, zero bias; PyTorch's default shrinks the
    variance 3x per conv, so after the decoder's up-sampling convs the image signal was 12x smaller than the
    bias offset), then:
    - the 1x1 convs on either side of the latent start as Wan 2.1's latent normalisation: conv1 maps the
      encoder head's output h to mu = h * WAN21_STD + WAN21_MEAN, conv2 maps a raw latent back to
      (z - WAN21_MEAN) / WAN21_STD. Without this the decoder starts on a large constant offset (the raw latent
      mean) that its head's channel RMS norm turns into the same vector at every pixel: the decoder put out one
      flat colour and stayed there (L1 0.43 after 300 steps; it learns from the first steps with this init);
    - every residual branch's last conv and every attention output projection start at zero (each block
      starts as its shortcut);
    - conv1's log_var half starts at sigma = init_sigma in normalised latent units."""
    from ..wan_vae import AttentionBlock, ResidualBlock
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in (WAN21_MEAN, WAN21_STD))
    z = vae.z_dim
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                torch.nn.init.zeros_(m.bias)
        for m in vae.modules():
            last = m.residual[6] if isinstance(m, ResidualBlock) else m.proj if isinstance(m, AttentionBlock) else None
            if last is not None:
                last.weight.zero_()
                last.bias.zero_()
        vae.conv1.weight.zero_()
        vae.conv1.weight[:z, :z].copy_(torch.diag(std).view(z, z, 1, 1, 1))
        vae.conv1.bias[:z] = mean
        vae.conv1.bias[z:] = 2 * torch.log(cfg.init_sigma * std)
        vae.conv2.weight.copy_(torch.diag(1.0 / std).view(z, z, 1, 1, 1))
        vae.conv2.bias.copy_(-mean / std)
    return vae


class _LossFn:
    """vae_losses, through torch.compile when cfg.compile (inductor fuses the many elementwise ops of the norms,
    SiLUs and pads, ~2x on a CPU); falls back to eager, once and for good, if compiling fails."""

    def __init__(self, vae, cfg, log):
        self.eager = functools.partial(vae_losses, vae, cfg=cfg)
        self.fn = torch.compile(self.eager, dynamic=False) if cfg.compile else self.eager  # one graph per shape
        self.log = log

    def __call__(self, video, eps):
        if self.fn is not self.eager:
            try:
                return self.fn(video, eps=eps)
            except Exception as e:                      # no C++ compiler, unsupported platform, ...
                self.log(f"[toy-vae] torch.compile failed ({type(e).__name__}: {str(e)[:200]}); training eagerly")
                self.fn = self.eager
        return self.eager(video, eps=eps)


# ---------------------------------------------------------------------------------------------- checkpoints
def _named_optimizer_state(model, opt) -> dict:
    """optimizer.state_dict() with parameter names instead of positions (what train_state stores)."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    sd = opt.state_dict()
    state = {order[i]: st for i, st in sd["state"].items()}
    groups = [dict(g, params=[order[i] for i in g["params"]]) for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def _load_named_optimizer_state(model, opt, named: dict):
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    pos = {n: i for i, n in enumerate(order)}
    groups = [dict(g, params=[pos[n] for n in g["params"]]) for g in named["param_groups"]]
    opt.load_state_dict({"state": {pos[n]: st for n, st in named["state"].items()}, "param_groups": groups})


def lr_at(step: int, cfg: VAETrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * p)))


def train_vae(cfg: VAETrainConfig, seed: int = 0, resume_dir=None, log=print, ids=None,
              stop_at: int | None = None) -> WanVAE:
    """Train (or resume from the newest checkpoint in resume_dir) and return the model (fp32, eval).
    `stop_at` ends this call after that step (with a checkpoint), as an interruption would."""
    from ..training.train_state import flatten_optimizer, list_checkpoints, load_checkpoint, save_checkpoint
    torch.manual_seed(seed)
    vae = init_for_training(WanVAE(dim=cfg.dim), cfg)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    start = 0
    ckpts = list_checkpoints(resume_dir) if resume_dir else []
    if ckpts:
        ck = load_checkpoint(ckpts[-1])
        # the total steps may change on resume (the cosine schedule then shrinks or stretches from there)
        free = ("checkpoint_every", "steps")
        saved = {k: v for k, v in ck["state"].get("config", {}).items() if k not in free}
        if saved != {k: v for k, v in asdict(cfg).items() if k not in free} or ck["state"]["seed"] != seed:
            raise ValueError(f"{ckpts[-1]} was written with other settings (config {saved}, seed "
                             f"{ck['state'].get('seed')}); use another resume_dir or the same settings")
        vae.load_state_dict(ck["model"])
        _load_named_optimizer_state(vae, opt, ck["optimizer"])
        start = int(ck["state"]["step"])
        log(f"[toy-vae] resumed from {ckpts[-1]} (step {start})")
    pool = ClipPool(seed, cfg.pool, cfg.new_per_step, cfg.two_person, ids)
    loss_fn = _LossFn(vae, cfg, log)
    vae.train()
    t0, cpu0, hist = time.perf_counter(), time.process_time(), []
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    for step in range(start, end):
        kind, video = make_batch(step, cfg, pool, seed)
        noise = torch.Generator().manual_seed(int(_rng(NOISE_STREAM, seed, step).integers(1 << 62)))
        eps = torch.randn(latent_shape(video.shape), generator=noise)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        terms = loss_fn(video, eps)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        hist.append({k: float(v.detach()) for k, v in terms.items()})
        done = step + 1
        if done % 25 == 0 or done == cfg.steps:
            last = hist[-25:]
            avg = {k: sum(h[k] for h in last) / len(last) for k in last[0]}
            log(f"[toy-vae] step {done}/{cfg.steps} " + " ".join(f"{k} {v:.4g}" for k, v in avg.items()) +
                f" ({(time.perf_counter() - t0) / len(hist):.2f} s/step, cpu {time.process_time() - cpu0:.0f} s)")
        if resume_dir and (done % cfg.checkpoint_every == 0 or done == end):
            ot, og = flatten_optimizer(_named_optimizer_state(vae, opt))
            save_checkpoint(resume_dir, done, vae.state_dict(), ot, og, None,
                            {"seed": seed, "config": asdict(cfg)}, keep_last=2)
    return vae.eval()


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_vae(vae: WanVAE, n_clips: int = 32, batch: int = 4, ids=None, clip_seed: int = 0, judge=None) -> dict:
    """Reconstruction PSNR (uint8 frames, per clip, then mean and a 95% interval) on 17x128x128 clips of
    held-out identities, per-channel mean / std of the normalised latents, and encode / decode seconds
    per clip (in batches of `batch`, on the threads torch has). With a `judge` (a FaceAnalyzer, e.g. the
    evaluation recogniser), also the mean likeness of the original and of the reconstructed clips to the
    person's reference photo: what the VAE leaves of identity, the ceiling of any model decoded by it."""
    from . import world
    from ..latents import normalize_latent
    ids = list(ids if ids is not None else world.HELDOUT_IDS)[:n_clips]
    psnr, lat, t_enc, t_dec, like = [], [], 0.0, 0.0, {"original": [], "reconstructed": []}
    vae = vae.eval()
    for i in range(0, len(ids), batch):
        frames = np.stack([world.make_clip(pid, clip_seed).frames for pid in ids[i:i + batch]])
        video = _to_video(frames)
        t = time.perf_counter()
        mu = vae.encode(video)
        t_enc += time.perf_counter() - t
        t = time.perf_counter()
        rec = vae.decode(mu)
        t_dec += time.perf_counter() - t
        rec8 = ((rec.clamp(-1, 1) + 1) * 127.5).round()
        ref8 = _to_video(frames).add(1).mul(127.5).round()
        mse = (rec8 - ref8).square().mean(dim=(1, 2, 3, 4))
        psnr += (10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))).tolist()
        lat.append(normalize_latent(mu))
        if judge is not None:
            from .metrics import likeness
            for j, pid in enumerate(ids[i:i + batch]):
                ref = world.make_reference(pid, 0).image
                like["original"].append(likeness(judge, frames[j], ref).mean)
                like["reconstructed"].append(likeness(judge, rec8[j].permute(1, 2, 3, 0).byte().numpy(), ref).mean)
    z = torch.cat(lat)
    p = np.asarray(psnr)
    half = 1.96 * p.std(ddof=1) / math.sqrt(len(p)) if len(p) > 1 else float("nan")
    return {"psnr_db": round(float(p.mean()), 2), "psnr_ci95": [round(float(p.mean() - half), 2),
                                                               round(float(p.mean() + half), 2)],
            "psnr_min_db": round(float(p.min()), 2), "clips": len(p),
            "latent_mean": [round(v, 3) for v in z.mean(dim=(0, 2, 3, 4)).tolist()],
            "latent_std": [round(v, 3) for v in z.std(dim=(0, 2, 3, 4)).tolist()],
            "encode_s_per_clip": round(t_enc / len(p), 3), "decode_s_per_clip": round(t_dec / len(p), 3),
            **({f"likeness_{k}": round(float(np.mean(v)), 4) for k, v in like.items()} if judge is not None else {})}


def default_judge():
    """The shipped evaluation recogniser behind the toy detector (None when the toy face pack is missing)."""
    from .pipeline import FACE_PACK, FILES
    if not (Path(FILES["eval_recogniser"]).is_file() and (Path(FILES["insightface"]) / "models" / FACE_PACK).is_dir()):
        return None
    from .metrics import eval_analyzer
    return eval_analyzer(FILES["insightface"], FACE_PACK, FILES["eval_recogniser"])


# ---------------------------------------------------------------------------------------------- files
def save_toy_vae(path, vae: WanVAE, metadata: dict | None = None, dtype=torch.float16) -> Path:
    """Write the VAE as a plain Wan 2.1 VAE file (Wan's key names, fp16) with a descriptive header."""
    from ..checkpoint import atomic_save_safetensors
    header = {"format": FORMAT, "format_version": "1", "width": str(vae.dim), "z_dim": str(vae.z_dim),
              "written_by": "moca_model.toy.vae_train"}
    header.update(metadata or {})
    sd = {k: v.detach().to(dtype) for k, v in vae.state_dict().items()}
    return atomic_save_safetensors(sd, path, header, overwrite=True)


def load_toy_vae(path=None, device="cpu", dtype=torch.float32) -> WanVAE:
    """The shipped toy VAE (default toy_models/vae/toy_wan_vae.safetensors) as a WanVAE in eval mode."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build it with `python -m moca_model.toy build --stages vae` "
                                "(or `python -m moca_model.toy.vae_train`)")
    return load_wan_vae(path, device=device, dtype=dtype)


@torch.no_grad()
def latent_moments(vae: WanVAE, videos, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [16] of the normalised latents (mu - WAN21_MEAN) / WAN21_STD over `videos`
    (an iterable of [B, 3, T, H, W] batches in [-1, 1])."""
    mean, std = _stats()
    s1 = s2 = 0.0
    n = 0
    for video in videos:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            mu = vae.encode(video)
        z = ((mu.float() - mean) / std).transpose(0, 1).reshape(mu.shape[1], -1)      # [16, N]
        s1, s2, n = s1 + z.double().sum(1), s2 + z.double().square().sum(1), n + z.shape[1]
    m = s1 / n
    return m.float(), (s2 / n - m.square()).clamp_min(1e-12).sqrt().float()


@torch.no_grad()
def standardize_latents(vae: WanVAE, m: torch.Tensor, s: torch.Tensor) -> WanVAE:
    """Fold an exact per-channel affine into the 1x1 convs around the latent so the normalised latents have
    mean 0 and std 1 where they had (m, s): the encoder's mu rows of conv1 map to M + (mu - M - S m) / s and
    conv2 undoes it, so reconstructions do not change (M, S: WAN21_MEAN / STD). This is what makes the
    latents fit ComfyUI's fixed Wan 2.1 latent normalisation without a moment loss while training."""
    M, S = (t.view(-1) for t in _stats())
    z = vae.z_dim
    w1, b1 = vae.conv1.weight, vae.conv1.bias                                  # [2z, 2z, 1, 1, 1], [2z]
    w1[:z] /= s.view(z, 1, 1, 1, 1)
    b1[:z] = M + (b1[:z] - M - S * m) / s
    d = M * (1 - s) + S * m                                                    # z_raw = s * z' + d
    w2, b2 = vae.conv2.weight, vae.conv2.bias                                  # [z, z, 1, 1, 1], [z]
    b2 += (w2.view(z, z) @ d)
    w2 *= s.view(1, z, 1, 1, 1)
    return vae


def train_toy_vae(out_path=None, steps: int | None = None, seed: int = 0, resume_dir=None, *,
                  config: VAETrainConfig | dict | None = None, eval_clips: int = 32, log=print) -> dict:
    """Train (resuming from resume_dir if it holds checkpoints), evaluate on held-out identities, and write
    `out_path` (default toy_models/vae/toy_wan_vae.safetensors). Returns the figures (also in the header)."""
    cfg = config if isinstance(config, VAETrainConfig) else VAETrainConfig.from_dict(dict(config or {}))
    if steps is not None:
        cfg.steps = int(steps)
    out_path = Path(out_path) if out_path is not None else DEFAULT_PATH
    t0, cpu0 = time.perf_counter(), time.process_time()
    vae = train_vae(cfg, seed=seed, resume_dir=resume_dir, log=log)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    from . import world
    stats_ids = list(world.TRAIN_IDS)[:64]                                     # training people, fresh clips
    m, s = latent_moments(vae, (_to_video(np.stack([world.make_clip(pid, 7000 + i).frames for pid in stats_ids[i:i + 4]]))
                                for i in range(0, len(stats_ids), 4)))
    standardize_latents(vae, m, s)
    log(f"[toy-vae] latents standardised (before: mean {m.abs().max():.3f} max |.|, std {s.min():.3f}..{s.max():.3f})")
    shipped = load_wan_vae({k: v.half() for k, v in vae.state_dict().items()})   # what the file will hold
    figures = evaluate_vae(shipped, n_clips=eval_clips, judge=default_judge()) if eval_clips else {}
    figures.update({"width": cfg.dim, "params": sum(p.numel() for p in vae.parameters()), "steps": cfg.steps,
                    "seed": seed, "train_wall_s": round(train_s, 1), "train_cpu_s": round(train_cpu, 1),
                    "threads": torch.get_num_threads(), "config": asdict(cfg)})
    save_toy_vae(out_path, vae, {"steps": str(cfg.steps), "seed": str(seed), "figures": json.dumps(figures)})
    log(f"[toy-vae] wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB): "
        + json.dumps({k: v for k, v in figures.items() if k != "config"}))
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moca_model.toy.vae_train",
                                 description="Train / evaluate the toy world's Wan 2.1-layout VAE.")
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume-dir", default=None, help="checkpoint folder (resumes from its newest checkpoint)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="VAETrainConfig overrides")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-only", action="store_true", help="evaluate --out and print the figures")
    ap.add_argument("--eval-clips", type=int, default=32)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.eval_only:
        print(json.dumps(evaluate_vae(load_toy_vae(a.out), n_clips=a.eval_clips, judge=default_judge()), indent=1))
        return 0
    overrides = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    train_toy_vae(a.out, a.steps, a.seed, a.resume_dir, config=overrides, eval_clips=a.eval_clips)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
