"""Trainer behaviour on CPU with the tiny preset and synthetic shards made here."""
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from moca_model import MoCADiT, load_moca
from moca_model.training import ShardDataset, TrainConfig, write_shard
from moca_model.training.data import SampleOrder, read_shard
from moca_model.training.synthetic import make_synthetic_shards, synthetic_sample, tiny_train_config
from moca_model.training.trainer import Trainer


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    make_synthetic_shards(d, num_samples=8, per_shard=4, seed=0)
    return d


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


def test_loss_falls(shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "run", shards, optim={"max_steps": 30, "warmup_steps": 3})
    t = Trainer(cfg, device="cpu", log=lambda *a: None)
    start = t.eval_loss(n=8)
    result = t.fit()
    end = t.eval_loss(n=8)
    curve = result["losses"]
    k = 5
    print(f"\nfixed-draw eval loss: start {start:.4f} -> end {end:.4f}")
    print(f"train loss (mean of {k}): first {sum(curve[:k]) / k:.4f} -> last {sum(curve[-k:]) / k:.4f}")
    print("train loss curve:", " ".join(f"{x:.3f}" for x in curve))
    assert end < 0.9 * start
    assert sum(curve[-k:]) < sum(curve[:k])


def _params(run_dir):
    from moca_model.training.train_state import list_checkpoints
    return load_file(str(list_checkpoints(run_dir)[-1] / "model.safetensors"))


