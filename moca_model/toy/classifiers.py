"""The toy world's video classifiers: action, background and lighting of a clip (prompt adherence).

One small (2+1)-D CNN with two streams and three heads (``ToyClassifier``, ~91 k parameters, ~0.37 MB):

* input (``prepare``): a clip [T, H, W, 3] (T >= 3, any size; the world's is 17 x 128 x 128) as two
  64 x 64 streams - the whole frame (area-averaged, every 2nd frame: scene, lighting, head motion) and its
  central half at full resolution (every frame: smiles, open mouths, blinks). Every frame is fed with its
  difference to the previous one (x4), so motion direction is visible locally (the sign of a difference
  against the image gradient says which way an edge moved);
* per stream, a per-frame 2-D trunk: a 4x4 stride-4 patch conv (6 -> w/2 channels, 16 px), then 3x3
  conv-BN-ReLU layers w/2 -> w (stride 2, 8 px) -> w, with w = 48 (whole frame) and 32 (centre);
* temporal mixing: two residual 1-D convolutions over time (kernel 3, dilations 1 and 2) per 8x8 cell;
* pooling: a 2x2 spatial grid (where the face is matters for move_across / zoom), then over time the
  mean, the max, and the late-minus-early mean (last quarter minus first quarter: which way the head
  turned, whether it grew, whether the mouth opened);
* heads: linear layers on both streams' features to ACTIONS (9), BACKGROUNDS (9) and LIGHTINGS (4).

Training (``train_classifiers``): clips of TRAIN_IDS only, rendered once to ``<data>/`` as uint8 ``prepare``
output in ``.npz`` shards (resumable), AdamW + cosine, batch 32, exact resume from atomic checkpoints
(``training.train_state``). Augmentation makes it robust to what generated videos look like after a small
VAE: Gaussian blur, down/up-scaling, small per-channel colour gains (+-6%, far below the lighting classes'
differences), brightness offsets, noise; and horizontal flips that swap turn_left / turn_right. Held-out
accuracy (HELDOUT_IDS, clean and degraded) goes into the safetensors metadata.

    python -m moca_model.toy.classifiers train --data /work/toydata/cls   # ~1000 CPU-s on 1 core; writes toy_models/eval/...
    python -m moca_model.toy.classifiers eval                                # held-out accuracy of the shipped file

    from moca_model.toy.classifiers import classify
    classify(clip.frames)          # {"action": ("nod", {"turn_left": 0.01, ...}), "background": ..., "lighting": ...}
"""
from __future__ import annotations

import argparse
import json
import math
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO / "toy_models" / "eval" / "toy_classifiers.safetensors"
DEFAULT_DATA = REPO / "runs" / "toy" / "cls"
SIZE = 64
HEADS = ("action", "background", "lighting")
FORMAT = "moca-toy-classifiers"
VERSION = 2
TRAIN_CLIP_SEED0 = 7000          # clip seeds of the classifier's own training clips (other models use 0, 1, ...)
EVAL_CLIP_SEED0 = 9000           # clip seeds of the held-out evaluation clips
SHARD = 250
DIFF_GAIN = 4.0
DATA_VERSION = 2                 # what render_set stores (2: whole frame + centre crop)


def labels() -> dict:
    from . import world
    return {"action": tuple(world.ACTIONS), "background": tuple(world.BACKGROUNDS), "lighting": tuple(world.LIGHTINGS)}


