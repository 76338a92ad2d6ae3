"""`train_moca.py cache`: a manifest of face videos -> training shards (see data.py for the shard format).

Manifest: JSONL, one clip per line:
    {"video": "clips/a.mp4", "caption": "a woman ...", "reference": ["faces/a1.jpg"] | "from_video",
     "face_mask": "masks/a.mp4" (optional, white = face), "id": "anything" (optional)}
Relative paths are relative to the manifest's folder.
Several people in one clip (2 to 4): "people" instead of "reference" and "face_mask", one entry per person, each
with its own reference photo(s) and its own mask video (white = that person; the mask is the person's region,
identity k is bound to region k):
    {"video": "clips/two.mp4", "caption": "two people ...",
     "people": [{"reference": ["faces/a.jpg"], "face_mask": "masks/two_a.mp4"},
                {"reference": ["faces/b.jpg"], "face_mask": "masks/two_b.mp4"}]}
Such a sample gets "person_mask" [P, T, h, w], persons 2.. in "person{k}.arcface" / "person{k}.face_latent", and
"face_mask" = the union of the people's masks (data.py: shard format version 2).

Encoders sit behind three small interfaces, so any implementation (or a ComfyUI node) can feed them:
    VideoEncoder.encode(video [B, 3, F, H, W] in -1..1) -> model-space latents [B, 16, T, h, w]
    TextEncoder.encode(texts: list[str]) -> list of [L_i, 4096] (unpadded)
    FaceEncoder.encode(images: list of [H, W, 3] uint8) -> (arcface [R, 512], crops [R, S, S, 3] in 0..1)
    FaceEncoder.recognizer (optional): the provenance.Recognizer of its embeddings, recorded in every shard
The real ones: `DiffusersWanVAE` (diffusers' AutoencoderKLWan), `UMT5TextEncoder` (transformers'
UMT5EncoderModel + tokenizer) and `InsightFaceEncoder` (moca_model.face); install them with
`pip install -r requirements-train.txt`.

Robustness: a clip that cannot be read or has no face is skipped and listed in `<out>/skipped.jsonl`.
Work is done in chunks of `--samples-per-shard` manifest lines; each chunk ends in one atomic shard write
(`shard_<chunk>.safetensors`, possibly empty), so a re-run skips finished chunks and resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_target
from ..latents import normalize_latent
from ..video import read_video
from .data import MAX_PEOPLE, ShardError, read_shard_header, require_finite, write_shard


class VideoEncoder(Protocol):
    def encode(self, video: torch.Tensor) -> torch.Tensor: ...


class TextEncoder(Protocol):
    def encode(self, texts: list[str]) -> list[torch.Tensor]: ...


class FaceEncoder(Protocol):
    def encode(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]: ...


class NoFaceError(ValueError):
    """No usable face in the reference images."""


# ---------------------------------------------------------------------------------------------- real encoders
def _need(pkg: str):
    raise ImportError(f"`train_moca.py cache` needs {pkg}: pip install -r requirements-train.txt")


class DiffusersWanVAE:
    """The Wan 2.1 VAE encoder via diffusers' AutoencoderKLWan. Latents: posterior mode, then model space."""

    def __init__(self, vae, device="cpu", dtype=torch.float32):
        self.vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype

    @classmethod
    def load(cls, path, device="cpu", dtype=torch.float32):
        try:
            from diffusers import AutoencoderKLWan
        except ImportError:
            _need("diffusers")
        path = str(path)
        if path.endswith(".safetensors"):      # e.g. ComfyUI's wan_2.1_vae.safetensors
            vae = AutoencoderKLWan.from_single_file(path, torch_dtype=dtype)
        else:                                  # a diffusers folder (Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae)
            vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        return cls(vae, device, dtype)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raw = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mode()   # [B, 16, T, h, w]
        return normalize_latent(raw.float()).cpu()


class WanVAEFile:
    """A single-file Wan 2.1-layout VAE (the real `wan_2.1_vae.safetensors` or a narrow one such as the toy
    world's) through moca_model.wan_vae; its width is read from the weights. Latents: mu, then model space."""

    def __init__(self, vae, device="cpu", dtype=torch.float32):
        self.vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype

    @classmethod
    def load(cls, path, device="cpu", dtype=torch.float32):
        from ..wan_vae import load_wan_vae
        return cls(load_wan_vae(path), device, dtype)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raw = self.vae.encode(video.to(self.device, self.dtype))                      # [B, 16, T, h, w]
        return normalize_latent(raw.float()).cpu()


