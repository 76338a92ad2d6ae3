"""The toy benchmark (`python -m moca_model toybench`): its per-video metrics on constructed cases, with the
shipped toy face pack, evaluation recogniser and classifiers on world renders (a copied reference scores high
copy-paste, a frozen clip low motion, another person low likeness), and `--quick` end to end on tiny random
stand-in models (Wan-layout backbone, VAE, adapters of two variants) built here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from moca_model.toy import toybench as TB
from moca_model.toy import world
from moca_model.toy.pipeline import FILES

PERSON, OTHER = world.HELDOUT_IDS[0], world.HELDOUT_IDS[5]     # reference scene != prompt scene for PERSON


def _shipped():
    missing = [str(FILES[k]) for k in ("insightface", "eval_recogniser", "classifiers") if not FILES[k].exists()]
    if missing:
        pytest.skip(f"shipped toy face models / classifiers absent: {missing}")


@pytest.fixture(scope="module")
def judged():
    _shipped()
    from moca_model.toy.classifiers import load_classifiers
    from moca_model.toy.metrics import eval_analyzer
    judge = eval_analyzer(FILES["insightface"], "toyface", FILES["eval_recogniser"])
    item = TB.world_item(PERSON, 0)
    clip = world.make_clip(PERSON, TB.PROMPT_SEEDS[0]).frames
    return judge, load_classifiers(FILES["classifiers"]), item, clip


def _metrics(judged, frames):
    judge, clf, item, _ = judged
    return TB.video_metrics(judge, clf, frames, item)


def test_world_item_knows_both_scenes():
    item = TB.world_item(PERSON, 0)
    assert item["reference_scene"] == {"background": "sky_grass", "lighting": "warm_evening"}
    assert item["prompt"]["background"] != item["reference_scene"]["background"]
    assert world.reference_scene(PERSON, 0) == item["reference_scene"]
    assert item["world_frame_diff"] > 0.005 and len(item["world_kps"]) == world.NUM_FRAMES


def test_the_worlds_own_clip_scores_like_following_the_prompt(judged):
    m = _metrics(judged, judged[3])
    assert m["likeness_mean"] > 0.85 and m["no_face_frames"] == 0
    assert m["action_ok"] and m["background_ok"] and m["lighting_ok"]
    assert m["motion"] == 1.0 and not m["frozen"]
    assert m["copy_paste"] < 0.15 and m["scene_copy"] == 0.0


def test_copied_reference_scores_high_copy_paste(judged):
    _, _, item, _ = judged
    ref = np.asarray(Image.fromarray(item["reference"]).resize((128, 128), Image.LANCZOS))
    m = _metrics(judged, np.stack([ref] * 9))
    assert m["scene_copy"] == 1.0 and m["copy_paste"] > 0.4          # the classifiers see the reference's scene
    assert m["pixel_copy_margin"] > 0.4 and m["pixel_copy_ssim_max"] > 0.9
    assert not m["background_ok"]


def test_frozen_clip_scores_low_motion(judged):
    clip = judged[3]
    m = _metrics(judged, np.stack([clip[0]] * 9))
    assert m["motion"] == 0.0 and m["frozen"] and m["frame_diff"] == 0.0
    assert m["likeness_spread"] == 0.0 and m["likeness_drift"] == 0.0
    assert _metrics(judged, clip[::2])["motion"] > 0.9                # the same clip, moving


def test_shuffled_identity_scores_low_likeness(judged):
    someone = world.make_clip(OTHER, TB.PROMPT_SEEDS[0]).frames[::2]
    m = _metrics(judged, someone)
    own = _metrics(judged, judged[3][::2])
    assert m["no_face_frames"] == 0 and m["likeness_mean"] < 0.5 < own["likeness_mean"] - 0.3


def test_likeness_reuses_detections_with_the_same_scores(judged):
    from moca_model.toy import metrics as M
    judge, _, item, clip = judged
    frames = np.concatenate([clip[:3], np.zeros_like(clip[:1])])
    dets = M.detect_frames(judge, frames)
    assert dets[3] is None and all(d is not None for d in dets[:3])
    once, twice = M.likeness(judge, frames, item["reference"], detections=dets), M.likeness(judge, frames, item["reference"])
    assert once.per_frame == pytest.approx(twice.per_frame, abs=1e-6) and once.n_no_face == twice.n_no_face == 1


def test_summary_intervals_and_paired_difference():
    rows_a = [{"person": p, "prompt_index": 0, "likeness_mean": 0.5 + 0.01 * p} for p in range(10)]
    rows_b = [{"person": p, "prompt_index": 0, "likeness_mean": 0.3 + 0.01 * p} for p in range(10)]
    s = TB.summarise(rows_a)
    lk = s["likeness_mean"]
    assert lk["mean"] == pytest.approx(0.545) and lk["ci95"][0] < lk["mean"] < lk["ci95"][1] and lk["n"] == 10
    assert s["copy_paste"] == {"mean": None, "ci95": [None, None], "n": 0}             # strict JSON: no NaN
    d = TB.paired_difference(rows_a, rows_b)
    assert d["mean"] == pytest.approx(0.2) and d["ci95"] == pytest.approx([0.2, 0.2]) and d["n"] == 10


def test_registered_as_a_moca_model_command(capsys):
    from moca_model.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["toybench", "--help"])
    assert e.value.code == 0 and "--train-all" in capsys.readouterr().out


def test_resolve_names_variants_files_and_the_fix(tmp_path):
    f = tmp_path / "mine.safetensors"
    f.write_bytes(b"x")
    (tmp_path / "moca").mkdir()
    TB.adapter_path(tmp_path, "moca").write_bytes(b"x")
    assert TB.resolve(["moca", "no_identity", str(f)], tmp_path) == [
        ("moca", TB.adapter_path(tmp_path, "moca")), ("no_identity", None), ("mine", f)]
    with pytest.raises(SystemExit, match="lean: .*toybench --train-all"):
        TB.resolve(["lean"], tmp_path)
    with pytest.raises(SystemExit, match="neither a variant"):
        TB.resolve(["huge"], tmp_path)


def test_variant_configs_share_one_budget():
    from moca_model.training.config import TrainConfig
    from moca_model.variants import variant_config
    base = TrainConfig.load(TB.REPO / "configs" / "toy_moca_joint.yaml").to_dict()      # the shipped adapter's recipe
    for v in TB.TRAINED:
        c = TrainConfig.load(TB.config_path(v))
        d = c.to_dict()
        for key in ("data", "optim", "train", "checkpoint", "validation"):
            assert d[key] == base[key], (v, key)
        assert d["model"]["backbone"] == base["model"]["backbone"] and d["model"]["preset"] == "toy"
        assert d["out_dir"] == f"runs/toybench/{v}" and d["export"]["name"] == f"toybench_{v}.safetensors"
        from moca_model import MoCAConfig
        assert MoCAConfig.preset("toy", **c.model.overrides) == variant_config(v, "toy"), v
        lv = dict(d["objective"]["lvpl"], weight=None), dict(base["objective"]["lvpl"], weight=None)
        assert lv[0] == lv[1] and c.objective.lvpl.weight == (0.0 if v == "no_lvpl" else 0.1)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Tiny random models in the toy layout: a tiny-preset Wan backbone, a width-4 Wan VAE, and trained-looking
    (random, live) adapters of MoCA and of the single cross-attention where --train-all puts them."""
    _shipped()
    from safetensors.torch import save_file

    from moca_model import MoCADiT, save_moca, save_wan_checkpoint
    from moca_model.adapter import live_adapter
    from moca_model.variants import variant_config
    from moca_model.wan_vae import WanVAE
    root = tmp_path_factory.mktemp("toybench")
    torch.manual_seed(0)
    model = MoCADiT(variant_config("moca", "tiny"))
    save_wan_checkpoint(root / "backbone.safetensors", model)
    save_file({k: v.contiguous() for k, v in WanVAE(dim=4).state_dict().items()}, str(root / "vae.safetensors"))
    out = root / "out"
    for v in ("moca", "single_xattn"):
        m = live_adapter(MoCADiT(variant_config(v, "tiny")), seed=1)
        with torch.no_grad():
            for layer in m.adapter.layers:
                layer.out.weight.mul_(20)                            # a visible identity effect
        TB.adapter_path(out, v).parent.mkdir(parents=True)
        save_moca(TB.adapter_path(out, v), m, adapter_only=True)
    return root, out


