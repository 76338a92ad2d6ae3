"""Data for the trainer: validation batches, per-sample reads, background loading with exact resume."""
import os

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


class FileBytes:
    """Bytes the process takes from files: read() syscalls (/proc/self/io rchar) plus every tensor that
    safetensors materialises through its memory map (whole-file loads and per-tensor reads), whatever reader
    the dataset uses."""

    def __init__(self, monkeypatch):
        import safetensors
        import safetensors.torch
        self.mapped = 0
        real_open, real_load = safetensors.safe_open, safetensors.torch.load_file
        counter = self

        class Opened:
            def __init__(self, *a, **k):
                self._f = real_open(*a, **k)

            def __enter__(self):
                self._f.__enter__()
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

            def get_tensor(self, name):
                t = self._f.get_tensor(name)
                counter.mapped += t.nbytes
                return t

            def __getattr__(self, name):
                return getattr(self._f, name)

        def load_file(*a, **k):
            out = real_load(*a, **k)
            counter.mapped += sum(t.nbytes for t in out.values())
            return out
        monkeypatch.setattr(safetensors, "safe_open", Opened)
        monkeypatch.setattr(safetensors.torch, "load_file", load_file)
        self.reset()

    @staticmethod
    def _rchar():
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))

    def reset(self):
        self.mapped, self._r0 = 0, self._rchar()

    @property
    def total(self):
        return self.mapped + self._rchar() - self._r0


def sample_bytes(s):
    return sum(v.nbytes for v in s.values() if isinstance(v, torch.Tensor))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts read() bytes with Linux /proc/self/io")
def test_reading_a_sample_reads_that_sample_only(tmp_path, monkeypatch):
    """One sample used to cost its whole shard (a 4-shard cache that shuffling rarely hits: 6.9x the sample
    bytes from storage at 81 frames, 8 samples per shard)."""
    from moca_model.training.data import SampleOrder, ShardDataset, read_shard
    make_synthetic_shards(tmp_path, num_samples=24, per_shard=4, seed=0, frames=5, height=16, width=16)
    ds = ShardDataset(tmp_path)                                                # 6 shards, headers read here
    truth = [s for p in sorted(tmp_path.glob("*.safetensors")) for s in read_shard(p)]
    io = FileBytes(monkeypatch)
    s = ds[5]
    got = io.total
    assert torch.equal(s["latents"], truth[5]["latents"]) and s["caption"] == truth[5]["caption"]
    header = 8 + int.from_bytes((tmp_path / "shard_00001.safetensors").read_bytes()[:8], "little")
    assert sample_bytes(truth[5]) <= got <= sample_bytes(truth[5]) + header + 4096
    order = SampleOrder(len(ds), seed=1).indices(0, len(ds))                   # a shuffled epoch
    io.reset()
    for i in order:
        ds[i]
    got, need = io.total, sum(sample_bytes(truth[i]) for i in order)
    print(f"\nshuffled epoch: {got / need:.3f}x the sample bytes")
    assert got <= 1.05 * need


def test_background_loading_resumes_exactly(tmp_path):
    """data.num_workers > 0 reads micro-batches ahead in worker processes; an interrupted and resumed run with
    workers equals an uninterrupted run without them, bit for bit."""
    from safetensors.torch import load_file

    from moca_model.training.train_state import list_checkpoints
    make_synthetic_shards(tmp_path / "data", num_samples=6, per_shard=2, seed=0)
    common = dict(optim={"max_steps": 5, "warmup_steps": 1}, objective={"lvpl": {"weight": 0.0}})
    data = {"num_workers": 2, "prefetch": 2, "grad_accum": 2, "batch_size": 1}
    ref = quiet_trainer(tiny_train_config(tmp_path / "ref", tmp_path / "data", data={**data, "num_workers": 0},
                                          **common))
    ref.fit()
    part = quiet_trainer(tiny_train_config(tmp_path / "part", tmp_path / "data", data=data, **common))
    part.fit(stop_after=2)
    resumed = quiet_trainer(tiny_train_config(tmp_path / "part", tmp_path / "data", data=data, **common))
    assert resumed.resume()
    resumed.fit()
    a = load_file(str(list_checkpoints(tmp_path / "ref")[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "part")[-1] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