def load_video_encoder(path, device="cpu", dtype=torch.float32):
    """A .safetensors file -> WanVAEFile (no diffusers needed); a diffusers folder -> DiffusersWanVAE."""
    if str(path).endswith(".safetensors"):
        return WanVAEFile.load(path, device, dtype)
    return DiffusersWanVAE.load(path, device, dtype)


def load_text_encoder(path, tokenizer=None, device="cpu", dtype=torch.float32):
    """"toy" -> the toy world's hashed word table (moca_model.toy.text); else a transformers umT5 folder."""
    if str(path) == "toy":
        from ..toy.text import ToyTextEncoder
        return ToyTextEncoder()
    return UMT5TextEncoder.load(path, tokenizer, device, dtype)


class UMT5TextEncoder:
    """umT5-XXL last hidden states, cut to each caption's token count (as Wan does before padding)."""

    def __init__(self, model, tokenizer, device="cpu", dtype=torch.float32, max_length: int = 512):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer, self.device, self.max_length = tokenizer, torch.device(device), max_length

    @classmethod
    def load(cls, path, tokenizer_path=None, device="cpu", dtype=torch.float32):
        try:
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError:
            _need("transformers and sentencepiece")
        model = UMT5EncoderModel.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_path or path), local_files_only=True)
        return cls(model, tok, device, dtype)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        t = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                           add_special_tokens=True, return_tensors="pt")
        ids, mask = t["input_ids"].to(self.device), t["attention_mask"].to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu()
        return [s[: int(n)] for s, n in zip(states, mask.sum(dim=1))]


class InsightFaceEncoder:
    """ArcFace embeddings and aligned crops from an insightface model pack (moca_model.face)."""

    def __init__(self, models_root, pack="antelopev2", crop_size: int = 256, provider: str = "auto",
                 backend: str = "auto"):
        try:
            from ..face import FaceAnalyzer
        except ImportError as e:
            raise ImportError("Face encoding needs moca_model.face (the face module of this project); "
                              "update the checkout") from e
        self.analyzer = FaceAnalyzer.load(models_root, pack=pack, provider=provider, backend=backend)
        self.recognizer = self.analyzer.recognizer
        print(self.analyzer.report)
        self.crop_size = crop_size

    def encode(self, images):
        """images: list of [H, W, 3] uint8 -> (ArcFace [R, 512], aligned local crops [R, S, S, 3] in 0..1);
        images without a face are left out, none at all raises NoFaceError."""
        from ..face import FaceNotFoundError
        try:
            ident = self.analyzer.encode(list(images), on_no_face="skip", fusion="separate", crop_size=self.crop_size)
        except FaceNotFoundError as e:
            raise NoFaceError(str(e)) from e
        return torch.as_tensor(np.asarray(ident.embeddings)).float(), torch.as_tensor(np.asarray(ident.crops)).float()


# ---------------------------------------------------------------------------------------------- preprocessing
def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """frames [F, C, H, W] float -> [F, C, height, width]: scale to cover, then centre crop."""
    _, _, H, W = frames.shape
    scale = max(height / H, width / W)
    h, w = max(height, round(H * scale)), max(width, round(W * scale))
    x = F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (h - height) // 2, (w - width) // 2
    return x[:, :, top:top + height, left:left + width]


def frame_indices(n_available: int, src_fps: float, num_frames: int, fps: float | None) -> list[int]:
    """Indices of num_frames frames from the start, resampled from src_fps to fps (None = every frame)."""
    step = 1.0 if not fps else src_fps / fps
    idx = [int(round(i * step)) for i in range(num_frames)]
    if idx[-1] >= n_available:
        raise ValueError(f"too short: {n_available} frames at {src_fps:g} fps, need {num_frames} at {fps or src_fps:g} fps")
    return idx


def mask_to_latent_grid(mask: torch.Tensor, spatial: int = 8, temporal: int = 4) -> torch.Tensor:
    """Pixel masks [F, H, W] (F = 4k + 1) -> [1 + k, H/8, W/8]: Wan's causal grouping (frame 0 alone, then
    groups of 4), max over each group (a face anywhere in the group counts), area average in space."""
    groups = [mask[:1]] + [mask[i:i + temporal] for i in range(1, mask.shape[0], temporal)]
    m = torch.stack([g.max(dim=0).values for g in groups])                       # [T, H, W]
    return F.avg_pool2d(m[:, None], spatial)[:, 0].clamp(0, 1)