def test_quick_end_to_end(stand_ins, capsys):
    root, out = stand_ins
    args = ["moca", "single_xattn", "no_identity", "--quick", "--people", "1", "--steps", "2", "--out", str(out),
            "--preset", "tiny", "--backbone", str(root / "backbone.safetensors"), "--vae", str(root / "vae.safetensors")]
    assert TB.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    text = (out / "results_quick.json").read_text()
    assert "NaN" not in text
    res = json.loads(text)
    a, b = (res["variants"][v]["likeness_mean"]["mean"] for v in ("moca", "single_xattn"))
    assert lines[-1] == f"moca_minus_single_xattn_likeness={a - b:.4f}"
    assert set(res["variants"]) == {"moca", "single_xattn", "no_identity"}
    for v, s in res["variants"].items():
        assert s["videos"] == 1 and set(TB.MEANS) <= set(s)
        assert 0.0 <= s["motion"]["mean"] <= 1.0 and s["action_ok"]["n"] == 1
    assert res["costs"]["single_xattn"]["share_wan2.1-1.3b"] < res["costs"]["moca"]["share_wan2.1-1.3b"]
    assert res["costs"]["no_identity"]["forward_time_ratio"] == 1.0
    assert res["moca_minus_single_xattn_likeness"]["n"] == 1
    # every variant against (a) and against the backbone alone, paired over the same videos
    assert set(res["paired"]["single_xattn"]) == {"moca", "no_identity"} and set(res["paired"]["moca"]) == {"no_identity"}
    assert res["paired"]["single_xattn"]["moca"]["mean"] == pytest.approx(b - a)
    g = res["variants"]["no_identity"]["likeness_mean"]["mean"]
    assert res["paired"]["moca"]["no_identity"]["mean"] == pytest.approx(a - g)
    assert res["costs"]["moca"]["forward_base_s"] > 0 and np.isfinite(res["costs"]["moca"]["forward_time_ratio"])
    md = (out / "results_quick.md").read_text()
    assert "| (a) moca |" in md and "| (b) single_xattn |" in md and "adapter at 14B" in md
    assert "| variant | minus (a) moca | minus (g) no_identity |" in md
    assert Image.open(out / "results_quick.png").size[0] == 900
    # per-video results are kept: a second run reuses them (same numbers, no generation)
    items = sorted((out / "eval").glob("moca-*/*.json"))
    assert len(items) == 1
    rows = [json.loads(p.read_text()) for p in items]
    assert all(len(r["likeness_per_frame"]) == world.NUM_FRAMES for r in rows)
    assert [(r["person"], r["prompt_index"]) for r in rows] == [(world.HELDOUT_IDS[0], 0)]
    mtime = items[0].stat().st_mtime_ns
    assert TB.main(args + ["--no-costs"]) == 0
    assert items[0].stat().st_mtime_ns == mtime
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]
    # --procs 2: worker processes evaluate one adapter each (here the lean file, new), the summary reads them all
    from moca_model import MoCADiT, save_moca
    from moca_model.variants import variant_config
    torch.manual_seed(2)
    save_moca(root / "mine.safetensors", MoCADiT(variant_config("lean", "tiny")), adapter_only=True)
    assert TB.main(["moca", str(root / "mine.safetensors")] + args[3:] + ["--no-costs", "--procs", "2"]) == 0
    assert len(list((out / "eval").glob("mine-*/*.json"))) == 1
    # a variant's worker files its videos under the variant's name, where the summary looks for them
    assert sorted(p.name.rsplit("-", 1)[0] for p in (out / "eval").iterdir()) == ["mine", "moca", "no_identity",
                                                                                  "single_xattn"]
    assert json.loads((out / "results_quick.json").read_text())["variants"]["mine"]["videos"] == 1


