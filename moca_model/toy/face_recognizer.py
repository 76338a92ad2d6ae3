"""Toy ArcFace recognisers: [N, 3, 112, 112] aligned crops -> [N, 512] embeddings, insightface's contract.

Input is RGB normalised ``(x - 127.5) / 127.5`` outside the graph (what ``moca_model.face.recognizer``
does for non-MXNet models; the export is checked to be classified that way). Two architectures:

* ``"res"`` (``ResFace``, the conditioning recogniser ``rec_toy.onnx``): a small ResNet - stride-2 stem
  (16 ch, 56 px), stages 32 @ 28 px, 64 @ 14 px, 128 @ 7 px with BN/PReLU basic blocks, then
  MobileFaceNet's global depthwise 7x7 conv, BN, a linear layer to 512 and a final BN (insightface's
  "GDC" embedding head).
* ``"wide"`` (``WideFace``, the evaluation recogniser ``rec_eval.onnx``): wider and shallower - SiLU,
  no residuals, 24 @ 56, 48 @ 28, 96 @ 14, 160 @ 7 plain convs, then global average AND max pooling
  concatenated, dropout, linear to 512. Trained with CosFace (additive cosine margin) instead of ArcFace,
  another seed and another render stream, so its errors are its own.

Losses: ``MarginHead`` - ArcFace ``cos(theta + m)`` (with insightface's fallback when theta + m > pi) or
CosFace ``cos(theta) - m``, scale ``s``; the margin ramps up over the first part of training.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EMBED_DIM = 512
INPUT_SIZE = 112
INPUT_MEAN, INPUT_STD = 127.5, 127.5
ARCHS = ("res", "wide")


def conv_bn(cin, cout, k=3, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), nn.PReLU(cout), conv_bn(cout, cout, 3, 1))
        self.short = None if (cin == cout and stride == 1) else conv_bn(cin, cout, 1, stride)
        self.act = nn.PReLU(cout)

    def forward(self, x):
        return self.act(self.body(x) + (x if self.short is None else self.short(x)))


class ResFace(nn.Module):
    """Small ResNet with a GDC head (module doc). ~0.6 M parameters."""

    def __init__(self, widths=(16, 32, 64, 128), blocks=(2, 2, 1)):
        super().__init__()
        w0, *ws = widths
        self.stem = nn.Sequential(conv_bn(3, w0, 3, 2), nn.PReLU(w0))  # 56
        layers, cin = [], w0
        for w, n in zip(ws, blocks):
            for i in range(n):
                layers.append(BasicBlock(cin, w, 2 if i == 0 else 1))
                cin = w
        self.body = nn.Sequential(*layers)  # 28, 14, 7
        self.gdc = conv_bn(cin, cin, 7, 1, groups=cin)  # global depthwise conv: 7x7 -> 1x1
        self.gdc[0].padding = (0, 0)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(cin, EMBED_DIM, bias=False)
        self.bn = nn.BatchNorm1d(EMBED_DIM)

    def forward(self, x):  # [N, 3, 112, 112] -> [N, 512]
        x = self.gdc(self.body(self.stem(x))).flatten(1)
        return self.bn(self.fc(self.drop(x)))


class WideFace(nn.Module):
    """Wide, shallow plain CNN with average+max pooling (module doc). ~0.6 M parameters."""

    def __init__(self, widths=(24, 48, 96, 160)):
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(widths):
            layers += [conv_bn(cin, w, 3, 2), nn.SiLU()]
            if i > 0:
                layers += [conv_bn(w, w, 3, 1), nn.SiLU()]
            cin = w
        self.body = nn.Sequential(*layers)  # 56, 28, 14, 7
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(2 * cin, EMBED_DIM)
        self.bn = nn.BatchNorm1d(EMBED_DIM, affine=False)

    def forward(self, x):
        x = self.body(x)
        x = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
        return self.bn(self.fc(self.drop(x)))


def build_recogniser(arch: str) -> nn.Module:
    if arch == "res":
        return ResFace()
    if arch == "wide":
        return WideFace()
    raise ValueError(f"unknown recogniser arch {arch!r}; choose one of {ARCHS}")


class MarginHead(nn.Module):
    """Class centres [C, 512] and the margin softmax logits (ArcFace ``arc`` or CosFace ``cos``)."""

    def __init__(self, num_classes: int, kind: str = "arc", s: float = 32.0, m: float = 0.4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, EMBED_DIM) * 0.01)
        self.kind, self.s, self.m = kind, float(s), float(m)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, margin_frac: float = 1.0) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)  # [N, C]
        m = self.m * float(margin_frac)
        tgt = cos.gather(1, labels[:, None])
        if self.kind == "arc":
            theta = torch.acos(tgt)
            # insightface: where theta + m would pass pi, fall back to cos(theta) - m * sin(m) (monotonic)
            new = torch.where(theta + m < math.pi, torch.cos(theta + m), tgt - m * math.sin(m))
        else:
            new = tgt - m
        logits = cos.scatter(1, labels[:, None], new)
        return logits * self.s


def to_input(crops_u8: torch.Tensor) -> torch.Tensor:
    """[N, 112, 112, 3] uint8 RGB (or float 0..255) -> [N, 3, 112, 112] float, ArcFace normalisation."""
    return (crops_u8.permute(0, 3, 1, 2).float() - INPUT_MEAN) / INPUT_STD


def export_recogniser(net: nn.Module, path, check: bool = True, atol: float = 1e-4) -> dict:
    """ONNX (opset 17, dynamic batch) -> ``path``; onnxruntime checked against torch; the file must be
    classified by ``arcface_normalization`` as taking ``(x - 127.5) / 127.5`` input."""
    from moca_model.atomic import atomic_target
    from moca_model.face.recognizer import arcface_normalization

    net = net.eval()
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    with atomic_target(path, overwrite=True, suffix=".onnx") as tmp:
        with warnings.catch_warnings():  # the legacy exporter is deliberate (no onnxscript needed)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(net, (dummy,), tmp, input_names=["input.1"], output_names=["embedding"],
                              dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}}, opset_version=17,
                              dynamo=False, do_constant_folding=True)
    report = {"path": str(path), "bytes": Path(path).stat().st_size}
    norm = arcface_normalization(path)
    if norm != (INPUT_MEAN, INPUT_STD):
        raise AssertionError(f"{path} would be read with normalisation {norm}, expected {(INPUT_MEAN, INPUT_STD)}")
    if check:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randn(5, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = net(x).numpy()
        got = sess.run(None, {"input.1": x.numpy()})[0]
        worst = float(np.abs(ref - got).max())
        if worst > atol * max(1.0, float(np.abs(ref).max())):
            raise AssertionError(f"onnxruntime differs from torch by {worst:.2e} for {path}")
        report["ort_max_abs_diff"] = worst
    return report


# ---------------------------------------------------------------------------------------------- training
LOSS_OF_ARCH = {"res": ("arc", 32.0, 0.4), "wide": ("cos", 30.0, 0.3)}


def augment_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Light on-the-fly augmentation of normalised crops [B, 3, 112, 112]: a shift of up to 3 px (the
    detector's landmark error), brightness / contrast, and sometimes a blur."""
    b = x.shape[0]
    dx, dy = (torch.randint(-3, 4, (2,), generator=g)).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    a = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.3
    c = (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.2
    x = x * a + c
    blur = torch.rand(b, generator=g) < 0.2
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        k2 = (k[:, None] * k[None]).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    return x


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def load_crop_pool(data_dir, name: str):
    """(crops [N, 112, 112, 3] uint8, labels [N] person seeds, kinds [N] 0 = reference / 1 = clip frame)."""
    data_dir = Path(data_dir)
    return (np.load(data_dir / f"{name}_crops.npy"), np.load(data_dir / f"{name}_labels.npy"),
            np.load(data_dir / f"{name}_kinds.npy"))


def train_toy_recogniser(out_path, arch: str = "res", seed: int = 0, steps: int = 3000, resume: bool = True,
                         data_dir=None, pool_name: str | None = None, pool=None, batch: int = 128, lr: float = 0.1,
                         ckpt_every: int = 250, threads: int = 1, log=print, export: bool = True,
                         bf16: bool = True) -> dict:
    """Train a toy recogniser (``arch`` "res" with ArcFace, "wide" with CosFace) on a crop pool of TRAIN_IDS.

    ``bf16``: bfloat16 autocast and channels-last on the CPU (2-3x faster where oneDNN has AMX / AVX512-BF16;
    the margin head and the loss stay float32; the export is float32).
    ``out_path``: the ONNX file to write; the checkpoint ``<out_path>.ckpt.pt`` (atomic, every
    ``ckpt_every`` steps: weights, margin head, optimiser, step, RNG) makes an interrupted run resume
    exactly. Returns {"net", "history", "onnx", "cpu_s"}.
    """
    from moca_model.atomic import atomic_target

    from .face_data import DEFAULT_DATA

    torch.set_num_threads(threads)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = out_path.with_name(out_path.name + ".ckpt.pt")
    crops, labels, _ = pool if pool is not None else load_crop_pool(data_dir or DEFAULT_DATA,
                                                                   pool_name or ("rec" if arch == "res" else "rec_eval"))
    classes, y_all = np.unique(labels, return_inverse=True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_recogniser(arch).to(memory_format=torch.channels_last)
    kind, s, m = LOSS_OF_ARCH[arch]
    head = MarginHead(len(classes), kind, s, m)
    decay, no_decay = [], []
    for n_, p in list(net.named_parameters()) + list(head.named_parameters()):
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    step, history, cpu0 = 0, [], 0.0
    if resume and ckpt.is_file():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(st["net"])
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        step, history, cpu0 = st["step"], st["history"], st.get("cpu_s", 0.0)
        rng.bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
        g.set_state(st["gen"])
        log(f"[toy-face] recogniser {arch}: resumed at step {step}")
    warmup = max(1, min(200, steps // 10))
    t_cpu = time.process_time()
    net.train()
    head.train()
    while step < steps:
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(step, steps, lr, warmup)
        idx = np.sort(rng.integers(0, len(crops), batch))
        x = augment_batch(to_input(torch.from_numpy(crops[idx])), g).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(y_all[idx]).long()
        margin_frac = min(1.0, step / max(1.0, 0.3 * steps))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            emb = net(x)
        logits = head(emb.float(), y, margin_frac)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(net.parameters()) + list(head.parameters()), 5.0)
        opt.step()
        step += 1
        acc = float((logits.detach().argmax(1) == y).float().mean())
        history.append({"step": step, "loss": float(loss.detach()), "acc": acc})
        if step % 50 == 0 or step == steps:
            recent = history[-50:]
            log(f"[toy-face] recogniser {arch} step {step}/{steps} loss {np.mean([h['loss'] for h in recent]):.3f} "
                f"train-acc {np.mean([h['acc'] for h in recent]):.3f} cpu {cpu0 + time.process_time() - t_cpu:.0f} s")
        if step % ckpt_every == 0 or step == steps:
            state = {"net": net.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(), "step": step,
                     "history": history, "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                     "gen": g.get_state(), "cpu_s": cpu0 + time.process_time() - t_cpu, "arch": arch,
                     "seed": seed, "steps": steps}
            with atomic_target(ckpt, overwrite=True, suffix=".pt") as tmp:
                torch.save(state, tmp)
    net = net.eval().to(memory_format=torch.contiguous_format)
    out = {"net": net, "history": history, "cpu_s": cpu0 + time.process_time() - t_cpu}
    if export:
        out["onnx"] = export_recogniser(net, out_path)
    return out


def embed_crops(net_or_session, crops_u8: np.ndarray, batch: int = 256) -> np.ndarray:
    """L2-normalised embeddings [N, 512] of uint8 crops [N, 112, 112, 3] with a torch net or an ORT session."""
    outs = []
    for i in range(0, len(crops_u8), batch):
        x = to_input(torch.from_numpy(np.ascontiguousarray(crops_u8[i:i + batch])))
        if isinstance(net_or_session, nn.Module):
            with torch.no_grad():
                e = net_or_session.eval()(x).numpy()
        else:
            e = net_or_session.run(None, {net_or_session.get_inputs()[0].name: x.numpy()})[0]
        outs.append(e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12))
    return np.concatenate(outs).astype(np.float32)