# ---------------------------------------------------------------------------------------------- model
def _cbr(cin, cout, k, stride, pad):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TemporalBlock(nn.Module):
    def __init__(self, c: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv3d(c, c, (3, 1, 1), padding=(dilation, 0, 0), dilation=(dilation, 1, 1), bias=False)
        self.bn = nn.BatchNorm3d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class Stream(nn.Module):
    """Per-frame 2-D trunk on [frame, difference to the previous frame], temporal convs, 2x2 x time pooling."""

    def __init__(self, width: int, frame_stride: int):
        super().__init__()
        self.frame_stride = int(frame_stride)
        self.trunk = nn.Sequential(_cbr(6, width // 2, 4, 4, 0), _cbr(width // 2, width, 3, 2, 1),
                                   _cbr(width, width, 3, 1, 1))
        self.temporal = nn.Sequential(TemporalBlock(width, 1), TemporalBlock(width, 2))
        self.dim = width * 4 * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, 3, 64, 64] float 0..1 (every frame; strided here) -> [B, dim]."""
        x = x[:, ::self.frame_stride]
        B, T = x.shape[:2]
        diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1) * DIFF_GAIN
        h = self.trunk(torch.cat([x * 2 - 1, diff], 2).flatten(0, 1))          # [B*T, C, 8, 8]
        h = self.temporal(h.unflatten(0, (B, T)).transpose(1, 2))               # [B, C, T, 8, 8]
        h = F.adaptive_avg_pool3d(h, (T, 2, 2)).flatten(3).transpose(2, 3).flatten(1, 2)   # [B, C*4, T]
        q = max(1, T // 4)
        return torch.cat([h.mean(2), h.amax(2), h[..., -q:].mean(2) - h[..., :q].mean(2)], 1)


class ToyClassifier(nn.Module):
    """Two streams - the whole frame at 64 px (every 2nd frame) and the central half of the frame at full
    resolution (every frame: expressions, blinks) - and one linear head per task on their features."""

    def __init__(self, num_classes: dict, width: int = 48, centre_width: int = 32):
        super().__init__()
        self.full = Stream(width, 2)
        self.centre = Stream(centre_width, 1)
        self.drop = nn.Dropout(0.2)
        self.heads = nn.ModuleDict({k: nn.Linear(self.full.dim + self.centre.dim, n) for k, n in num_classes.items()})

    def forward(self, x: torch.Tensor) -> dict:
        """x: [B, T, 6, 64, 64] (``prepare``: whole frame RGB, centre RGB) -> head -> logits [B, classes]."""
        f = self.drop(torch.cat([self.full(x[:, :, :3]), self.centre(x[:, :, 3:])], 1))
        return {k: head(f) for k, head in self.heads.items()}


# ---------------------------------------------------------------------------------------------- inputs
def _to_tensor(clip) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(clip)) if isinstance(clip, np.ndarray) else torch.as_tensor(clip)
    t = t.detach().cpu()
    return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()


def _resize(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, h, w] -> [N, 3, 64, 64]: area averaging when shrinking, bilinear when growing."""
    if tuple(x.shape[-2:]) == (SIZE, SIZE):
        return x
    if x.shape[-2] >= SIZE and x.shape[-1] >= SIZE:
        return F.adaptive_avg_pool2d(x, SIZE)
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def prepare(clips) -> torch.Tensor:
    """Clip(s) -> [B, T, 6, 64, 64] float 0..1: the whole frame and its central half (H/2 x W/2, full
    resolution for the world's 128 px frames), each at 64 x 64. Accepts [T, H, W, 3] (one clip: numpy uint8
    or a ComfyUI IMAGE tensor float 0..1), [B, T, H, W, 3], or a list of clips of the same length."""
    if isinstance(clips, (list, tuple)):
        return torch.cat([prepare(c) for c in clips])
    x = _to_tensor(clips)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected clips [T, H, W, 3] or [B, T, H, W, 3], got {list(x.shape)}")
    B, T, H, W, _ = x.shape
    x = x.permute(0, 1, 4, 2, 3).flatten(0, 1)
    centre = x[:, :, H // 4:H // 4 + H // 2, W // 4:W // 4 + W // 2]
    out = torch.cat([_resize(x), _resize(centre)], 1)
    return out.unflatten(0, (B, T)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur [B, T, C, H, W] (H == W) with a per-clip sigma [B] (pixels; 0 = unchanged), reflect borders:
    one [H, H] blur matrix per clip, applied to rows and columns (two batched matmuls)."""
    B, T, C, H, W = x.shape
    r = 4
    k = torch.arange(-r, r + 1, dtype=x.dtype)
    w = torch.exp(-0.5 * (k[None] / sigma.to(x.dtype).clamp_min(1e-3)[:, None]) ** 2)
    w = w / w.sum(1, keepdim=True)                                              # [B, 2r+1]
    i = torch.arange(H)
    j = (i[:, None] + k.long()[None]).abs()                                    # reflect at 0 ...
    j = torch.where(j > H - 1, 2 * (H - 1) - j, j)                              # ... and at H-1
    K = torch.zeros(B, H, H, dtype=x.dtype)
    K.scatter_add_(2, j[None].expand(B, -1, -1), w[:, None, :].expand(-1, H, -1))
    K = K[:, None, None]                                                        # [B, 1, 1, H, H]
    return K @ x @ K.transpose(-1, -2)


def _down_up(x: torch.Tensor, s: int) -> torch.Tensor:
    B, T = x.shape[:2]
    y = F.interpolate(x.flatten(0, 1), size=(s, s), mode="area")
    return F.interpolate(y, size=(SIZE, SIZE), mode="bilinear", align_corners=False).unflatten(0, (B, T))


def _per_stream(x: torch.Tensor, fn_full, fn_centre) -> torch.Tensor:
    return torch.cat([fn_full(x[:, :, :3]), fn_centre(x[:, :, 3:])], 2)


def degrade(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Fixed degradations of ``prepare`` output for the robustness report, defined on the 128 px frame:
    ``blur`` (Gaussian, sigma 2 px at 128), ``lowres`` (the frame down to 48 px and back up)."""
    if kind == "clean":
        return x
    B = x.shape[0]
    if kind == "blur":
        return _per_stream(x, lambda v: gaussian_blur(v, torch.full((B,), 1.0)),
                           lambda v: gaussian_blur(v, torch.full((B,), 2.0)))
    if kind == "lowres":
        return _per_stream(x, lambda v: _down_up(v, 24), lambda v: _down_up(v, 24))
    raise ValueError(kind)


def augment(x: torch.Tensor, y: dict, g: torch.Generator, names: dict) -> tuple:
    """Random VAE-like degradations + label-aware horizontal flips, on ``prepare`` output [B, T, 6, 64, 64].
    Sizes are those of the 128 px frame: the centre stream sees twice the full stream's blur in pixels."""
    B, T = x.shape[:2]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*(shape or (B,)), generator=g)
    # horizontal flip: the world is left/right symmetric except the turn direction (and the lighting ramp,
    # which the per-channel gains dominate); the centre crop is centred, so flipping it is consistent
    flip = torch.rand(B, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
    acts = names["action"]
    swap = torch.arange(len(acts))
    il, ir = acts.index("turn_left"), acts.index("turn_right")
    swap[il], swap[ir] = ir, il
    y = dict(y, action=torch.where(flip, swap[y["action"]], y["action"]))
    # down/up-scaling (a VAE's lost detail): the 128 px frame to 2s px
    low = torch.rand(B, generator=g) < 0.35
    if low.any():
        s = int(torch.randint(20, 48, (1,), generator=g))
        x = x.clone()
        x[low] = _per_stream(x[low], lambda v: _down_up(v, s), lambda v: _down_up(v, s))
    # Gaussian blur, sigma 0.6 .. 2.8 px at 128, on 60% of the clips
    blur = torch.rand(B, generator=g) < 0.6
    sig = u(0.3, 1.4)
    if blur.any():
        sb = sig[blur]
        x = x.clone() if not low.any() else x
        x[blur] = _per_stream(x[blur], lambda v: gaussian_blur(v, sb), lambda v: gaussian_blur(v, 2 * sb))
    # small colour jitter: per-channel gains, brightness offset (lighting classes differ by 15-50%)
    gain = (u(0.94, 1.06, B, 1, 3, 1, 1) * u(0.95, 1.05, B, 1, 1, 1, 1)).repeat(1, 1, 2, 1, 1)
    gain = gain * u(0.99, 1.01, B, T, 1, 1, 1)                                 # a little per-frame flicker
    x = x * gain
    x.add_(u(-0.025, 0.025, B, 1, 1, 1, 1))
    # noise (per frame, per pixel)
    x.add_(torch.randn(x.shape, generator=g).mul_(u(0.0, 0.03, B, 1, 1, 1, 1)))
    return x.clamp_(0, 1), y


# ---------------------------------------------------------------------------------------------- data
def _label_ids(names, clip) -> list:
    return [names["action"].index(clip.action), names["background"].index(clip.background),
            names["lighting"].index(clip.lighting)]


@lru_cache(maxsize=1)
def world_digest() -> str:
    """A fingerprint of what the world draws (hash of three rendered clips): cached shards made by another
    version of the world are rendered again."""
    import hashlib

    from . import world
    h = hashlib.sha256()
    for pid, cs in ((0, 0), (1, 1), (world.HELDOUT_IDS[0], 2)):
        c = world.make_clip(pid, cs)
        h.update(c.frames.tobytes())
        h.update(f"{c.action}|{c.background}|{c.lighting}".encode())
    return h.hexdigest()[:16]


def render_set(out_dir, pairs, tag: str, log=print) -> tuple:
    """Render clips ``pairs`` = [(person_seed, clip_seed)] as ``prepare`` sees them into
    ``out_dir/<tag>_v<DATA_VERSION>_NNN.npz`` shards (uint8 [n, T, 64, 64, 6]: whole frame + centre, and
    labels [n, 3]); existing shards of the same world (``world_digest``) are kept. Returns (frames, labels)."""
    from ..atomic import atomic_target
    from . import world
    names = labels()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, labs = [], []
    t0 = time.perf_counter()
    for k in range(0, len(pairs), SHARD):
        part = pairs[k:k + SHARD]
        path = out_dir / f"{tag}_v{DATA_VERSION}_{k // SHARD:03d}.npz"
        key = np.asarray(part, np.int64)
        if path.is_file():
            with np.load(path) as z:
                if np.array_equal(z["pairs"], key) and "world" in z.files and str(z["world"]) == world_digest():
                    frames.append(z["frames"])
                    labs.append(z["labels"])
                    continue
        fr, lb = [], []
        for pid, cs in part:
            clip = world.make_clip(int(pid), int(cs))
            fr.append((prepare(clip.frames)[0].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy())  # [T, 64, 64, 6]
            lb.append(_label_ids(names, clip))
        fr, lb = np.stack(fr), np.asarray(lb, np.int16)
        with atomic_target(path, overwrite=True, suffix=".npz") as tmp:
            np.savez(tmp, frames=fr, labels=lb, pairs=key, world=np.asarray(world_digest()))
        frames.append(fr)
        labs.append(lb)
        log(f"[toy-cls] rendered {tag} {min(k + SHARD, len(pairs))}/{len(pairs)} ({time.perf_counter() - t0:.0f} s)")
    return np.concatenate(frames), np.concatenate(labs)


def train_pairs(n: int) -> list:
    from . import world
    ids = list(world.TRAIN_IDS)
    return [(ids[i % len(ids)], TRAIN_CLIP_SEED0 + i // len(ids)) for i in range(n)]


def heldout_pairs(n: int = 300) -> list:
    from . import world
    ids = list(world.HELDOUT_IDS)
    return [(ids[i % len(ids)], EVAL_CLIP_SEED0 + i // len(ids)) for i in range(n)]


def _batch(frames: np.ndarray, idx) -> torch.Tensor:
    return torch.from_numpy(frames[idx]).permute(0, 1, 4, 2, 3).float().div(255.0)


# ---------------------------------------------------------------------------------------------- train / eval
@torch.no_grad()
def evaluate(model: ToyClassifier, frames: np.ndarray, labs: np.ndarray, kind: str = "clean",
             batch_size: int = 50) -> dict:
    """Accuracy per head of ``model`` on pre-rendered 64 x 64 clips under degradation ``kind``."""
    model.eval()
    correct = torch.zeros(len(HEADS))
    for s in range(0, len(frames), batch_size):
        x = degrade(_batch(frames, slice(s, s + batch_size)), kind)
        out = model(x)
        y = torch.from_numpy(labs[s:s + batch_size].astype(np.int64))
        for j, h in enumerate(HEADS):
            correct[j] += (out[h].argmax(1) == y[:, j]).sum()
    return {h: round(float(correct[j]) / len(frames), 4) for j, h in enumerate(HEADS)}


def _named(osd: dict, names: list) -> dict:
    """torch optimizer state (params by index) -> params by name (what ``train_state`` stores)."""
    return {"state": {names[i]: v for i, v in osd["state"].items()},
            "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in osd["param_groups"]]}


def _indexed(osd: dict, names: list) -> dict:
    pos = {n: i for i, n in enumerate(names)}
    return {"state": {pos[n]: v for n, v in osd["state"].items()},
            "param_groups": [dict(g, params=[pos[n] for n in g["params"]]) for g in osd["param_groups"]]}


def lr_at(step: int, lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train_classifiers(out_path=DEFAULT_PATH, steps: int = 800, seed: int = 0, data_dir=DEFAULT_DATA,
                      n_train: int = 2400, n_eval: int = 300, batch_size: int = 32, lr: float = 3e-3,
                      checkpoint_every: int = 100, threads: int = 1, log=print) -> dict:
    """Render (once) and train the classifiers, export safetensors with labels and held-out accuracy in
    the metadata. Resumes from ``<data_dir>/run_v<VERSION>_s<seed>/checkpoints``. Returns the metadata dict."""
    from ..training.train_state import flatten_optimizer, list_checkpoints, load_checkpoint, save_checkpoint
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    names = labels()
    data_dir = Path(data_dir)
    t_start = time.perf_counter()
    cpu0 = time.process_time()
    frames, labs = render_set(data_dir, train_pairs(n_train), "train", log)
    ev_frames, ev_labs = render_set(data_dir, heldout_pairs(n_eval), "heldout", log)
    t_render = time.perf_counter() - t_start
    model = ToyClassifier({h: len(names[h]) for h in HEADS})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.02)
    pnames = [n for n, _ in model.named_parameters()]
    run = data_dir / f"run_v{VERSION}_s{seed}"
    start, train_seconds = 0, 0.0
    ckpts = list_checkpoints(run)
    if ckpts:
        ck = load_checkpoint(ckpts[-1])
        model.load_state_dict(ck["model"])
        opt.load_state_dict(_indexed(ck["optimizer"], pnames))
        start, train_seconds = int(ck["state"]["step"]), float(ck["state"].get("train_seconds", 0.0))
        log(f"[toy-cls] resumed from {ckpts[-1]}")
    log(f"[toy-cls] {sum(p.numel() for p in model.parameters())} parameters, {len(frames)} train clips, "
        f"{len(ev_frames)} held-out clips, steps {start}..{steps}")
    y_all = torch.from_numpy(labs.astype(np.int64))
    t0, losses = time.perf_counter(), []
    model.train()
    for step in range(start, steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(frames), (batch_size,), generator=g).sort().values.numpy()
        y = {h: y_all[idx, j] for j, h in enumerate(HEADS)}
        x, y = augment(_batch(frames, idx), y, g, names)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, 30, steps)
        out = model(x)
        loss = sum(F.cross_entropy(out[h], y[h], label_smoothing=0.05) for h in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        done = step + 1
        if done % 25 == 0 or done == steps:
            log(f"[toy-cls] step {done}/{steps} loss {np.mean(losses[-25:]):.3f} "
                f"({(time.perf_counter() - t0) / len(losses):.2f} s/step)")
        if done % checkpoint_every == 0 or done == steps:
            ot, og = flatten_optimizer(_named(opt.state_dict(), pnames))
            save_checkpoint(run, done, model.state_dict(), ot, og, None,
                            {"seed": seed, "train_seconds": train_seconds + time.perf_counter() - t0}, keep_last=2)
    train_seconds += time.perf_counter() - t0
    acc = {k: evaluate(model, ev_frames, ev_labs, k) for k in ("clean", "blur", "lowres")}
    log(f"[toy-cls] held-out accuracy: {json.dumps(acc)}")
    meta = {"format": FORMAT, "version": VERSION, "labels": names, "heads": list(HEADS), "size": SIZE,
            "width": 48, "centre_width": 32, "steps": steps, "seed": seed, "n_train_clips": len(frames),
            "world_digest": world_digest(),
            "heldout": {"clips": len(ev_frames), "ids": "HELDOUT_IDS", "clip_seed0": EVAL_CLIP_SEED0,
                        "accuracy": acc},
            "train_seconds": round(train_seconds, 1), "render_seconds": round(t_render, 1),
            "process_cpu_seconds": round(time.process_time() - cpu0, 1)}
    save(model, out_path, meta)
    log(f"[toy-cls] wrote {out_path}")
    return meta


def save(model: ToyClassifier, path, meta: dict):
    from safetensors.torch import save_file

    from ..atomic import atomic_target
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    with atomic_target(path, overwrite=True, suffix=".safetensors") as tmp:
        save_file(sd, tmp, metadata={"format": FORMAT, "moca_toy_classifiers": json.dumps(meta)})


# ---------------------------------------------------------------------------------------------- inference
class ToyClassifiers:
    """Loaded classifiers: ``model``, ``labels`` (head -> tuple of names), ``meta`` (training facts)."""

    def __init__(self, model: ToyClassifier, meta: dict):
        self.model, self.meta = model.eval(), meta
        self.labels = {h: tuple(v) for h, v in meta["labels"].items()}

    @torch.no_grad()
    def probs(self, clips) -> dict:
        """head -> [B, classes] probabilities."""
        x = prepare(clips)
        if x.shape[1] < 3:
            raise ValueError("a clip needs at least 3 frames")
        return {h: v.softmax(1) for h, v in self.model(x).items()}

    def classify(self, clips):
        single = not isinstance(clips, (list, tuple)) and _to_tensor(clips).ndim == 4
        p = self.probs(clips)
        out = []
        for b in range(next(iter(p.values())).shape[0]):
            d = {}
            for h in self.model.heads:
                pr = p[h][b].tolist()
                d[h] = (self.labels[h][int(np.argmax(pr))], {n: float(v) for n, v in zip(self.labels[h], pr)})
            out.append(d)
        return out[0] if single else out


def load_classifiers(path=None) -> ToyClassifiers:
    """Load the shipped (or given) classifiers file; cached per path."""
    return _load(str(Path(path or DEFAULT_PATH).resolve()))


@lru_cache(maxsize=4)
def _load(path: str) -> ToyClassifiers:
    from safetensors import safe_open
    from safetensors.torch import load_file
    if not Path(path).is_file():
        raise FileNotFoundError(f"toy classifiers {path} not found; train them with "
                                f"`python -m moca_model.toy.classifiers train`")
    with safe_open(path, "pt") as f:
        md = f.metadata() or {}
    if md.get("format") != FORMAT:
        raise ValueError(f"{path} is not a toy classifiers file (format {md.get('format')!r})")
    meta = json.loads(md["moca_toy_classifiers"])
    if int(meta.get("version", 0)) != VERSION:
        raise ValueError(f"{path}: classifiers format version {meta.get('version')} is not this code's ({VERSION}); "
                         f"retrain with `python -m moca_model.toy.classifiers train`")
    model = ToyClassifier({h: len(meta["labels"][h]) for h in meta["heads"]}, meta["width"], meta["centre_width"])
    model.load_state_dict(load_file(path), strict=False)
    return ToyClassifiers(model, meta)


def classify(clips, path=None):
    """Classify clip(s): one clip [T, H, W, 3] (numpy uint8 or IMAGE float 0..1) -> {head: (label, {label:
    prob})} for head in action / background / lighting; a batch [B, T, H, W, 3] or a list -> a list of those."""
    return load_classifiers(path).classify(clips)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moca_model.toy.classifiers", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default=str(DEFAULT_PATH))
    t.add_argument("--data", default=str(DEFAULT_DATA), help="rendered clips + checkpoints (never committed)")
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--n-train", type=int, default=2400)
    t.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("eval")
    e.add_argument("--path", default=str(DEFAULT_PATH))
    e.add_argument("--data", default=str(DEFAULT_DATA))
    e.add_argument("--n", type=int, default=300)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        train_classifiers(a.out, a.steps, a.seed, a.data, n_train=a.n_train, threads=a.threads)
    else:
        clf = load_classifiers(a.path)
        fr, lb = render_set(a.data, heldout_pairs(a.n), "heldout")
        print(json.dumps({k: evaluate(clf.model, fr, lb, k) for k in ("clean", "blur", "lowres")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
