"""Data for the trainer: validation batches, per-sample reads, background loading with exact resume."""
import pytest
import torch

from moca_model.training import write_shard
from moca_model.training.synthetic import make_synthetic_shards, synthetic_sample, tiny_train_config
from moca_model.training.trainer import Trainer


def quiet_trainer(cfg):
    return Trainer(cfg, device="cpu", log=lambda *a: None)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two clip sizes: samples 0-1 have 3 latent frames, samples 2-3 have 5 (one size per shard)."""
    d = tmp_path_factory.mktemp("mixed")
    g = torch.Generator().manual_seed(0)
    for k, frames in enumerate((3, 5)):
        write_shard(d / f"shard_{k:05d}.safetensors", [synthetic_sample(g, frames=frames) for _ in range(2)])
    return d


def test_eval_loss_handles_mixed_clip_sizes(mixed, tmp_path):
    """It batched the first 4 samples whatever their size: ValueError ("must share a latent shape")."""
    t = quiet_trainer(tiny_train_config(tmp_path / "r", mixed, data={"batch_size": 1}))
    loss = t.eval_loss(n=4)
    singles = []
    for i in range(4):                     # each sample alone, with the same fixed draws
        b = t.objective.make_batch([t.dataset[i]], [10 ** 12 + i])
        with torch.no_grad():
            singles.append(float(t.objective.losses(t.module, b)["loss"][0]))
    assert loss == pytest.approx(sum(singles) / 4, rel=1e-5)


def test_eval_loss_batches_by_data_batch_size(mixed, tmp_path, monkeypatch):
    t = quiet_trainer(tiny_train_config(tmp_path / "r", mixed, data={"batch_size": 2}))
    seen = []
    real = t.objective.losses

    def spy(module, batch):
        seen.append(tuple(batch.x0.shape[:3]))
        return real(module, batch)
    monkeypatch.setattr(t.objective, "losses", spy)
    t.eval_loss(n=4)
    assert sorted(seen) == [(2, 16, 3), (2, 16, 5)]          # batches of data.batch_size, one clip size each
    seen.clear()
    t.cfg.data.batch_size = 1
    t.eval_loss(n=3)
    assert seen == [(1, 16, 3), (1, 16, 3), (1, 16, 5)]
