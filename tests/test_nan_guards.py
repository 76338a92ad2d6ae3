"""Non-finite tensors are refused where they enter: identity files, training shards, the cache command."""
import pytest
import torch

from moca_model import MoCAIdentity
from moca_model.checkpoint import CheckpointError, atomic_save_safetensors
from moca_model.training.data import ShardError, read_shard, sample_from_parts, write_shard
from test_train_cache import manifest  # noqa: F401  (the cache tests' manifest fixture: five clips, two bad)


def _sample(**bad):
    s = {"latents": torch.randn(16, 2, 4, 4), "text": torch.randn(5, 4096), "arcface": torch.randn(512),
         "face_latent": torch.randn(16, 1, 4, 4), "caption": "c", "source": "clip.mp4"}
    s.update(bad)
    return s


def test_identity_with_nan_is_refused_and_its_file_named():
    with pytest.raises(ValueError, match="face_latent holds NaN or infinity"):
        MoCAIdentity(torch.randn(1, 512), torch.full((1, 16, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="arcface holds NaN or infinity"):
        MoCAIdentity(torch.tensor([[float("inf")] * 512]), None)


def test_identity_file_with_nan_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "broken_identity.safetensors"
    atomic_save_safetensors({"arcface": torch.randn(1, 512), "face_latent": torch.full((1, 16, 1, 4, 4), float("nan"))},
                            path, {"format": "moca-identity", "format_version": "1", "fusion": "mean"})
    with pytest.raises(CheckpointError, match="broken_identity.safetensors.*face_latent holds NaN"):
        MoCAIdentity.load(path)


@pytest.mark.parametrize("key", ["latents", "text", "arcface", "face_latent"])
def test_shard_writer_refuses_non_finite_samples(tmp_path, key):
    s = _sample()
    s[key] = s[key].clone()
    s[key].view(-1)[3] = float("nan")
    with pytest.raises(ShardError, match=rf"sample 1 \(clip.mp4\): {key} holds NaN or infinity \(1 of"):
        write_shard(tmp_path / "s.safetensors", [_sample(), s])
    assert not (tmp_path / "s.safetensors").exists()


def test_sample_from_parts_refuses_nan_latents():
    with pytest.raises(ShardError, match="latents holds NaN"):
        sample_from_parts(torch.full((1, 16, 2, 4, 4), float("nan")), torch.randn(1, 5, 4096), torch.randn(1, 512),
                          torch.randn(1, 16, 1, 4, 4))


def test_shard_reader_refuses_a_nan_shard_written_before_the_check(tmp_path):
    path = tmp_path / "old.safetensors"
    s = _sample(latents=torch.full((16, 2, 4, 4), float("nan")))
    atomic_save_safetensors({f"0.{k}": s[k] for k in ("latents", "text", "arcface", "face_latent")}, path,
                            {"format": "moca-train-shard", "format_version": "1", "num_samples": "1", "samples": "[]"})
    with pytest.raises(ShardError, match="old.safetensors: sample 0: latents holds NaN"):
        read_shard(path)


def test_cache_command_skips_clips_whose_latents_are_not_finite(manifest, tmp_path):  # noqa: F811 (fixture)
    import json

    from test_train_cache import PoolVideoEncoder, _cacher

    class BrokenVAE(PoolVideoEncoder):        # what a VAE file with NaN weights gives
        def encode(self, video):
            return super().encode(video) * float("nan")

    c = _cacher()
    c.video = BrokenVAE()
    out = tmp_path / "cache"
    with pytest.warns(UserWarning, match="latents holds NaN"):
        stats = c.run(manifest, out)
    assert stats["written"] == 0
    reasons = [json.loads(x)["reason"] for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert sum("latents holds NaN or infinity" in r for r in reasons) == 5, reasons
    for shard in out.glob("shard_*.safetensors"):
        assert read_shard(shard) == []
