"""Training cache shards, the dataset over them, and the resumable, rank-sharded sample order.

Shard format (`moca-train-shard`, version 1): one .safetensors file holding N samples. Tensors, per sample i:
    "{i}.latents"      [16, T, h, w]        Wan 2.1 VAE latents of the clip, MODEL space (normalize_latent)
    "{i}.text"         [L, 4096]            umT5-XXL last hidden states of the caption, unpadded (L tokens)
    "{i}.arcface"      [512] or [R, 512]    ArcFace embedding(s) of the reference face(s)
    "{i}.face_latent"  [16, 1, hf, wf] or [R, 16, 1, hf, wf]   Wan VAE latent of the aligned face crop(s), model space
    "{i}.face_mask"    [T, h, w]            optional, face mask in 0..1 at latent resolution (several people: the
                                            union of their faces, for LVPL's face weighting)
  several people in one clip (format version 2; P = 2..4 people, person 1 in the keys above):
    "{i}.person_mask"  [P, T, h, w]         each person's region in 0..1 at latent resolution (its presence marks a
                                            multi-person sample; identity k is bound to region k)
    "{i}.person{k}.arcface", "{i}.person{k}.face_latent"   person k = 2..P, shaped as "arcface" / "face_latent"
Header (safetensors metadata, all strings): "format" = "moca-train-shard", "format_version" = "1",
"num_samples", "samples" = JSON list of {"caption", "source", ...} per sample, "face_recognizer" = JSON record of the
recogniser that made every "arcface" of the shard (moca_model.provenance; absent in shards written before it),
plus any user metadata. A shard is written as version 2 only when it holds a multi-person sample, so one-person
shards stay readable by older code; version 1 shards load unchanged.
`write_shard` writes atomically (temp file + os.replace); ComfyUI's data-prep node writes the same format.
"""
from __future__ import annotations

import glob
import json
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..provenance import common_record, from_header, header

SHARD_FORMAT = "moca-train-shard"
SHARD_VERSION = 2
REQUIRED = ("latents", "text", "arcface", "face_latent")
MAX_PEOPLE = 4
PERSON_KEYS = tuple(f"person{k}.{n}" for k in range(2, MAX_PEOPLE + 1) for n in ("arcface", "face_latent"))
OPTIONAL = ("face_mask", "person_mask") + PERSON_KEYS


