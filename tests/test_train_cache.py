"""`train_moca.py cache`: manifest -> shards, skipping bad clips, resuming; real encoder classes when installed."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moca_model.training.cache import Cacher, NoFaceError, mask_to_latent_grid
from moca_model.training.data import ShardDataset, read_shard
from moca_model.video import write_video


# Small deterministic implementations of the three encoder interfaces (the real ones need diffusers,
# transformers and an insightface pack; see the test at the bottom for the real classes).
class PoolVideoEncoder:
    """Wan-shaped latents: causal 4x time grouping, 8x8 average pooling, a fixed 3 -> 16 projection."""
    def __init__(self):
        self.proj = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def encode(self, video):                                  # [B, 3, F, H, W]
        self.calls += 1
        groups = [video[:, :, :1]] + [video[:, :, i:i + 4] for i in range(1, video.shape[2], 4)]
        x = torch.stack([g.mean(dim=2) for g in groups], dim=2)          # [B, 3, T, H, W]
        x = F.avg_pool3d(x, (1, 8, 8))
        return torch.einsum("oc,bcthw->bothw", self.proj, x)


class HashTextEncoder:
    def encode(self, texts):
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)) + len(t))
            out.append(torch.randn(len(t.split()) + 1, 4096, generator=g))
        return out


class ColourFaceEncoder:
    """'Finds a face' unless the image is black; the embedding is seeded by the mean colour."""
    def encode(self, images):
        embs, crops = [], []
        for im in images:
            if im.mean() < 2:
                continue
            g = torch.Generator().manual_seed(int(im.mean() * 1000))
            embs.append(torch.randn(512, generator=g))
            t = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255
            crops.append(F.interpolate(t, size=(32, 32), mode="bilinear")[0].permute(1, 2, 0))
        if not embs:
            raise NoFaceError("no face found")
        return torch.stack(embs), torch.stack(crops)


def _clip(path, seed, frames=9, size=(32, 48), black=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, 1, 3, generator=g).expand(frames, *size, 3).clone()
    x += 0.1 * torch.rand(frames, *size, 3, generator=g)
    if black:
        x.zero_()
    return write_video(path, x.clamp(0, 1), fps=8)


@pytest.fixture()
def manifest(tmp_path):
    from PIL import Image
    (tmp_path / "v").mkdir()
    lines = []
    for i in range(5):
        _clip(tmp_path / "v" / f"c{i}.mp4", i)
        lines.append({"video": f"v/c{i}.mp4", "caption": f"person number {i} talking", "reference": "from_video"})
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "ref.png")
    lines[1]["reference"] = ["ref.png", "ref.png"]
    _clip(tmp_path / "v" / "mask.mp4", 99)
    lines[2]["face_mask"] = "v/mask.mp4"
    (tmp_path / "v" / "broken.mp4").write_bytes(b"not a video at all")
    lines.insert(3, {"video": "v/broken.mp4", "caption": "broken", "reference": "from_video"})
    _clip(tmp_path / "v" / "noface.mp4", 7, black=True)
    lines.append({"video": "v/noface.mp4", "caption": "nobody", "reference": "from_video"})
    p = tmp_path / "manifest.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return p


def _cacher(**kw):
    return Cacher(PoolVideoEncoder(), HashTextEncoder(), ColourFaceEncoder(), num_frames=5, height=32, width=32,
                  fps=None, samples_per_shard=3, log=lambda *a: None, **kw)


def test_cache_writes_shards_and_lists_bad_clips(manifest, tmp_path):
    out = tmp_path / "cache"
    with pytest.warns(UserWarning, match="skipping"):
        stats = _cacher().run(manifest, out)
    assert stats["written"] == 5 and stats["skipped"] == 2
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert {s["video"] for s in skipped} == {"v/broken.mp4", "v/noface.mp4"}
    ds = ShardDataset(out)
    assert len(ds) == 5
    s = ds[0]
    assert s["latents"].shape == (16, 2, 4, 4) and s["text"].shape == (5, 4096) and s["arcface"].shape == (3, 512)
    assert s["face_latent"].shape == (3, 16, 1, 4, 4)
    two_refs = ds[1]
    assert two_refs["arcface"].shape == (2, 512)
    assert ds[2]["face_mask"].shape == (2, 4, 4)
    assert (out / "empty_text.safetensors").is_file()
    assert ds[0]["caption"] == "person number 0 talking"


def test_cache_resumes_after_interruption(manifest, tmp_path):
    out = tmp_path / "cache"

    class Interrupting(PoolVideoEncoder):
        def encode(self, video):
            if self.calls >= 7:                    # dies inside the second chunk (2 encodes per clip)
                raise KeyboardInterrupt
            return super().encode(video)

    c = _cacher()
    c.video = Interrupting()
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
        c.run(manifest, out)
    assert [p.name for p in out.glob("shard_*.safetensors")] == ["shard_000000.safetensors"]
    assert not list(out.glob(".*.tmp"))
    again = _cacher()
    with pytest.warns(UserWarning):
        stats = again.run(manifest, out)
    assert stats["chunks_done_before"] == 1 and stats["written"] == 2
    assert len(ShardDataset(out)) == 5
    third = _cacher()
    stats = third.run(manifest, out)
    assert stats["chunks_done_before"] == 3 and third.video.calls == 0


def test_cache_parts_share_one_manifest_and_folder(manifest, tmp_path):
    """N processes with --part k/N write the same shards, bit for bit, as one process (chunks k mod N each)."""
    from safetensors.torch import load_file
    whole, split = tmp_path / "whole", tmp_path / "split"
    with pytest.warns(UserWarning):
        _cacher().run(manifest, whole)
    with pytest.warns(UserWarning):
        first = _cacher().run(manifest, split, part=(0, 2))
    assert [p.name for p in first["shards"]] == ["shard_000000.safetensors", "shard_000002.safetensors"]
    with pytest.warns(UserWarning):
        _cacher().run(manifest, split, part=(1, 2))
    names = sorted(p.name for p in whole.glob("shard_*.safetensors"))
    assert names == sorted(p.name for p in split.glob("shard_*.safetensors")) and len(names) == 3
    for name in names:
        a, b = load_file(str(whole / name)), load_file(str(split / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    skipped = [json.loads(x)["video"] for f in split.glob("skipped.part*of2.jsonl") for x in f.read_text().splitlines()]
    assert sorted(skipped) == ["v/broken.mp4", "v/noface.mp4"]
    with pytest.raises(ValueError, match="part 2/2"):
        _cacher().run(manifest, split, part=(2, 2))


def test_training_runs_on_cached_shards(manifest, tmp_path):
    from moca_model.training.synthetic import tiny_train_config
    from moca_model.training.trainer import Trainer
    out = tmp_path / "cache"
    with pytest.warns(UserWarning):
        _cacher().run(manifest, out)
    cfg = tiny_train_config(tmp_path / "run", out, data={"batch_size": 1},
                            objective={"empty_text": str(out / "empty_text.safetensors")}, optim={"max_steps": 3})
    t = Trainer(cfg, device="cpu", log=lambda *a: None)
    t.fit()
    assert t.step == 3


def test_mask_to_latent_grid():
    m = torch.zeros(9, 16, 16)
    m[5, :8, :8] = 1.0                                          # a face in pixel frame 5 -> latent frame 2
    g = mask_to_latent_grid(m)
    assert g.shape == (3, 2, 2)
    assert g[2, 0, 0] == 1.0 and g.sum() == 1.0


def test_real_encoder_classes_tiny_random(tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="diffusers not installed (requirements-train.txt)")
    transformers = pytest.importorskip("transformers", reason="transformers not installed (requirements-train.txt)")
    tokenizers = pytest.importorskip("tokenizers")
    from moca_model.training.cache import DiffusersWanVAE, UMT5TextEncoder
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)
    words = ["[PAD]", "[UNK]", "</s>", "person", "number", "talking", "0", "1", "2", "3", "4"]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]")
    cfg = transformers.UMT5Config(vocab_size=len(words), d_model=4096, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                  pad_token_id=0, eos_token_id=2)
    text = UMT5TextEncoder(transformers.UMT5EncoderModel(cfg), tok, max_length=16)
    states = text.encode(["person number 3 talking", ""])
    assert states[0].shape == (4, 4096) and states[1].shape[0] <= 1
    video = DiffusersWanVAE(vae)
    lat = video.encode(torch.rand(1, 3, 5, 32, 32) * 2 - 1)
    assert lat.shape == (1, 16, 2, 4, 4)
    (tmp_path / "v").mkdir()
    _clip(tmp_path / "v" / "a.mp4", 0)
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": "v/a.mp4", "caption": "person number 1 talking"}))
    stats = Cacher(video, text, ColourFaceEncoder(), num_frames=5, height=32, width=32, fps=None,
                   log=lambda *a: None).run(tmp_path / "m.jsonl", tmp_path / "cache")
    assert stats["written"] == 1
    s = read_shard(next((tmp_path / "cache").glob("shard_*.safetensors")))[0]
    assert s["latents"].shape == (16, 2, 4, 4) and s["text"].shape == (4, 4096)


def test_insightface_encoder_with_a_tiny_pack(tmp_path):
    """The real face encoder (moca_model.face on a tiny ONNX antelopev2 pack that sees the astronaut)."""
    face_models = pytest.importorskip("face_models", reason="tests/face_models.py (face branch) not present")
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from moca_model.training.cache import InsightFaceEncoder
    face_models.make_tiny_pack(tmp_path / "insightface")
    enc = InsightFaceEncoder(tmp_path / "insightface", crop_size=64, backend="onnxruntime")
    img = face_models.astronaut()
    arc, crops = enc.encode([img, np.zeros_like(img)])           # the black image has no face: left out
    assert arc.shape == (1, 512) and crops.shape == (1, 64, 64, 3)
    with pytest.raises(NoFaceError):
        enc.encode([np.zeros_like(img)])
    (tmp_path / "v").mkdir()
    _clip(tmp_path / "v" / "a.mp4", 0)
    Image.fromarray(img).save(tmp_path / "astronaut.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": "v/a.mp4", "caption": "an astronaut",
                                                  "reference": ["astronaut.png"]}))
    stats = Cacher(PoolVideoEncoder(), HashTextEncoder(), enc, num_frames=5, height=32, width=32, fps=None,
                   log=lambda *a: None).run(tmp_path / "m.jsonl", tmp_path / "cache")
    assert stats["written"] == 1
    s = read_shard(next((tmp_path / "cache").glob("shard_*.safetensors")))[0]
    assert s["arcface"].shape == (512,) and s["face_latent"].shape == (16, 1, 8, 8)