def test_a_combined_file_is_evaluated_on_its_own_backbone(stand_ins):
    """A joint run's export carries its fine-tuned backbone: the benchmark runs it on that one, and an
    adapter-only file after it on the shared --backbone again."""
    import types

    from moca_model import MoCADiT, save_moca
    from moca_model.toy.pipeline import FACE_PACK, FILES
    from moca_model.variants import variant_config
    root, out = stand_ins
    torch.manual_seed(3)
    tuned = MoCADiT(variant_config("moca", "tiny"))                   # another backbone: a joint run's own
    save_moca(root / "joint_combined.safetensors", tuned)
    a = types.SimpleNamespace(preset="tiny", backbone=root / "backbone.safetensors", vae=root / "vae.safetensors",
                              vae_bf16=True, face_models=FILES["insightface"], face_pack=FACE_PACK,
                              eval_recogniser=FILES["eval_recogniser"], classifiers=FILES["classifiers"])
    models = TB.Models(a)
    shared = {k: v.clone() for k, v in models.model.backbone_state_dict().items()}
    want = tuned.backbone_state_dict()

    def close_to(ref):
        got = models.model.backbone_state_dict()
        return all(torch.allclose(got[k].float(), ref[k].float(), atol=1e-2) for k in ref)
    assert not close_to(want)
    models.pipeline(root / "joint_combined.safetensors")
    assert close_to(want)
    models.pipeline(TB.adapter_path(out, "moca"))                     # adapter-only: the shared backbone again
    assert close_to(shared)
    models.pipeline(root / "joint_combined.safetensors")
    models.pipeline(None)                                             # no_identity: the shared backbone too
    assert close_to(shared)