class ShardError(ValueError):
    """A shard that cannot be used; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------- write / read
def require_finite(sample: dict, where: str):
    """Refuse a sample whose tensors hold NaN or infinity (a broken VAE or encoder gives such latents, and
    one such sample turns every training step that sees it into NaN)."""
    for k in REQUIRED + OPTIONAL:
        t = sample.get(k)
        if t is not None and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ShardError(f"{where}: {k} holds NaN or infinity ({bad} of {t.numel()} values); the encoder that "
                             "made it is broken (check the VAE / text encoder / face model files)")


def _check_sample(i: int, s: dict, where: str):
    missing = [k for k in REQUIRED if k not in s]
    if missing:
        raise ShardError(f"{where}: sample {i} lacks {missing} (needs {list(REQUIRED)}, optional {list(OPTIONAL)})")
    lat = s["latents"]
    if lat.ndim != 4 or lat.shape[0] != 16:
        raise ShardError(f"{where}: sample {i} latents must be [16, T, h, w], got {list(lat.shape)}")
    if s["text"].ndim != 2:
        raise ShardError(f"{where}: sample {i} text must be [L, 4096], got {list(s['text'].shape)}")
    if s["arcface"].ndim not in (1, 2) or s["arcface"].shape[-1] != 512:
        raise ShardError(f"{where}: sample {i} arcface must be [512] or [R, 512], got {list(s['arcface'].shape)}")
    if s["face_latent"].ndim not in (4, 5) or s["face_latent"].shape[-4] != 16:
        raise ShardError(f"{where}: sample {i} face_latent must be [16, 1, hf, wf] or [R, 16, 1, hf, wf], "
                         f"got {list(s['face_latent'].shape)}")
    m = s.get("face_mask")
    if m is not None and tuple(m.shape) != tuple(lat.shape[1:]):
        raise ShardError(f"{where}: sample {i} face_mask {list(m.shape)} must match the latent grid "
                         f"{list(lat.shape[1:])}")
    _check_people(i, s, where)
    require_finite(s, f"{where}: sample {i}" + (f" ({s['source']})" if s.get("source") else ""))


def num_people(s: dict) -> int:
    """How many people a sample shows (1 unless it has "person_mask")."""
    pm = s.get("person_mask")
    return 1 if pm is None else int(pm.shape[0])


def _check_people(i: int, s: dict, where: str):
    pm = s.get("person_mask")
    extra = sorted(k for k in PERSON_KEYS if k in s)
    if pm is None:
        if extra:
            raise ShardError(f"{where}: sample {i} has {extra} but no person_mask; a multi-person sample needs each "
                             "person's region")
        return
    lat = s["latents"]
    P = pm.shape[0]
    if pm.ndim != 4 or not 2 <= P <= MAX_PEOPLE or tuple(pm.shape[1:]) != tuple(lat.shape[1:]):
        raise ShardError(f"{where}: sample {i} person_mask must be [P, T, h, w] with P = 2..{MAX_PEOPLE} and the latent "
                         f"grid {list(lat.shape[1:])}, got {list(pm.shape)}")
    want = [f"person{k}.{n}" for k in range(2, P + 1) for n in ("arcface", "face_latent")]
    if sorted(want) != extra:
        raise ShardError(f"{where}: sample {i} shows {P} people (person_mask) but has identities {extra}; "
                         f"it needs exactly {want}")
    for k in range(2, P + 1):
        a, fl = s[f"person{k}.arcface"], s[f"person{k}.face_latent"]
        if a.shape[-1] != 512 or a.ndim not in (1, 2) or fl.ndim not in (4, 5) or fl.shape[-4] != 16:
            raise ShardError(f"{where}: sample {i} person {k}: arcface must be [512] or [R, 512] and face_latent "
                             f"[16, 1, hf, wf] or [R, 16, 1, hf, wf], got {list(a.shape)}, {list(fl.shape)}")


def write_shard(path, samples: list[dict], metadata: dict | None = None, overwrite: bool = True,
                recognizer=None) -> Path:
    """Write samples (dicts of the tensors above plus optional "caption" / "source" strings) atomically.
    overwrite=True lets the cache command redo its own chunk; writers of user files pass False. `recognizer`:
    the `provenance.Recognizer` that made the samples' ArcFace embeddings (recorded in the header)."""
    from ..checkpoint import atomic_save_safetensors
    path = Path(path)
    tensors, info = {}, []
    for i, s in enumerate(samples):
        _check_sample(i, s, path.name)
        for k in REQUIRED + OPTIONAL:
            if s.get(k) is not None:
                tensors[f"{i}.{k}"] = s[k].detach().to("cpu").contiguous()
        info.append({"caption": str(s.get("caption", "")), "source": str(s.get("source", ""))})
    meta = dict(metadata or {})
    version = SHARD_VERSION if any(num_people(x) > 1 for x in samples) else 1
    meta.update({"format": SHARD_FORMAT, "format_version": str(version),
                 "num_samples": str(len(samples)), "samples": json.dumps(info)})
    meta.update(header(recognizer))
    return atomic_save_safetensors(tensors, path, meta, overwrite=overwrite)


def sample_from_parts(video_latent, text, arcface, face_latent, face_mask=None, caption: str = "",
                      source: str = "") -> dict:
    """One training sample from what a ComfyUI graph has: the clip's RAW Wan VAE latent [1, 16, T, h, w]
    (VAE Encode's output; put into model space here), umT5 states [1, L, 4096], ArcFace [R, 512], face-crop
    latents [R, 16, 1, hf, wf] (model space), and an optional pixel face mask [F, H, W] (F = 4T - 3)."""
    from ..latents import normalize_latent
    if video_latent.ndim != 5 or video_latent.shape[:2] != (1, 16):
        raise ShardError(f"video latent must be one Wan 2.1 video latent [1, 16, T, h, w], got {list(video_latent.shape)}")
    if text.ndim != 3 or text.shape[0] != 1:
        raise ShardError(f"text must be one umT5 conditioning [1, L, 4096], got {list(text.shape)}")
    latents = normalize_latent(video_latent.float())[0]
    sample = {"latents": latents, "text": text[0].float(), "arcface": arcface.float(),
              "face_latent": face_latent.float(), "caption": caption, "source": source}
    if face_mask is not None:
        from .cache import mask_to_latent_grid
        T, h, w = latents.shape[1:]
        if face_mask.ndim != 3 or face_mask.shape[0] != 4 * T - 3 or tuple(face_mask.shape[1:]) != (8 * h, 8 * w):
            raise ShardError(f"face mask must be [{4 * T - 3}, {8 * h}, {8 * w}] (one mask per video frame at the "
                             f"video's size), got {list(face_mask.shape)}")
        sample["face_mask"] = mask_to_latent_grid(face_mask.float())
    _check_sample(0, sample, "sample")
    return sample