@pytest.mark.parametrize("trainable", ["adapter", "full"])
def test_resume_is_bit_identical(shards, tmp_path, trainable):
    """Also with the backbone training beside the adapter in its own optimiser group (optim.backbone_lr_scale)."""
    sections = dict(optim={"max_steps": 8, "warmup_steps": 2, "backbone_lr_scale": 0.1},
                    train={"ema_decay": 0.9, "trainable": trainable}, data={"grad_accum": 2, "batch_size": 1})
    full = Trainer(tiny_train_config(tmp_path / "full", shards, **sections), device="cpu", log=lambda *a: None)
    full.fit()
    part = Trainer(tiny_train_config(tmp_path / "part", shards, **sections), device="cpu", log=lambda *a: None)
    part.fit(stop_after=3)                              # "interrupted" after step 3 (checkpointed there)
    assert part.step == 3
    resumed = Trainer(tiny_train_config(tmp_path / "part", shards, **sections), device="cpu", log=lambda *a: None)
    assert resumed.resume()
    assert resumed.step == 3
    resumed.fit()
    a, b = _params(tmp_path / "full"), _params(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ea = load_file(str(tmp_path / "full" / "moca_adapter.safetensors"))
    eb = load_file(str(tmp_path / "part" / "moca_adapter.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    print(f"\nresume: {len(a)} trainable tensors bit-identical after 3 + 5 steps vs 8 uninterrupted")


def test_exported_adapter_loads_and_changes_output(shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "run", shards, optim={"max_steps": 4, "lr": 1e-2, "warmup_steps": 1})
    t = Trainer(cfg, device="cpu", log=lambda *a: None)
    out = t.fit()["exported"]
    adapter = load_moca(out)
    torch.manual_seed(0)
    model = MoCADiT(adapter.config).eval()
    s = t.dataset[0]
    x = torch.randn(1, 16, 3, 8, 8)
    ctx = torch.randn(1, 16, 4096) * 0.1
    tstep = torch.tensor([500.0])
    with torch.no_grad():
        fresh = model.adapter.tokenizer(arcface=s["arcface"][None], face_latent=s["face_latent"][None])
        base = model(x, tstep, ctx, identity=fresh)
        assert torch.equal(base, model(x, tstep, ctx))           # untrained adapter == backbone
        model.adapter.load_state_dict(adapter.state_dict())
        ident = model.adapter.tokenizer(arcface=s["arcface"][None], face_latent=s["face_latent"][None])
        trained = model(x, tstep, ctx, identity=ident)
    assert (trained - base).abs().max() > 1e-4


def test_corrupt_shard_is_skipped_with_warning(shards, tmp_path):
    import shutil
    d = tmp_path / "data"
    shutil.copytree(shards, d)
    (d / "shard_99999.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    good = d / "shard_00000.safetensors"
    (d / "shard_99998.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])   # truncated
    with pytest.warns(UserWarning, match="Skipping training shard"):
        ds = ShardDataset(d)
    assert len(ds) == 8 and len(ds.skipped) == 2
    cfg = tiny_train_config(tmp_path / "run", d, optim={"max_steps": 2})
    t = quiet(Trainer, cfg, device="cpu", log=lambda *a: None)
    t.fit()
    assert t.step == 2


def test_shard_roundtrip_and_validation(tmp_path):
    g = torch.Generator().manual_seed(1)
    s = synthetic_sample(g, refs=2)
    p = write_shard(tmp_path / "a.safetensors", [dict(s, caption="hi", source="x.mp4")])
    back = read_shard(p)[0]
    assert back["caption"] == "hi" and torch.equal(back["latents"], s["latents"])
    assert back["arcface"].shape == (2, 512)
    bad = dict(s)
    bad["face_mask"] = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="face_mask"):
        write_shard(tmp_path / "b.safetensors", [bad])
    assert not list(tmp_path.glob(".*tmp"))


def test_sample_order_is_a_stream_of_permutations():
    o = SampleOrder(5, seed=3)
    first = o.indices(0, 5)
    assert sorted(first) == list(range(5))
    assert o.indices(3, 4) == first[3:] + o.indices(5, 2)


def test_draws_do_not_depend_on_the_batch_split(shards, tmp_path):
    t = Trainer(tiny_train_config(tmp_path / "r", shards), device="cpu", log=lambda *a: None)
    ds = t.dataset
    whole = t.objective.make_batch([ds[i] for i in range(4)], [10, 11, 12, 13])
    half = t.objective.make_batch([ds[i] for i in range(2, 4)], [12, 13])
    assert torch.equal(whole.noise[2:], half.noise) and torch.equal(whole.sigma[2:], half.sigma)


def test_identity_dropout_is_exactly_the_backbone(shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "r", shards, optim={"max_steps": 3, "lr": 1e-2, "warmup_steps": 1})
    t = Trainer(cfg, device="cpu", log=lambda *a: None)
    t.fit()                                                     # adapter is now non-zero
    b = t.objective.make_batch([t.dataset[i] for i in range(2)], [0, 1])
    dit = t.module.dit
    with torch.no_grad():
        ident = dit.adapter.tokenizer(arcface=b.arcface, face_latent=b.face_latent)
        v = dit(b.noise, b.sigma * 1000, b.context, identity=ident, identity_mask=torch.tensor([0.0, 1.0]))
        v_base = dit(b.noise, b.sigma * 1000, b.context)
    assert torch.equal(v[0], v_base[0])
    assert not torch.allclose(v[1], v_base[1])


def test_config_rejects_unknown_keys_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrr'\] in config section 'optim'"):
        TrainConfig.from_dict({"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match="train.trainable"):
        TrainConfig.from_dict({"train": {"trainable": "everything"}})
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"optim": {"lr": 2e-4}}))
    cfg = TrainConfig.load(p).with_overrides(["data.batch_size=3", "train.trainable=lora"])
    assert cfg.optim.lr == 2e-4 and cfg.data.batch_size == 3 and cfg.train.trainable == "lora"


def test_lora_and_full_train_and_export(shards, tmp_path):
    from moca_model.checkpoint import read_moca
    for mode in ("lora", "full"):
        cfg = tiny_train_config(tmp_path / mode, shards, optim={"max_steps": 2}, train={"trainable": mode})
        t = Trainer(cfg, device="cpu", log=lambda *a: None)
        out = t.fit()["exported"]
        assert read_moca(out).kind == "adapter"
        if mode == "lora":
            lora = load_file(str(out.with_name(out.stem + "_lora.safetensors")))
            assert "diffusion_model.blocks.0.self_attn.q.lora_up.weight" in lora
            assert any(v.abs().sum() > 0 for k, v in lora.items() if k.endswith("lora_up.weight"))
        else:
            assert read_moca(out.with_name(out.stem + "_combined.safetensors")).kind == "combined"


def test_backbone_lr_scale_sets_the_backbone_group_apart(shards, tmp_path):
    """trainable full: the adapter steps at optim.lr, the backbone at lr * backbone_lr_scale; an adapter-only run
    keeps one group (its checkpoints resume as before); a scale <= 0 is refused by name."""
    cfg = tiny_train_config(tmp_path / "full", shards, optim={"max_steps": 2, "warmup_steps": 1, "lr": 1e-3,
                                                              "backbone_lr_scale": 0.1}, train={"trainable": "full"})
    t = Trainer(cfg, device="cpu", log=lambda *a: None)
    adapter_ids = {id(p) for n, p in t.params.items() if n.startswith("dit.adapter.")}
    groups = t.optimizer.param_groups
    assert len(groups) == 2 and {id(p) for p in groups[0]["params"]} == adapter_ids
    assert len(groups[1]["params"]) == len(t.params) - len(adapter_ids) > 0
    before = {n: p.detach().clone() for n, p in t.params.items()}
    t.train_step()
    assert groups[0]["lr"] == pytest.approx(1e-3) and groups[1]["lr"] == pytest.approx(1e-4)
    moved = [n for n, p in t.params.items() if not torch.equal(p, before[n])]
    assert any(n.startswith("dit.blocks.") for n in moved) and any(n.startswith("dit.adapter.") for n in moved)
    only = Trainer(tiny_train_config(tmp_path / "adapter", shards, optim={"max_steps": 1, "backbone_lr_scale": 0.1}),
                   device="cpu", log=lambda *a: None)
    assert len(only.optimizer.param_groups) == 1
    with pytest.raises(ValueError, match="optim.backbone_lr_scale"):
        TrainConfig.from_dict({"optim": {"backbone_lr_scale": 0}})


def test_export_command_from_checkpoint(shards, tmp_path):
    from moca_model.training.cli import main
    from moca_model.training.train_state import list_checkpoints
    cfg = tiny_train_config(tmp_path / "run", shards, optim={"max_steps": 2}, train={"ema_decay": 0.5})
    Trainer(cfg, device="cpu", log=lambda *a: None).fit()
    out = tmp_path / "exp.safetensors"
    assert main(["export", "--checkpoint", str(list_checkpoints(tmp_path / "run")[-1]), "--out", str(out)]) == 0
    a, b = load_file(str(out)), load_file(str(tmp_path / "run" / "moca_adapter.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {v.dtype for v in a.values()} == {torch.bfloat16}            # both exports default to bf16


def test_validation_writes_a_video(shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "run", shards, optim={"max_steps": 2},
                            validation={"every": 2, "steps": 2})
    t = Trainer(cfg, device="cpu", log=lambda *a: None)
    t.fit()
    vids = list((tmp_path / "run" / "validation").glob("*.mp4"))
    assert len(vids) == 1 and vids[0].stat().st_size > 0
    from moca_model.video import read_video
    frames, _ = read_video(vids[0])
    assert frames.shape[0] == 3
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/eval_loss" in x for x in lines) and any("train/loss" in x for x in lines)
    gains = [x["val/identity_gain"] for x in lines if "val/identity_gain" in x]
    assert len(gains) == 1 and gains[0] == gains[0]                       # logged, and not NaN


@pytest.mark.parametrize("name", ["train_tiny.yaml", "train_wan2.1-1.3b.yaml", "train_wan2.1-14b.yaml",
                                  "train_wan2.2-a14b-high-noise.yaml", "train_wan2.2-a14b-low-noise.yaml",
                                  "toy_moca.yaml", "toy_moca_joint.yaml", "toy_moca_multi.yaml",
                                  "toy_moca_multi_binding.yaml"])
def test_example_configs_parse(name):
    pytest.importorskip("yaml", reason="PyYAML not installed (requirements-train.txt); YAML configs untested")
    from pathlib import Path
    cfg = TrainConfig.load(Path(__file__).resolve().parents[1] / "configs" / name)
    from moca_model.variants import model_config, variant_of
    mc = model_config(cfg.model.preset, cfg.model.variant, cfg.model.overrides)
    # the real-Wan configs train the presets' lean MoCA (issue 10); the toy ones the toy adapter as designed
    assert variant_of(mc) == ("lean" if name.startswith("train_wan") else "moca"), name


def test_validation_likeness_score_with_a_tiny_face_pack(tmp_path):
    face_models = pytest.importorskip("face_models", reason="tests/face_models.py (face branch) not present")
    pytest.importorskip("onnxruntime")
    from moca_model.face import FaceAnalyzer
    from moca_model.training.validation import likeness_to_embedding
    face_models.make_tiny_pack(tmp_path)
    img = face_models.astronaut()
    ref = FaceAnalyzer.load(tmp_path, backend="onnxruntime").encode([img]).embedding
    frames = torch.from_numpy(img).float().div(255)[None].repeat(2, 1, 1, 1)
    score = likeness_to_embedding(str(tmp_path), "antelopev2", frames, ref)
    assert score is not None and score > 0.99
    with pytest.warns(UserWarning, match="likeness score skipped"):
        assert likeness_to_embedding(str(tmp_path), "antelopev2", torch.zeros(2, 64, 64, 3), ref) is None


def test_sample_from_comfy_parts_round_trips_through_a_shard(tmp_path):
    """What MoCA Save Training Sample writes: raw VAE latents go to model space, pixel masks to the latent grid."""
    from moca_model.latents import normalize_latent
    from moca_model.training.data import ShardError, read_shard, sample_from_parts, write_shard
    raw = torch.randn(1, 16, 3, 4, 6) * 2
    mask = torch.zeros(9, 32, 48)
    mask[5:, :16, :24] = 1.0                                   # a face in the second half, top-left quarter
    s = sample_from_parts(raw, torch.randn(1, 7, 4096), torch.randn(1, 512), torch.randn(1, 16, 1, 32, 32), mask,
                          caption="hello")
    torch.testing.assert_close(s["latents"], normalize_latent(raw)[0])
    assert s["face_mask"].shape == (3, 4, 6)
    assert s["face_mask"][0].sum() == 0 and s["face_mask"][2, :2, :3].min() == 1 and s["face_mask"][2, 2:].max() == 0
    path = write_shard(tmp_path / "one.safetensors", [s], overwrite=False)
    back = read_shard(path)[0]
    assert back["caption"] == "hello" and torch.equal(back["face_mask"], s["face_mask"])
    with pytest.raises(FileExistsError):
        write_shard(path, [s], overwrite=False)
    with pytest.raises(ShardError, match=r"face mask must be \[9, 32, 48\]"):
        sample_from_parts(raw, torch.randn(1, 7, 4096), torch.randn(1, 512), torch.randn(1, 16, 1, 32, 32),
                          mask[:5])
    with pytest.raises(ShardError, match="one Wan 2.1 video latent"):
        sample_from_parts(raw[0], torch.randn(1, 7, 4096), torch.randn(1, 512), torch.randn(1, 16, 1, 32, 32))
