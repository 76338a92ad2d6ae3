"""Several people per clip in training: the shard format's per-person regions and identities (old shards still
load), mixed one- and two-person batches, and the regional identity in the training module."""
from pathlib import Path

import pytest
import torch

from moca_model.training import ShardDataset, write_shard
from moca_model.training.data import ShardError, num_people, read_shard, read_shard_header
from moca_model.training.synthetic import synthetic_multi_sample, synthetic_sample, tiny_train_config
from moca_model.training.trainer import Trainer

OLD_SHARD = Path(__file__).parent / "data" / "shard_v1_c9ae6d1.safetensors"   # written by commit c9ae6d1's code


def test_a_shard_written_before_multi_person_loads():
    assert read_shard_header(OLD_SHARD)["format_version"] == "1"
    samples = read_shard(OLD_SHARD)
    assert len(samples) == 2 and [num_people(s) for s in samples] == [1, 1]
    assert samples[0]["latents"].shape == (16, 2, 4, 4) and samples[0]["arcface"].shape == (512,)
    assert samples[1]["face_mask"].sum() == 2 * 2 * 2                 # the synthetic centre square, 2 frames
    ds = ShardDataset([OLD_SHARD])
    assert len(ds) == 2 and torch.equal(ds[1]["arcface"], samples[1]["arcface"])


def test_multi_person_shard_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    one, two = synthetic_sample(g), synthetic_multi_sample(g, people=2)
    write_shard(tmp_path / "one.safetensors", [one])
    assert read_shard_header(tmp_path / "one.safetensors")["format_version"] == "1"   # old readers keep working
    write_shard(tmp_path / "mixed.safetensors", [one, two])
    assert read_shard_header(tmp_path / "mixed.safetensors")["format_version"] == "2"
    back = ShardDataset([tmp_path / "mixed.safetensors"])
    a, b = back[0], back[1]
    assert num_people(a) == 1 and "person2.arcface" not in a
    assert num_people(b) == 2
    assert torch.equal(b["person_mask"], two["person_mask"]) and torch.equal(b["person2.arcface"], two["person2.arcface"])


def test_multi_person_samples_are_validated(tmp_path):
    g = torch.Generator().manual_seed(0)
    s = synthetic_multi_sample(g, people=3)
    del s["person3.face_latent"]
    with pytest.raises(ShardError, match="person3.face_latent"):
        write_shard(tmp_path / "x.safetensors", [s])
    s = synthetic_multi_sample(g, people=2)
    del s["person_mask"]
    with pytest.raises(ShardError, match="no person_mask"):
        write_shard(tmp_path / "x.safetensors", [s])
    s = synthetic_multi_sample(g, people=2)
    s["person_mask"] = s["person_mask"][:, :2]
    with pytest.raises(ShardError, match="latent grid"):
        write_shard(tmp_path / "x.safetensors", [s])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    g = torch.Generator().manual_seed(1)
    samples = [synthetic_sample(g), synthetic_multi_sample(g), synthetic_sample(g), synthetic_multi_sample(g)]
    write_shard(d / "shard_0.safetensors", samples)
    return d


def trainer(shards, out, **kw):
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return Trainer(tiny_train_config(out, shards, **kw))


@torch.no_grad()
def test_mixed_batch_draws_and_one_person_loss_unchanged(mixed, tmp_path):
    t = trainer(mixed, tmp_path / "run")
    from moca_model.adapter import live_adapter
    live_adapter(t.module.dit, seed=2)                                   # the identity path must act
    ds, obj = t.dataset, t.objective
    obj.cfg.objective.text_dropout = obj.cfg.objective.id_dropout = 0.0
    lone = obj.make_batch([ds[0]], [5])
    both = obj.make_batch([ds[0], ds[1]], [5, 6])
    assert lone.people is None and both.people is not None
    for f in ("x0", "noise", "sigma", "arcface", "face_latent"):       # a one-person sample draws what it did
        assert torch.equal(getattr(both, f)[0], getattr(lone, f)[0])
    p = both.people
    assert p.arcface.shape == (2, 2, 512) and p.region.shape == (2, 2, 3, 8, 8)
    assert p.region[0, 0].min() == 1 and p.region[0, 1].max() == 0    # one person: whole frame / nobody
    assert torch.equal(p.region[1], ds[1]["person_mask"]) and torch.equal(p.arcface[1, 1], ds[1]["person2.arcface"])
    l1, l2 = obj.losses(t.module, lone)["loss"], obj.losses(t.module, both)["loss"]
    assert l2[0] == pytest.approx(float(l1[0]), rel=1e-4)              # whole-frame region == plain identity
    # the second person's identity acts on the two-person clip only
    p.arcface[1, 1] = torch.randn(512)
    l3 = obj.losses(t.module, both)["loss"]
    assert l3[0] == l2[0] and abs(float(l3[1] - l2[1])) > 1e-7


