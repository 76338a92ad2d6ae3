"""Recogniser provenance: identity files, shards and adapters record which face recogniser made their embeddings;
the trainer, the cache command, the demo, the toy pipeline and MoCA Apply's logic refuse a mismatch; old files
load with a one-line notice; packs beyond the built-in ones are registered by a moca_pack.json manifest."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil

import pytest
import torch

import comfy_harness as H
import face_models
from moca_model import MoCAConfig, MoCAIdentity, provenance
from moca_model.adapter import MoCAAdapter
from moca_model.checkpoint import load_moca, read_moca, save_moca
from moca_model.face import FaceAnalyzer, FaceIdentity, FaceOptionError, FacePackError
from moca_model.face.packs import MANIFEST, PACKS, PackSpec, write_manifest
from moca_model.provenance import Recognizer, RecognizerMismatchError
from moca_model.training.data import ShardDataset, read_shard_header, write_shard
from moca_model.training.synthetic import synthetic_sample, tiny_train_config

REC_A = Recognizer("antelopev2", "glintr100.onnx", "aaaaaaaaaaaaaaaa")
REC_B = Recognizer("buffalo_l", "w600k_r50.onnx", "bbbbbbbbbbbbbbbb")


def _notices(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "moca.provenance"]


# ---------------------------------------------------------------------------------------------- the record
def test_file_hash_is_the_sha256_prefix_and_cached_by_path_mtime_size(tmp_path, monkeypatch):
    f = tmp_path / "rec.onnx"
    f.write_bytes(b"one recogniser")
    assert provenance.file_sha256(f) == hashlib.sha256(b"one recogniser").hexdigest()[:16]
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(provenance.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    provenance.file_sha256(f)
    assert calls == []                                           # cached: not read again
    f.write_bytes(b"another recogniser, longer")                 # new size and mtime: hashed again
    assert provenance.file_sha256(f) == real(b"another recogniser, longer").hexdigest()[:16] and calls == [1]


def test_record_round_trips_and_a_damaged_one_is_named():
    assert Recognizer.from_value(REC_A.to_json()) == REC_A == Recognizer.from_value(REC_A.as_dict())
    assert provenance.from_header(provenance.header(REC_A), "x") == REC_A and provenance.header(None) == {}
    with pytest.raises(ValueError, match="x.safetensors: its 'face_recognizer' record"):
        provenance.from_header({"face_recognizer": "{not json"}, "x.safetensors")


def test_mismatch_message_names_both_recognisers_and_the_fix():
    with pytest.raises(RecognizerMismatchError) as e:
        provenance.check_identity(REC_A, "a.safetensors", REC_B, "input 'moca_id'", "MoCA Apply")
    msg = str(e.value)
    assert REC_A.label() in msg and REC_B.label() in msg and "a.safetensors" in msg
    assert "encode the reference photos again with the 'antelopev2' face pack" in msg
    provenance.check_identity(REC_A, "a", Recognizer("renamed", "x.onnx", REC_A.sha256), "i")   # same bytes: fine
    provenance.check_identity(None, "a", REC_B, "i")                                          # unrecorded: passes
    provenance.check_identity(REC_A, "a", None, "i")


# ---------------------------------------------------------------------------------------------- identity files
def test_analyzer_records_its_recogniser_in_identity_files(tiny_analyzer, astronaut, tmp_path):
    rec = tiny_analyzer.recognizer
    want = hashlib.sha256(tiny_analyzer.pack.recognizer.read_bytes()).hexdigest()[:16]
    assert (rec.pack, rec.file, rec.sha256) == ("antelopev2", "glintr100.onnx", want)
    face = tiny_analyzer.encode([astronaut])
    path = face.save(tmp_path / "face.safetensors")
    assert json.loads(read_shard_header_like(path)["face_recognizer"]) == rec.as_dict()
    assert FaceIdentity.load(path).recognizer == rec
    ident = MoCAIdentity.load(path)
    assert ident.recognizer == rec
    back = MoCAIdentity.load(ident.save(tmp_path / "node.safetensors"))        # the node writer keeps it
    assert back.recognizer == rec
    assert f"recogniser {rec.label()}" in back.summary()                        # what Load Identity's info shows


def read_shard_header_like(path):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_old_identity_file_loads_with_one_notice(tmp_path, caplog):
    p = MoCAIdentity(torch.randn(1, 512), torch.randn(1, 16, 1, 4, 4)).save(tmp_path / "old.safetensors")
    assert "face_recognizer" not in read_shard_header_like(p)
    with caplog.at_level(logging.WARNING, "moca.provenance"):
        assert MoCAIdentity.load(p).recognizer is None
        assert "recogniser not recorded" in MoCAIdentity.load(p).summary()
    notes = _notices(caplog)
    assert len(notes) == 1 and "old.safetensors" in notes[0] and "no record of which face recogniser" in notes[0]


# ---------------------------------------------------------------------------------------------- adapters
def test_adapter_records_the_recogniser_and_old_adapters_load_with_one_notice(tmp_path, caplog):
    adapter = MoCAAdapter(MoCAConfig.preset("tiny"))
    p = save_moca(tmp_path / "new.safetensors", adapter, recognizer=REC_A)
    assert read_moca(p).recognizer == REC_A and load_moca(p).moca_recognizer == REC_A
    assert "face_recognizer" not in read_moca(p).metadata
    old = save_moca(tmp_path / "old_adapter.safetensors", adapter)
    with caplog.at_level(logging.WARNING, "moca.provenance"):
        assert read_moca(old).recognizer is None
        read_moca(old)
    assert len([n for n in _notices(caplog) if "old_adapter.safetensors" in n]) == 1


# ---------------------------------------------------------------------------------------------- shards + trainer
def _shard(path, rec, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    samples = [dict(synthetic_sample(g), caption=f"clip {i}") for i in range(n)]
    return write_shard(path, samples, recognizer=rec)


def test_shards_record_the_recogniser_and_refuse_to_mix(tmp_path, caplog):
    a = _shard(tmp_path / "a" / "shard_0.safetensors", REC_A)
    assert json.loads(read_shard_header(a)["face_recognizer"]) == REC_A.as_dict()
    assert ShardDataset(tmp_path / "a").recognizer == REC_A
    _shard(tmp_path / "a" / "shard_1.safetensors", None, seed=1)                   # an old shard: notice only
    with caplog.at_level(logging.WARNING, "moca.provenance"):
        assert ShardDataset(tmp_path / "a").recognizer == REC_A
    assert any("shard_1.safetensors" in n for n in _notices(caplog))
    _shard(tmp_path / "a" / "shard_2.safetensors", REC_B, seed=2)
    with pytest.raises(RecognizerMismatchError) as e:
        ShardDataset(tmp_path / "a")
    msg = str(e.value)
    assert REC_A.label() in msg and REC_B.label() in msg and "shard_2.safetensors" in msg
    assert "train_moca.py cache" in msg


def test_many_old_shards_give_one_notice_line(tmp_path, caplog):
    for i in range(5):
        _shard(tmp_path / f"shard_{i}.safetensors", None, n=1, seed=i)
    with caplog.at_level(logging.WARNING, "moca.provenance"):
        ShardDataset(tmp_path)
    notes = _notices(caplog)
    assert len(notes) == 1 and "5 of 5 training shards" in notes[0]


def _config(tmp_path, shards, **kw):
    return tiny_train_config(tmp_path / "run", shards, data={"batch_size": 1}, optim={"max_steps": 2}, **kw)


def test_trainer_exports_the_shards_recogniser_and_refuses_mixed_shards(tmp_path):
    from moca_model.training.export import export_checkpoint
    from moca_model.training.trainer import Trainer
    _shard(tmp_path / "a" / "shard_0.safetensors", REC_A)
    t = Trainer(_config(tmp_path, tmp_path / "a", checkpoint={"every": 1}), device="cpu", log=lambda *a: None)
    exported = t.fit()["exported"]
    assert read_moca(exported).recognizer == REC_A
    ckpt = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    assert read_moca(export_checkpoint(ckpt, tmp_path / "re.safetensors")).recognizer == REC_A
    _shard(tmp_path / "a" / "shard_1.safetensors", REC_B, seed=1)
    with pytest.raises(RecognizerMismatchError, match="buffalo_l"):
        Trainer(_config(tmp_path, tmp_path / "a"), device="cpu", log=lambda *a: None)


def test_trainer_refuses_to_resume_or_start_from_another_recognisers_weights(tmp_path):
    from moca_model.training.trainer import Trainer
    _shard(tmp_path / "a" / "shard_0.safetensors", REC_A)
    t = Trainer(_config(tmp_path, tmp_path / "a", checkpoint={"every": 1}), device="cpu", log=lambda *a: None)
    t.fit(stop_after=1)
    _shard(tmp_path / "b" / "shard_0.safetensors", REC_B)                          # same samples, other recogniser
    t2 = Trainer(_config(tmp_path, tmp_path / "b"), device="cpu", log=lambda *a: None)
    with pytest.raises(RecognizerMismatchError) as e:
        t2.resume()
    assert REC_A.label() in str(e.value) and REC_B.label() in str(e.value) and "--resume" in str(e.value)
    init = save_moca(tmp_path / "init.safetensors", MoCAAdapter(MoCAConfig.preset("tiny")), recognizer=REC_A)
    with pytest.raises(RecognizerMismatchError, match="model.adapter_init init.safetensors"):
        Trainer(_config(tmp_path, tmp_path / "b", model={"adapter_init": str(init)}), device="cpu",
                log=lambda *a: None)


def test_trainer_refuses_a_validation_face_pack_of_another_recogniser(tmp_path, tiny_analyzer):
    from moca_model.training.trainer import Trainer
    root = tiny_analyzer.pack.folder.parents[1]                                  # <root>/models/antelopev2
    _shard(tmp_path / "a" / "shard_0.safetensors", REC_A)
    with pytest.raises(RecognizerMismatchError, match="validation.face_pack 'antelopev2'.*set validation.face_pack"):
        Trainer(_config(tmp_path, tmp_path / "a", validation={"face_models": str(root)}), device="cpu",
                log=lambda *a: None)
    _shard(tmp_path / "b" / "shard_0.safetensors", tiny_analyzer.recognizer)      # cached with that very pack
    t = Trainer(_config(tmp_path, tmp_path / "b", validation={"face_models": str(root)}), device="cpu",
                log=lambda *a: None)
    assert t.recognizer == tiny_analyzer.recognizer


def test_cache_records_the_recogniser_and_refuses_a_folder_of_another(tmp_path):
    from test_train_cache import ColourFaceEncoder, HashTextEncoder, PoolVideoEncoder, _clip

    from moca_model.training.cache import Cacher
    (tmp_path / "v").mkdir()
    _clip(tmp_path / "v" / "c.mp4", 0)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "v/c.mp4", "caption": "a person", "reference": "from_video"}) + "\n")

    def cacher(rec):
        face = ColourFaceEncoder()
        face.recognizer = rec
        return Cacher(PoolVideoEncoder(), HashTextEncoder(), face, num_frames=5, height=32, width=32, fps=None,
                      log=lambda *a: None)

    cacher(REC_A).run(manifest, tmp_path / "out")
    assert ShardDataset(tmp_path / "out").recognizer == REC_A
    other = cacher(REC_B)
    with pytest.raises(RecognizerMismatchError) as e:
        other.run(manifest, tmp_path / "out")
    assert REC_A.label() in str(e.value) and "another --out" in str(e.value) and other.video.calls == 0


# ---------------------------------------------------------------------------------------------- demo, toy, nodes
def test_demo_refuses_an_identity_of_another_recogniser(tmp_path):
    from moca_model import demo
    adapter = save_moca(tmp_path / "ad.safetensors", MoCAAdapter(MoCAConfig.preset("tiny")), recognizer=REC_A)
    args = argparse.Namespace(checkpoint=None, weight_seed=0, preset="tiny", wan=None, adapter=str(adapter),
                              identity=None, face=None, seed=0)
    model, _ = demo.build_model(args)
    args.identity = str(MoCAIdentity(torch.randn(1, 512), None, recognizer=REC_B).save(tmp_path / "b.safetensors"))
    with pytest.raises(RecognizerMismatchError) as e:
        demo.build_identity(args, model)
    assert REC_A.label() in str(e.value) and REC_B.label() in str(e.value) and "MoCA demo" in str(e.value)
    args.identity = str(MoCAIdentity(torch.randn(1, 512), None, recognizer=REC_A).save(tmp_path / "a.safetensors"))
    tokens, _ = demo.build_identity(args, model)
    assert tokens.ndim == 3


def test_toy_pipeline_refuses_an_adapter_of_another_recogniser(tmp_path, tiny_analyzer):
    from moca_model.toy.pipeline import check_adapter_recognizer
    good = save_moca(tmp_path / "good.safetensors", MoCAAdapter(MoCAConfig.preset("tiny")),
                     recognizer=tiny_analyzer.recognizer)
    check_adapter_recognizer(good, tiny_analyzer)
    bad = save_moca(tmp_path / "bad.safetensors", MoCAAdapter(MoCAConfig.preset("tiny")), recognizer=REC_B)
    with pytest.raises(RecognizerMismatchError, match="bad.safetensors.*buffalo_l|buffalo_l.*bad.safetensors"):
        check_adapter_recognizer(bad, tiny_analyzer)


def test_moca_apply_logic_refuses_an_identity_of_another_recogniser():
    """nodes.logic.check_identity_recognizer: what MoCA Apply (and its wrapper, for a conditioning's own
    identity) calls; the ComfyUI-side test runs the node itself."""
    logic = H.pack_module("nodes.logic")
    mm = H.pack_module("moca_model")
    adapter = argparse.Namespace(model=argparse.Namespace(moca_recognizer=REC_A, moca_name="a.safetensors"))
    ident = mm.MoCAIdentity(torch.randn(1, 512), None, recognizer=REC_B)
    with pytest.raises(ValueError) as e:
        logic.check_identity_recognizer(adapter, ident)
    msg = str(e.value)
    assert msg.startswith("MoCA Apply: input 'moca_id'") and "a.safetensors" in msg
    assert REC_A.label() in msg and REC_B.label() in msg
    logic.check_identity_recognizer(adapter, mm.MoCAIdentity(torch.randn(1, 512), None, recognizer=REC_A))
    logic.check_identity_recognizer(adapter, mm.MoCAIdentity(None, torch.randn(1, 16, 1, 4, 4)))  # no ArcFace


# ---------------------------------------------------------------------------------------------- pack manifests
def _manifest_pack(root, name="myface", **recognizer):
    """The tiny antelopev2 files renamed (det.onnx, rec.onnx) in <root>/models/<name>/ with a manifest."""
    src = face_models.make_tiny_pack(root / "src")
    folder = root / "models" / name
    folder.mkdir(parents=True)
    shutil.copy(src / "scrfd_10g_bnkps.onnx", folder / "det.onnx")
    shutil.copy(src / "glintr100.onnx", folder / "rec.onnx")
    (folder / MANIFEST).write_text(json.dumps({
        "format": "moca-face-pack", "version": 1, "name": name, "detector": {"file": "det.onnx", "type": "scrfd"},
        "recognizer": {"file": "rec.onnx", "input_size": 112, "embedding_size": 512, **recognizer},
        "licence": "test"}))
    return folder


def test_a_manifest_registers_a_pack_under_its_own_name(tmp_path, tiny_analyzer, astronaut):
    _manifest_pack(tmp_path)
    an = FaceAnalyzer.load(tmp_path, pack="myface", backend="onnxruntime")
    assert an.pack.recognizer.name == "rec.onnx" and an.pack.spec.licence == "test"
    a, b = an.encode([astronaut]), tiny_analyzer.encode([astronaut])
    assert torch.allclose(a.embedding, b.embedding, atol=1e-6)                    # the same model, found by manifest
    assert an.recognizer.pack == "myface" and an.recognizer.matches(tiny_analyzer.recognizer)
    assert a.recognizer == an.recognizer


def test_the_manifest_normalisation_is_applied(tmp_path, tiny_analyzer, astronaut):
    _manifest_pack(tmp_path, input_mean=0.0, input_std=1.0)
    an = FaceAnalyzer.load(tmp_path, pack="myface", backend="onnxruntime")
    assert (an.backend.input_mean, an.backend.input_std) == (0.0, 1.0)
    a, b = an.encode([astronaut]), tiny_analyzer.encode([astronaut])
    assert float(a.embedding @ b.embedding) < 0.99


@pytest.mark.parametrize("recognizer, match", [
    ({"input_size": 224}, "takes 112 px crops, but the myface manifest"),
    ({"embedding_size": 256}, "embedding_size 256: MoCA's identity tokenizer takes 512"),
    ({"input_size": 100}, "multiple of 112"),
    ({"input_mean": 1.0}, "both recognizer input_mean and input_std"),
    ({"input_size": "large"}, "recognizer fields must be numbers"),
])
def test_a_manifest_that_does_not_fit_is_refused(tmp_path, recognizer, match):
    _manifest_pack(tmp_path, **recognizer)
    with pytest.raises(FacePackError, match=match):
        FaceAnalyzer.load(tmp_path, pack="myface", backend="onnxruntime")


def test_an_unknown_pack_without_a_manifest_says_how_to_register_one(tmp_path):
    with pytest.raises(FaceOptionError, match="moca_pack.json in its folder.*Other face packs"):
        FaceAnalyzer.load(tmp_path, pack="myface")
    (tmp_path / "models" / "myface").mkdir(parents=True)
    (tmp_path / "models" / "myface" / MANIFEST).write_text("{broken")
    with pytest.raises(FacePackError, match="moca_pack.json cannot be read as JSON"):
        FaceAnalyzer.load(tmp_path, pack="myface")


def test_builtin_packs_are_manifests_and_round_trip():
    for spec in PACKS.values():
        assert PackSpec.from_manifest(spec.as_manifest()) == spec
    assert PACKS["toyface"].input_mean == 127.5 and PACKS["antelopev2"].input_mean is None


TOY_PACK = H.REPO / "toy_models" / "insightface" / "models" / "toyface"


@pytest.mark.skipif(not (TOY_PACK / "rec_toy.onnx").is_file(), reason="toy face pack not built")
def test_toyface_works_through_its_manifest(tmp_path, monkeypatch):
    """The toy pack as the toy build installs it (with its moca_pack.json) loads with no built-in entry at all,
    and gives the built-in's embeddings and recogniser record."""
    from moca_model.face import packs
    from moca_model.toy import world
    from moca_model.toy.face_train import install_pack
    builtin = FaceAnalyzer.load(TOY_PACK.parents[1], pack="toyface", backend="onnxruntime", provider="cpu")
    folder = tmp_path / "models" / "toyface"
    install_pack(TOY_PACK / "det_toy.onnx", TOY_PACK / "rec_toy.onnx", pack_dir=folder)
    assert json.loads((folder / MANIFEST).read_text())["recognizer"]["file"] == "rec_toy.onnx"
    monkeypatch.delitem(packs.PACKS, "toyface")
    via_manifest = FaceAnalyzer.load(tmp_path, pack="toyface", backend="onnxruntime", provider="cpu")
    assert via_manifest.pack.spec.manifest == str(folder / MANIFEST)
    img = world.make_reference(world.HELDOUT_IDS[0], 901).image
    a, b = via_manifest.encode(img), builtin.encode(img)
    assert torch.allclose(a.embedding, b.embedding, atol=1e-6) and via_manifest.recognizer == builtin.recognizer
    shutil.rmtree(folder)
    with pytest.raises(FaceOptionError, match=r"Built-in packs: antelopev2, buffalo_l \(.*Any other pack needs a "
                                              r"moca_pack.json"):
        FaceAnalyzer.load(tmp_path, pack="toyface")