def read_shard_header(path) -> dict:
    """Validate a shard's header and tensor table without reading tensor data; returns the metadata."""
    from safetensors import safe_open
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
    except Exception as e:
        raise ShardError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                         "re-run `train_moca.py cache` to rewrite it") from e
    from ..checkpoint import check_header
    check_header(meta, str(path), SHARD_FORMAT, SHARD_VERSION, "MoCA training shard",
                 "shards are written by `train_moca.py cache` or MoCA Save Training Sample", error=ShardError)
    n = int(meta.get("num_samples", -1))
    for i in range(n):
        missing = [k for k in REQUIRED if f"{i}.{k}" not in keys]
        if missing:
            raise ShardError(f"{path}: sample {i} lacks {missing}")
    meta["_num_samples"] = n
    return meta


def read_shard(path) -> list[dict]:
    """All samples of a shard: [{"latents", "text", "arcface", "face_latent", ["face_mask"], "caption", "source"}]."""
    from safetensors.torch import load_file
    meta = read_shard_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise ShardError(f"{path}: tensor data unreadable ({e})") from e
    info = json.loads(meta.get("samples", "[]"))
    out = []
    for i in range(meta["_num_samples"]):
        s = {k: tensors[f"{i}.{k}"] for k in REQUIRED + OPTIONAL if f"{i}.{k}" in tensors}
        s.update(info[i] if i < len(info) else {})
        _check_sample(i, s, str(path))
        out.append(s)
    return out


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def read_sample(path, i: int, info: dict | None = None) -> dict:
    """Sample i of a shard, reading only the byte ranges of its own tensors, never the whole shard.

    Plain reads of the ranges the safetensors header gives: safetensors' own `safe_open` maps the file, and
    page-fault read-around made it read 2-3x a sample's bytes from storage (81-frame samples, cold cache);
    these reads cost 1.00x. `info` is the sample's {"caption", "source"} record when the caller has it."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            s = {}
            for k in REQUIRED + OPTIONAL:
                entry = header.get(f"{i}.{k}")
                if entry is None:
                    continue
                start, stop = entry["data_offsets"]
                t = torch.empty(stop - start, dtype=torch.uint8)
                f.seek(8 + n + start)
                if f.readinto(memoryview(t.numpy())) != stop - start:
                    raise EOFError("the file ends inside the tensor")
                s[k] = t.view(_ST_DTYPES[entry["dtype"]]).reshape(entry["shape"])
            if info is None:
                samples = json.loads(header.get("__metadata__", {}).get("samples", "[]"))
                info = samples[i] if i < len(samples) else {}
    except Exception as e:
        raise ShardError(f"{path}: sample {i} unreadable ({type(e).__name__}: {e})") from e
    s.update(info)
    _check_sample(i, s, str(path))
    return s


def find_shards(patterns) -> list[Path]:
    """Expand files, folders (their *.safetensors but empty_text.safetensors) and globs into a sorted,
    de-duplicated list."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    found = []
    for p in patterns:
        p = str(p)
        if os.path.isdir(p):
            found += sorted(f for f in Path(p).glob("*.safetensors") if f.name != "empty_text.safetensors")
        elif any(c in p for c in "*?["):
            found += [Path(x) for x in sorted(glob.glob(p))]
        elif os.path.exists(p):
            found.append(Path(p))
        else:
            raise FileNotFoundError(f"Training shards: {p} does not exist (data.shards in the config)")
    seen, out = set(), []
    for f in found:
        if f.name.startswith(".") or f.resolve() in seen:
            continue
        seen.add(f.resolve())
        out.append(f)
    return out