def _load_image(path) -> np.ndarray:
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


# ---------------------------------------------------------------------------------------------- the command
class Cacher:
    def __init__(self, video_encoder: VideoEncoder, text_encoder: TextEncoder, face_encoder: FaceEncoder,
                 num_frames: int = 33, height: int = 480, width: int = 832, fps: float | None = 16.0,
                 reference_frames: int = 3, samples_per_shard: int = 8, log=print):
        if (num_frames - 1) % 4:
            raise ValueError(f"--frames must be 4k + 1 (Wan's VAE), got {num_frames}")
        if height % 16 or width % 16:
            raise ValueError(f"--height/--width must be multiples of 16, got {height}x{width}")
        self.video, self.text, self.face = video_encoder, text_encoder, face_encoder
        self.recognizer = getattr(face_encoder, "recognizer", None)       # recorded in every shard
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, fps
        self.reference_frames, self.per_shard, self.log = reference_frames, samples_per_shard, log

    def _clip(self, path, indices=None):
        frames, src_fps = read_video(path)
        idx = frame_indices(len(frames), src_fps, self.num_frames, self.fps) if indices is None else indices
        x = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float() / 255.0       # [F, 3, H, W]
        return resize_center_crop(x, self.height, self.width), frames, idx

    def sample(self, entry: dict, root: Path) -> dict:
        """Encode one manifest entry except its caption; raises on unusable input."""
        video_path = root / entry["video"]
        clip, raw, idx = self._clip(video_path)                                         # [F, 3, H, W] 0..1
        latents = self.video.encode((clip * 2 - 1).permute(1, 0, 2, 3)[None])[0]       # [16, T, h, w]
        if "people" in entry:
            return self._people_sample(entry, root, latents, idx)
        arcface, face_latent = self._identity(entry.get("reference", "from_video"), root, raw, idx)
        s = {"latents": latents, "arcface": arcface, "face_latent": face_latent, "source": str(entry["video"])}
        if entry.get("face_mask"):
            s["face_mask"] = self._mask(root / entry["face_mask"], idx, latents)
        require_finite(s, str(entry["video"]))
        return s

    def _identity(self, ref, root: Path, raw=None, idx=None):
        """A person's references -> (arcface [512] | [R, 512], face_latent [16, 1, hf, wf] | [R, ...])."""
        if ref == "from_video":
            picks = np.linspace(0, len(idx) - 1, self.reference_frames).round().astype(int)
            images = [raw[idx[i]] for i in picks]
        else:
            images = [_load_image(root / p) for p in ([ref] if isinstance(ref, str) else ref)]
        arcface, crops = self.face.encode(images)                                      # [R, 512], [R, S, S, 3]
        if arcface.shape[0] == 0:
            raise NoFaceError("no face found in the reference image(s)")
        face_px = crops.permute(0, 3, 1, 2)[:, :, None] * 2 - 1                         # [R, 3, 1, S, S]
        face_latent = self.video.encode(face_px)                                       # [R, 16, 1, S/8, S/8]
        return (arcface[0] if arcface.shape[0] == 1 else arcface,
                face_latent[0] if face_latent.shape[0] == 1 else face_latent)

    def _mask(self, path: Path, idx, latents) -> torch.Tensor:
        """A mask video (white = inside) -> [T, h, w] on the clip's latent grid."""
        mclip, _, _ = self._clip(path, indices=idx)
        m = mask_to_latent_grid(mclip.mean(dim=1))                                     # [T, h, w]
        if tuple(m.shape) != tuple(latents.shape[1:]):
            raise ValueError(f"face mask grid {list(m.shape)} != latent grid {list(latents.shape[1:])}")
        return m

    def _people_sample(self, entry: dict, root: Path, latents, idx) -> dict:
        """A clip with several people (module docstring): each person's identity and region."""
        people = entry["people"]
        where = f"{entry['video']}: \"people\""
        if not isinstance(people, list) or not 2 <= len(people) <= MAX_PEOPLE:
            raise ValueError(f"{where} must list 2 to {MAX_PEOPLE} people (one person: use \"reference\" instead)")
        if "reference" in entry or "face_mask" in entry:
            raise ValueError(f"{where}: give each person's reference and face_mask inside \"people\", not at the top")
        s = {"latents": latents, "source": str(entry["video"])}
        regions = []
        for k, person in enumerate(people, 1):
            ref, mask = person.get("reference"), person.get("face_mask")
            if not ref or ref == "from_video" or not mask:
                raise ValueError(f"{where}: person {k} needs its own \"reference\" photo(s) and its \"face_mask\" "
                                 "video (the clip alone does not say which face is whose)")
            arcface, face_latent = self._identity(ref, root)
            key = "" if k == 1 else f"person{k}."
            s[key + "arcface"], s[key + "face_latent"] = arcface, face_latent
            regions.append(self._mask(root / mask, idx, latents))
        s["person_mask"] = torch.stack(regions)                                        # [P, T, h, w]
        s["face_mask"] = s["person_mask"].amax(dim=0)                                  # [T, h, w]
        require_finite(s, str(entry["video"]))
        return s

    def run(self, manifest, out_dir, part: tuple[int, int] = (0, 1)) -> dict:
        """Encode `manifest` into `out_dir`; with part=(k, n), only the chunks whose index is k modulo n, so n
        processes (one per GPU, or per CPU core) can share one manifest and one output folder."""
        manifest, out = Path(manifest), Path(out_dir)
        k_part, n_parts = part
        if not (n_parts >= 1 and 0 <= k_part < n_parts):
            raise ValueError(f"train_moca.py cache: part {k_part}/{n_parts} is not one of 0/N .. N-1/N")
        out.mkdir(parents=True, exist_ok=True)
        self._check_recognizer(out)
        lines = [ln for ln in manifest.read_text(encoding="utf-8").splitlines()]
        entries = []
        for n, ln in enumerate(lines, 1):
            if not ln.strip():
                continue
            try:
                e = json.loads(ln)
            except json.JSONDecodeError as err:
                raise ValueError(f"{manifest}:{n}: not valid JSON ({err})") from err
            if not isinstance(e, dict) or "video" not in e or "caption" not in e:
                raise ValueError(f"{manifest}:{n}: each line needs at least \"video\" and \"caption\"")
            entries.append((n, e))
        if not (out / "empty_text.safetensors").is_file():
            from ..checkpoint import atomic_save_safetensors
            atomic_save_safetensors({"text": self.text.encode([""])[0]}, out / "empty_text.safetensors",
                                    {"format": "moca-empty-text", "caption": ""}, overwrite=True)
        skipped_path = out / ("skipped.jsonl" if n_parts == 1 else f"skipped.part{k_part}of{n_parts}.jsonl")
        skipped = {}
        if skipped_path.is_file():
            for ln in skipped_path.read_text(encoding="utf-8").splitlines():
                if ln.strip():
                    r = json.loads(ln)
                    skipped[r["line"]] = r
        stats = {"written": 0, "skipped": 0, "chunks_done_before": 0, "shards": []}
        root = manifest.parent
        for c0 in range(0, len(entries), self.per_shard):
            if (c0 // self.per_shard) % n_parts != k_part:
                continue
            chunk = entries[c0:c0 + self.per_shard]
            shard = out / f"shard_{c0 // self.per_shard:06d}.safetensors"
            digest = hashlib.sha256("\n".join(json.dumps(e, sort_keys=True) for _, e in chunk).encode()).hexdigest()[:16]
            if shard.is_file():
                try:
                    if read_shard_header(shard).get("manifest_digest") == digest:
                        stats["chunks_done_before"] += 1
                        stats["shards"].append(shard)
                        continue
                    self.log(f"[moca-cache] {shard.name}: manifest lines changed, re-encoding")
                except ShardError:
                    self.log(f"[moca-cache] {shard.name} unreadable, re-encoding")
            samples, captions = [], []
            for n, e in chunk:
                skipped.pop(n, None)
                try:
                    samples.append(self.sample(e, root))
                    captions.append(str(e["caption"]))
                except Exception as err:      # unreadable video, no face, too short...: list it, keep going
                    reason = f"{type(err).__name__}: {err}"
                    warnings.warn(f"skipping {e['video']} (manifest line {n}): {reason}", stacklevel=2)
                    skipped[n] = {"line": n, "video": e["video"], "reason": reason}
            if captions:
                for s, text, caption in zip(samples, self.text.encode(captions), captions):
                    s["text"], s["caption"] = text.to(torch.bfloat16), caption        # bf16 halves the cache
            write_shard(shard, samples, {"manifest": str(manifest), "manifest_digest": digest,
                                         "frames": self.num_frames, "size": f"{self.height}x{self.width}"},
                        recognizer=self.recognizer)
            stats["written"] += len(samples)
            stats["shards"].append(shard)
            self._write_skipped(skipped_path, skipped)
            self.log(f"[moca-cache] {shard.name}: {len(samples)} samples, {len(chunk) - len(samples)} skipped")
        stats["skipped"] = len(skipped)
        self._write_skipped(skipped_path, skipped)
        return stats

    def _check_recognizer(self, out: Path):
        """Refuse to add shards of this run's recogniser to a folder holding another recogniser's shards."""
        from ..provenance import from_header, require_match
        for shard in sorted(out.glob("shard_*.safetensors")):
            try:
                old = from_header(read_shard_header(shard), shard.name)
            except ShardError:
                continue                                    # unreadable: re-encoded below
            require_match(old, f"{shard.name} already in {shard.parent}", self.recognizer, "this run's face pack",
                          f"write these shards to another --out, or run with the face pack '{old.pack if old else ''}' "
                          f"that made the existing ones (--face-pack); never mix recognisers in one training set.",
                          "train_moca.py cache")

    @staticmethod
    def _write_skipped(path: Path, skipped: dict):
        with atomic_target(path, overwrite=True) as tmp:
            Path(tmp).write_text("".join(json.dumps(skipped[n]) + "\n" for n in sorted(skipped)), encoding="utf-8")


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="train_moca.py cache",
                                description="Encode a manifest of face videos into MoCA training shards.")
    p.add_argument("--manifest", required=True, help="JSONL: video, caption, reference, face_mask per line")
    p.add_argument("--out", required=True, help="folder for shard_*.safetensors, empty_text.safetensors, skipped.jsonl")
    p.add_argument("--vae", required=True, help="a Wan 2.1-layout VAE .safetensors (wan_2.1_vae.safetensors, "
                   "toy_models/vae/toy_wan_vae.safetensors) or a diffusers AutoencoderKLWan folder")
    p.add_argument("--text-encoder", required=True, help="a transformers UMT5EncoderModel folder (umT5-XXL), or 'toy' for the "
                   "toy world's word-table encoder")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --text-encoder)")
    p.add_argument("--face-models", required=True, help="insightface models root (ComfyUI/models/insightface)")
    p.add_argument("--face-pack", default="antelopev2", help="face pack under --face-models (antelopev2, buffalo_l, "
                   "or a folder with a moca_pack.json); recorded in every shard, and the trained adapter only accepts "
                   "identities of this pack's recogniser")
    p.add_argument("--frames", type=int, default=33, help="frames per clip, 4k + 1 (33 -> 9 latent frames)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--fps", type=float, default=16.0, help="resample clips to this frame rate (0 = native)")
    p.add_argument("--face-crop", type=int, default=256, help="face crop size in pixels (latent /8)")
    p.add_argument("--reference-frames", type=int, default=3, help="frames used when reference is from_video")
    p.add_argument("--samples-per-shard", type=int, default=8)
    p.add_argument("--part", default="0/1", metavar="K/N", help="encode only every N-th chunk, starting at chunk K: "
                   "run N processes (K = 0..N-1, e.g. one per GPU) on the same manifest and --out")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32",
                   choices=["float32", "bfloat16", "float16"])
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    cacher = Cacher(load_video_encoder(a.vae, a.device, dtype),
                    load_text_encoder(a.text_encoder, a.tokenizer, a.device, dtype),
                    # the face models run where the VAE does: on a CPU run, onnxruntime is not asked for CUDA
                    InsightFaceEncoder(a.face_models, a.face_pack, a.face_crop,
                                       provider="cpu" if a.device == "cpu" else "auto"),
                    num_frames=a.frames, height=a.height, width=a.width, fps=a.fps or None,
                    reference_frames=a.reference_frames, samples_per_shard=a.samples_per_shard)
    try:
        part = tuple(int(x) for x in a.part.split("/"))
        assert len(part) == 2
    except (ValueError, AssertionError):
        p.error(f"--part {a.part!r}: write K/N, e.g. 0/2 and 1/2 for two processes")
    stats = cacher.run(a.manifest, a.out, part=part)
    print(f"[moca-cache] {stats['written']} samples written, {stats['skipped']} skipped (see skipped.jsonl), "
          f"{stats['chunks_done_before']} chunk(s) already done")
    return 0
