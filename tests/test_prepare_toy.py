"""`train_moca.py prepare` end to end on toy raw footage with ground truth: clips, masks, cross-shot
references and captions checked against the truth; resume; a broken file listed and skipped; the manifest
accepted by `train_moca.py cache` (a tiny pooling VAE stands in for Wan's) and its shards readable."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moca_model.prepare.pipeline import Preparer, main as prepare_main
from moca_model.toy.prepare_eval import measure, toy_config
from moca_model.toy.raw_footage import footage_plan, write_raw_footage
from moca_model.video import read_video

REPO = Path(__file__).resolve().parents[1]
TOY_FACES = REPO / "toy_models" / "insightface"
CMD_CAPTION = "a person on camera"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not (TOY_FACES / "models" / "toyface" / "det_toy.onnx").is_file():
        pytest.skip("toy_models/insightface/models/toyface is not in this checkout")
    root = tmp_path_factory.mktemp("prepare")
    gt_path = write_raw_footage(root / "raw", seed=3, n_videos=2, n_people=3, people_per_video=2,
                                shots_per_video=(3, 3), shot_frames=(20, 26))
    videos = root / "raw" / "videos"
    (videos / "vid_001.captions.json").unlink()                  # vid_001's captions come from the command
    (videos / "broken.mp4").write_bytes(b"this is not a video")
    cmd = f'"{sys.executable}" -c "print(\'{CMD_CAPTION}\')" {{clip}}'
    cfg = toy_config(TOY_FACES, frames=9, clips_per_track=1, caption_command=cmd)
    report = Preparer(cfg, log=lambda *a: None).run(videos, root / "out")
    return dict(root=root, out=root / "out", videos=videos, gt=json.loads(gt_path.read_text()), gt_path=gt_path,
                cfg=cfg, report=report)


def _manifest(out):
    return [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines() if ln.strip()]


def test_footage_plan_is_deterministic_and_reuses_people():
    a, b = footage_plan(5, n_videos=3, n_people=3), footage_plan(5, n_videos=3, n_people=3)
    assert a == b and footage_plan(6, n_videos=3, n_people=3) != a
    people = [set(p for s in v for p in s["people"]) for v in a]
    assert len(set.union(*people)) <= 3 and any(people[0] & people[i] for i in (1, 2))


def test_prepare_report_counts_and_lists_the_broken_file(prepared):
    r, gt = prepared["report"], prepared["gt"]
    assert r["videos"] == {"found": 3, "analysed": 2, "reused_analysis": 0, "failed": 1}
    errors = [json.loads(ln) for ln in (prepared["out"] / "errors.jsonl").read_text().splitlines()]
    assert [(e["video"], e["stage"]) for e in errors] == [("broken.mp4", "analyse")]
    assert r["frames"] == sum(v["frames"] for v in gt["videos"])
    assert r["clips"] == len(_manifest(prepared["out"])) >= 3 and r["pairs"] >= r["clips"]
    assert r["references"]["from_other_shot"] == 1.0
    assert sum(r["dropped"].values()) == r["candidate_clips"] - r["clips"]


def test_prepare_matches_the_ground_truth(prepared):
    m = measure(prepared["gt_path"], prepared["out"])
    assert m["shots"]["hard_cut_recall"] == 1.0 and m["shots"]["precision"] == 1.0
    assert m["tracks"]["purity"] >= 0.98
    assert m["identities"]["purity"] == 1.0
    assert m["pairs"]["wrong_identity"] == 0 and m["pairs"]["pairs"] > 0
    assert m["pairs"]["reference_from_other_shot"] == 1.0


def test_clips_masks_and_captions_follow_the_source(prepared):
    out, gt, cfg = prepared["out"], prepared["gt"], prepared["cfg"]
    pairs = {json.loads(ln)["id"]: json.loads(ln) for ln in (out / "pairs.jsonl").read_text().splitlines()}
    vids = {v["file"]: v for v in gt["videos"]}
    for e in _manifest(out):
        clip, fps = read_video(out / e["video"])
        mask, _ = read_video(out / e["face_mask"])
        assert clip.shape == (cfg.frames, 128, 128, 3) and mask.shape == clip.shape and fps == 16
        p = pairs[e["id"]]
        v = vids[p["source"]]
        shot = next(s for s in v["shots"] if s["start"] <= p["frames"][0] < s["end"])
        assert p["frames"][1] < shot["end"]                          # a clip never crosses a cut
        assert e["caption"] == (shot["caption"] if p["source"] == "vid_000.mp4" else CMD_CAPTION)
        raw, _ = read_video(prepared["videos"] / p["source"])
        assert np.abs(raw[p["frames"][0]].astype(int) - clip[0].astype(int)).mean() < 3   # 128x128 source: no crop
        # the mask's centre lies in the ground-truth face box of some person in the shot, at first and last frame
        for t, f in ((0, p["frames"][0]), (-1, p["frames"][1])):
            ys, xs = np.nonzero(mask[t].mean(-1) > 127)
            boxes = [np.array(b[f - shot["start"]]) for b in shot["boxes"].values()]
            assert any(b[0] < xs.mean() < b[2] and b[1] < ys.mean() < b[3] for b in boxes)
        for ref in e["reference"]:
            assert (out / ref).is_file()


def test_rerun_resumes_and_a_missing_caption_drops_the_clip(prepared):
    out, videos, cfg = prepared["out"], prepared["videos"], prepared["cfg"]
    before = (out / "manifest.jsonl").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "clips").iterdir()}
    again = Preparer(cfg, log=lambda *a: None).run(videos, out)
    assert again["videos"]["reused_analysis"] == 2
    assert (out / "manifest.jsonl").read_text() == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "clips").iterdir()} == stamps
    from dataclasses import replace
    n_cmd = sum(e["caption"] == CMD_CAPTION for e in _manifest(out))
    nocmd = Preparer(replace(cfg, caption_command=None), log=lambda *a: None).run(videos, out)
    assert nocmd["dropped"].get("no_caption", 0) == n_cmd > 0
    assert all(e["caption"] != CMD_CAPTION for e in _manifest(out))
    short = Preparer(replace(cfg, frames=5), log=lambda *a: None).run(videos, out)   # another clip length:
    assert short["videos"]["reused_analysis"] == 2                   # same analysis, new files, none reused
    names = {e["video"] for e in _manifest(out)}
    assert names and not names & {e["video"] for e in map(json.loads, before.splitlines())}
    assert all(read_video(out / n)[0].shape[0] == 5 for n in names)
    Preparer(cfg, log=lambda *a: None).run(videos, out)              # leave the folder as the other tests expect
    assert (out / "manifest.jsonl").read_text() == before


def test_prepare_refuses_a_foreign_output_folder(tmp_path, prepared):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not written by `prepare`"):
        Preparer(prepared["cfg"]).run(prepared["videos"], tmp_path)
    with pytest.raises(FileNotFoundError, match="no video files"):
        Preparer(prepared["cfg"]).run(tmp_path, tmp_path / "new")
    with pytest.raises(SystemExit):
        prepare_main(["--videos", str(tmp_path)])                    # --out and --face-models are required


class PoolVideoEncoder:
    """Wan-shaped latents: causal 4x time grouping, 8x8 average pooling, a fixed 3 -> 16 projection."""
    def __init__(self):
        self.proj = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))

    def encode(self, video):                                          # [B, 3, F, H, W]
        groups = [video[:, :, :1]] + [video[:, :, i:i + 4] for i in range(1, video.shape[2], 4)]
        x = F.avg_pool3d(torch.stack([g.mean(dim=2) for g in groups], dim=2), (1, 8, 8))
        return torch.einsum("oc,bcthw->bothw", self.proj, x)


class WordTextEncoder:
    def encode(self, texts):
        return [torch.ones(len(t.split()), 4096) for t in texts]


def test_manifest_goes_through_cache_into_readable_shards(prepared, tmp_path):
    from moca_model.training.cache import Cacher, InsightFaceEncoder
    from moca_model.training.data import read_shard
    out, cfg = prepared["out"], prepared["cfg"]
    entries = _manifest(out)
    faces = InsightFaceEncoder(TOY_FACES, pack="toyface", crop_size=64, provider="cpu", backend="onnxruntime")
    stats = Cacher(PoolVideoEncoder(), WordTextEncoder(), faces, num_frames=cfg.frames, height=128, width=128,
                   fps=16, samples_per_shard=4, log=lambda *a: None).run(out / "manifest.jsonl", tmp_path / "cache")
    assert stats["written"] == len(entries) and stats["skipped"] == 0
    samples = [s for shard in stats["shards"] for s in read_shard(shard)]
    assert len(samples) == len(entries)
    for s, e in zip(samples, entries):
        assert s["latents"].shape == (16, 3, 16, 16)                  # 9 frames -> 3 latent frames, 128 px -> 16
        assert s["face_mask"].shape == (3, 16, 16) and 0.05 < float(s["face_mask"].mean()) < 0.6
        assert s["arcface"].shape[-1] == 512 and s["arcface"].reshape(-1, 512).shape[0] == len(e["reference"])
        assert s["caption"] == e["caption"]
    # ... and the trainer trains on those shards (tiny model; the shards' recogniser goes into its state)
    from moca_model.training.synthetic import tiny_train_config
    from moca_model.training.trainer import Trainer
    cache = tmp_path / "cache"
    run = tiny_train_config(tmp_path / "run", cache, data={"batch_size": 2}, optim={"max_steps": 2},
                            objective={"empty_text": str(cache / "empty_text.safetensors")})
    t = Trainer(run, device="cpu", log=lambda *a: None)
    losses = t.fit()["losses"]
    assert t.step == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_train_moca_dispatches_prepare(capsys):
    from moca_model.training.cli import main
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--help"])
    assert e.value.code == 0 and "--caption-command" in capsys.readouterr().out
