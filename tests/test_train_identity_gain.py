"""val/identity_gain: the eval loss with shuffled references minus the matched one. It must be exactly 0 for a
fresh (zero-output) adapter and become positive when the data make the reference predictive of the video."""
import warnings

import pytest
import torch

from moca_model.training.data import write_shard
from moca_model.training.synthetic import make_synthetic_shards, tiny_train_config
from moca_model.training.trainer import Trainer


def identity_bound_shards(out_dir, n: int = 16):
    """Samples whose whole latent is the person's colour (a 16-vector) plus a little noise; the reference's
    face latent carries that colour and the ArcFace vector a fixed random projection of it."""
    g = torch.Generator().manual_seed(3)
    proj = torch.randn(16, 512, generator=g) / 4
    samples = []
    for i in range(n):
        colour = torch.randn(16, generator=g) * 1.5
        samples.append({"latents": colour[:, None, None, None] + 0.1 * torch.randn(16, 3, 8, 8, generator=g),
                        "text": torch.zeros(6, 4096), "arcface": colour @ proj,
                        "face_latent": colour[:, None, None, None].expand(16, 1, 4, 4).clone(),
                        "caption": "", "source": f"bound:{i}"})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_shard(out_dir / "shard_00000.safetensors", samples)
    return out_dir


def quiet_trainer(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Trainer(cfg, device="cpu", log=lambda *a: None)


def test_shuffled_eval_swaps_references(tmp_path):
    shards = tmp_path / "s"
    make_synthetic_shards(shards, num_samples=4, per_shard=4, seed=0)
    t = quiet_trainer(tiny_train_config(tmp_path / "run", shards))
    with pytest.raises(ValueError, match="identity must be"):
        t.eval_loss(4, identity="someone")
    seen = []
    real = t.objective.make_batch
    t.objective.make_batch = lambda samples, positions: (seen.append([s["arcface"] for s in samples]),
                                                         real(samples, positions))[1]
    t.eval_loss(4)
    t.eval_loss(4, identity="shuffled")
    matched, shuffled = [a for b in seen[:2] for a in b], [a for b in seen[2:] for a in b]
    assert all(torch.equal(shuffled[i], matched[(i + 1) % 4]) for i in range(4))


def test_identity_gain_zero_for_fresh_adapter_and_positive_after_training(tmp_path):
    shards = identity_bound_shards(tmp_path / "bound")
    cfg = tiny_train_config(tmp_path / "run", shards,
                            data={"batch_size": 4, "text_len": 6},
                            optim={"lr": 3e-3, "warmup_steps": 5, "max_steps": 30},
                            objective={"id_dropout": 0.0, "text_dropout": 0.0, "lvpl": {"weight": 0.0}},
                            validation={"eval_samples": 16})
    t = quiet_trainer(cfg)
    before = t.identity_gain()
    assert before == 0.0                          # zero-init output projection: identity changes nothing
    t.fit()
    after = t.identity_gain()
    matched = t.eval_loss()
    print(f"\nidentity gain: {before:.4f} -> {after:.4f} (matched eval loss {matched:.4f})")
    assert after > 0.05 * matched


def test_identity_gain_none_without_two_clips_of_one_size(tmp_path):
    shards = tmp_path / "one"
    make_synthetic_shards(shards, num_samples=1, per_shard=1, seed=0)
    t = quiet_trainer(tiny_train_config(tmp_path / "run", shards))
    assert t.identity_gain() is None


def test_loss_only_validation_writes_no_video(tmp_path):
    import json
    shards = tmp_path / "s"
    make_synthetic_shards(shards, num_samples=4, per_shard=4, seed=0)
    t = quiet_trainer(tiny_train_config(tmp_path / "run", shards, optim={"max_steps": 2},
                                        validation={"every": 2, "video": False}))
    t.fit()
    assert not (tmp_path / "run" / "validation").exists()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [k for x in lines for k in x if k.startswith("val/")] == ["val/eval_loss", "val/identity_gain"]