# ---------------------------------------------------------------------------------------------- dataset
class ShardDataset:
    """Random access over the samples of many shards (a map-style dataset for torch's DataLoader). Headers are
    read once; each access reads that sample's tensors only. Corrupt or foreign shards are skipped with a
    warning (listed in `.skipped`). `.recognizer`: the one face recogniser of the shards' embeddings (shards
    of different recognisers are refused; shards without a record get a notice)."""

    def __init__(self, shards):
        self.index: list[tuple[Path, int, dict]] = []          # (shard, sample in shard, caption/source)
        self.shards: list[tuple[Path, int]] = []                # usable shards and their sample counts
        self.skipped: list[tuple[str, str]] = []
        records = []
        for path in find_shards(shards):
            try:
                meta = read_shard_header(path)
            except ShardError as e:
                warnings.warn(f"Skipping training shard: {e}", stacklevel=2)
                self.skipped.append((str(path), str(e)))
                continue
            n, info = meta["_num_samples"], json.loads(meta.get("samples", "[]"))
            self.index += [(path, i, info[i] if i < len(info) else {}) for i in range(n)]
            self.shards.append((path, n))
            try:
                records.append((str(path), from_header(meta, str(path))))
            except ValueError as e:
                raise ShardError(f"{e} (re-run `train_moca.py cache` to rewrite it)") from e
        self.recognizer = common_record(
            records, "training shard", "encode every clip with one face pack: re-run `train_moca.py cache "
            "--face-pack <pack>` for the shards of the other recogniser (into another --out), and point data.shards "
            "at shards of one recogniser only.")
        if not self.index:
            raise ShardError(f"No usable training samples in {shards} "
                             f"({len(self.skipped)} shard(s) skipped); write shards with `train_moca.py cache`")

    def __len__(self):
        return len(self.index)

    def __getitem__(self, idx: int) -> dict:
        path, i, info = self.index[idx]
        return read_sample(path, i, info)


# ---------------------------------------------------------------------------------------------- order
@dataclass
class SampleOrder:
    """The global stream of dataset indices: epoch e is a permutation seeded by (seed, e). A run's data
    position is one integer (samples consumed), so resume is exact and needs no sampler state."""
    num_samples: int
    seed: int = 0
    shuffle: bool = True
    _last: tuple | None = field(default=None, init=False, repr=False, compare=False)   # (epoch, permutation)

    def _perm(self, epoch: int) -> torch.Tensor:
        if self._last is None or self._last[0] != epoch:
            if not self.shuffle:
                perm = torch.arange(self.num_samples)
            else:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.num_samples, generator=g)
            self._last = (epoch, perm)
        return self._last[1]

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices at stream positions [start, start + count)."""
        return [int(self._perm(p // self.num_samples)[p % self.num_samples]) for p in range(start, start + count)]


@dataclass
class RankStream:
    """This process's share of the global stream: at optimiser step s, micro-batch m covers the stream positions
    s * G + m * B * W + rank * B + [0, B), with G = B * accum * W the global batch (B = data.batch_size,
    W = processes). Every process trains a contiguous slice of every global batch."""
    order: SampleOrder
    batch_size: int
    grad_accum: int
    world: int = 1
    rank: int = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    def positions(self, step: int, m: int) -> list[int]:
        start = step * self.global_batch + m * self.batch_size * self.world + self.rank * self.batch_size
        return list(range(start, start + self.batch_size))

    def indices(self, step: int, m: int) -> list[int]:
        p = self.positions(step, m)
        return self.order.indices(p[0], len(p))


class StepBatches:
    """The dataset indices of every micro-batch of steps [start, end), in training order: the `batch_sampler` of
    a DataLoader, so worker processes read ahead while the order stays a function of the step (exact resume)."""

    def __init__(self, stream: RankStream, start: int, end: int):
        self.stream, self.start, self.end = stream, start, end

    def __len__(self):
        return max(0, self.end - self.start) * self.stream.grad_accum

    def __iter__(self):
        for step in range(self.start, self.end):
            for m in range(self.stream.grad_accum):
                yield self.stream.indices(step, m)


def as_list(samples: list[dict]) -> list[dict]:
    """DataLoader collate: keep a micro-batch as its list of samples (the objective collates and draws)."""
    return samples


def micro_batch_loader(dataset: ShardDataset, stream: RankStream, start: int, end: int, num_workers: int = 0,
                       prefetch: int = 2, pin_memory: bool = False):
    """Iterator over the sample lists of every micro-batch of steps [start, end), in order. num_workers > 0
    reads `prefetch` micro-batches per worker ahead in background processes (torch DataLoader)."""
    if num_workers == 0:
        return ([dataset[i] for i in idx] for idx in StepBatches(stream, start, end))
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_sampler=StepBatches(stream, start, end), collate_fn=as_list,
                        num_workers=num_workers, prefetch_factor=prefetch, pin_memory=pin_memory)
    return iter(loader)