def test_automatic_binding_share_trains_strips_instead_of_masks(mixed, tmp_path):
    """data.automatic_binding: that share of several-people clips gets the left-to-right strips (what the
    binding without masks gives at inference) as regions; 0 keeps the masks and every draw as before."""
    from moca_model.regions import left_to_right_regions
    ds = trainer(mixed, tmp_path / "r0").dataset
    two = [dict(ds[1]), dict(ds[3])]
    for s in two:                                                       # heads, person 0 on the right
        pm = torch.zeros_like(s["person_mask"])
        pm[0, :, 2:5, 5:7] = 1
        pm[1, :, 2:5, 1:3] = 1
        s["person_mask"] = pm
    batches = {}
    for share in (0.0, 1.0, 0.5):
        obj = trainer(mixed, tmp_path / f"r{share}", data={"automatic_binding": share}).objective
        batches[share] = [obj.make_batch(two, [p, p + 1]) for p in range(0, 40, 2)]
    masks = torch.stack([s["person_mask"] for s in two])
    strips = torch.stack([left_to_right_regions(s["person_mask"]) for s in two])
    assert strips[0, 0, 0, 0].tolist() == [0] * 4 + [1] * 4             # person 0 takes the right half
    for b0, b1 in zip(batches[0.0], batches[1.0]):
        assert torch.equal(b0.people.region, masks) and torch.equal(b1.people.region, strips)
        for f in ("x0", "noise", "sigma", "context", "arcface"):           # the share draws nothing else
            assert torch.equal(getattr(b0, f), getattr(b1, f))
        assert torch.equal(b0.people.arcface, b1.people.arcface)
    as_strips = [torch.equal(b.people.region[i], strips[i]) for b in batches[0.5] for i in (0, 1)]
    assert 0 < sum(as_strips) < len(as_strips)                             # about half, drawn per clip
    with pytest.raises(ValueError, match="automatic_binding"):
        trainer(mixed, tmp_path / "bad", data={"automatic_binding": 1.5})


def test_trainer_runs_mixed_batches(mixed, tmp_path):
    t = trainer(mixed, tmp_path / "run", optim={"max_steps": 3})
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        out = t.fit()
    losses = out["losses"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(x["loss"] if isinstance(x, dict) else x)) for x in losses)


def test_cache_reads_a_manifest_line_with_two_people(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from moca_model.video import write_video
    from test_train_cache import _cacher, _clip
    (tmp_path / "v").mkdir()
    _clip(tmp_path / "v" / "two.mp4", 1)
    _clip(tmp_path / "v" / "one.mp4", 2)
    for name, cols in (("a", slice(0, 16)), ("b", slice(16, 32))):   # person a left half, b right half
        m = torch.zeros(5, 32, 32, 3)
        m[:, :, cols] = 1
        write_video(tmp_path / "v" / f"mask_{name}.mp4", m, fps=8)
        rgb = (np.full((40, 40, 3), 60 if name == "a" else 200)).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"{name}.png")
    lines = [{"video": "v/two.mp4", "caption": "two people",
              "people": [{"reference": ["a.png"], "face_mask": "v/mask_a.mp4"},
                         {"reference": "b.png", "face_mask": "v/mask_b.mp4"}]},
             {"video": "v/one.mp4", "caption": "one person", "reference": ["a.png"]},
             {"video": "v/one.mp4", "caption": "bad", "people": [{"reference": "from_video", "face_mask": "v/mask_a.mp4"},
                                                                  {"reference": "b.png", "face_mask": "v/mask_b.mp4"}]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.warns(UserWarning, match="person 1 needs its own"):
        stats = _cacher().run(tmp_path / "m.jsonl", tmp_path / "cache")
    assert stats["written"] == 2 and stats["skipped"] == 1
    ds = ShardDataset(tmp_path / "cache")
    two, one = ds[0], ds[1]
    assert num_people(two) == 2 and num_people(one) == 1
    pm = two["person_mask"]                                              # [2, T=2, 4, 4]
    assert pm.shape == (2, 2, 4, 4)
    assert pm[0, :, :, :2].min() > 0.9 and pm[0, :, :, 2:].max() < 0.1   # a: left, b: right
    assert pm[1, :, :, 2:].min() > 0.9 and pm[1, :, :, :2].max() < 0.1
    assert torch.equal(two["face_mask"], pm.amax(0))
    assert torch.equal(two["arcface"], one["arcface"])                   # person 1 = a, as in the one-person clip
    assert not torch.equal(two["person2.arcface"], two["arcface"])


def test_toy_multi_config_fine_tunes_the_shipped_pair_on_both_shard_folders():
    """The joint toy recipe (configs/toy_moca_joint.yaml), continued from the shipped backbone and adapter on the
    one- and two-person shards, at half the learning rate for 1,500 steps."""
    pytest.importorskip("yaml", reason="PyYAML not installed (requirements-train.txt)")
    from moca_model.training import TrainConfig
    root = Path(__file__).resolve().parents[1] / "configs"
    one, multi = (TrainConfig.load(root / n).to_dict() for n in ("toy_moca_joint.yaml", "toy_moca_multi.yaml"))
    assert multi["data"]["shards"] == ["runs/toy/cache", "runs/toy/cache_two"]
    assert multi["out_dir"] != one["out_dir"] and multi["export"]["name"] == "toy_moca_multi_adapter.safetensors"
    assert multi["model"]["backbone"] == "toy_models/diffusion_models/toy_wan_t2v.safetensors"
    assert multi["model"]["adapter_init"] == "toy_models/moca/toy_moca_adapter.safetensors"
    assert multi["train"]["trainable"] == "full" and multi["optim"]["backbone_lr_scale"] == 0.1
    assert (multi["optim"]["lr"], multi["optim"]["max_steps"]) == (5e-4, 1500)
    for d in (one, multi):
        d.pop("out_dir"), d["data"].pop("shards"), d["export"].pop("name")
        d["model"].pop("backbone"), d["model"].pop("adapter_init"), d["optim"].pop("lr"), d["optim"].pop("max_steps")
    assert multi == one