def test_train_all_skips_finished_and_resumes(tmp_path, capsys):
    """--train-all on tiny synthetic shards of the toy clip's shapes and a random toy-preset backbone: trains the
    named variants through train_moca.py, skips them when up to date, and resumes one from its checkpoint when
    its budget grows."""
    from safetensors.torch import save_file

    from moca_model import MoCAConfig, MoCADiT, read_moca, save_wan_checkpoint
    from moca_model.training.synthetic import make_synthetic_shards
    from moca_model.variants import variant_config
    from moca_model.wan_vae import WanVAE
    torch.manual_seed(0)
    save_wan_checkpoint(tmp_path / "backbone.safetensors", MoCADiT(MoCAConfig.preset("toy")))
    save_file({k: v.contiguous() for k, v in WanVAE(dim=4).state_dict().items()}, str(tmp_path / "vae.safetensors"))
    cache = tmp_path / "cache"
    make_synthetic_shards(cache, num_samples=8, per_shard=8, frames=5, height=16, width=16, text_tokens=32,
                          face_size=16)
    save_file({"text": torch.zeros(32, 4096)}, str(cache / "empty_text.safetensors"))
    out = tmp_path / "out"
    args = ["single_xattn", "lean", "--train-all", "--train-only", "--out", str(out), "--cache", str(cache),
            "--train-backbone", str(tmp_path / "backbone.safetensors"), "--vae", str(tmp_path / "vae.safetensors"),
            "--procs", "2", "--train-steps", "1"]
    assert TB.main(args) == 0
    for v in ("single_xattn", "lean"):
        f = read_moca(TB.adapter_path(out, v))            # trained jointly: the combined file, backbone included
        assert f.kind == "combined" and TB.adapter_path(out, v).name == f"toybench_{v}_combined.safetensors"
        assert f.config == variant_config(v, "toy") and f.metadata["steps"] == "1"
    assert not (out / "moca").exists()
    capsys.readouterr()
    assert TB.main(args) == 0
    assert capsys.readouterr().out.count("trained (up to date)") == 2
    assert TB.main(args[:1] + args[2:-1] + ["2"]) == 0                   # a bigger budget for single_xattn only
    log = (out / "single_xattn" / "train.log").read_text()
    assert "resumed from" in log and "at step 1" in log
    assert read_moca(TB.adapter_path(out, "single_xattn")).metadata["steps"] == "2"
    assert read_moca(TB.adapter_path(out, "lean")).metadata["steps"] == "1"