@pytest.mark.skipif(not (TOY_PACK / "rec_toy.onnx").is_file(), reason="toy face pack not built")
def test_a_manifest_finds_renamed_files(tmp_path):
    """The toy pack's files under other names, found only through a manifest: same embeddings and record."""
    from moca_model.toy import world
    folder = tmp_path / "models" / "toyface_m"
    folder.mkdir(parents=True)
    shutil.copy(TOY_PACK / "det_toy.onnx", folder / "detector.onnx")
    shutil.copy(TOY_PACK / "rec_toy.onnx", folder / "recogniser.onnx")
    spec = PACKS["toyface"]
    write_manifest(folder, dataclasses.replace(spec, detector="detector.onnx", recognizer="recogniser.onnx"))
    via_manifest = FaceAnalyzer.load(tmp_path, pack="toyface_m", backend="onnxruntime", provider="cpu")
    builtin = FaceAnalyzer.load(TOY_PACK.parents[1], pack="toyface", backend="onnxruntime", provider="cpu")
    img = world.make_reference(world.HELDOUT_IDS[0], 901).image
    a, b = via_manifest.encode(img), builtin.encode(img)
    assert torch.allclose(a.embedding, b.embedding, atol=1e-6)
    assert via_manifest.recognizer.matches(builtin.recognizer) and via_manifest.recognizer.file == "recogniser.onnx"
