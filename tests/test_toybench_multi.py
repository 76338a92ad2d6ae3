"""`toybench --multi` (moca_model/toy/toybench_multi.py): the two-person metrics on constructed videos under the
shipped evaluation recogniser (the world's own clip, its references exchanged, faces blended), the bindings, and the
summary table."""
import numpy as np
import pytest
import torch

from moca_model.regions import RegionalIdentity
from moca_model.toy import toybench_multi as TM
from moca_model.toy.pipeline import FACE_PACK, FILES


@pytest.fixture(scope="module")
def judge():
    if not (FILES["eval_recogniser"].is_file() and (FILES["insightface"] / "models" / FACE_PACK).is_dir()):
        pytest.skip("the toy face pack or the evaluation recogniser is absent (python -m moca_model.toy build --stages face)")
    from moca_model.toy.metrics import eval_analyzer
    return eval_analyzer(FILES["insightface"], FACE_PACK, FILES["eval_recogniser"])


@pytest.fixture(scope="module")
def item():
    return TM.two_person_item(0, 0)


def test_item_is_the_worlds_two_person_clip(item):
    from moca_model.toy import world
    assert item["people"] == [world.HELDOUT_IDS[0], world.HELDOUT_IDS[1]]
    assert item["caption"].startswith("two") or "two" in item["caption"].split()
    assert [m.shape for m in item["masks"]] == [(17, 128, 128)] * 2
    assert item["masks"][0][0].nonzero()[1].mean() < 64 < item["masks"][1][0].nonzero()[1].mean()


def test_faithful_swapped_and_blended_videos(judge, item):
    frames = item["world_frames"][::4]                                            # 5 frames
    ok = TM.multi_video_metrics(judge, frames, item["references"])
    assert ok["faces"] == 10 and ok["swap_rate"] == 0 and ok["blend_rate"] == 0 and ok["own"] > ok["cross"] + 0.5
    assert TM.separation(ok) > 0.5
    swapped = TM.multi_video_metrics(judge, frames, item["references"][::-1])    # each face is the other person
    assert swapped["swap_rate"] == 1 and swapped["own"] < swapped["cross"] - 0.5
    assert TM.separation(swapped) < -0.5
    # each face overlaid with the mirrored other face (the people stand mirror-symmetric): a blend of both
    blend = ((frames.astype(np.float32) + frames[:, :, ::-1]) / 2).round().astype(np.uint8)
    mixed = TM.multi_video_metrics(judge, blend, item["references"])
    assert mixed["blend_rate"] >= 0.5 and abs(mixed["own"] - mixed["cross"]) < 0.1


def test_a_lone_face_goes_to_the_person_on_its_side(judge, item):
    """Faces are assigned by the layout (each person's side of the frame): with only the right-hand person
    drawn, left-to-right order gave that face to the left-hand person and scored it as a swap (before
    2026-12-02)."""
    frames = item["world_frames"][::4].copy()                                    # 5 frames
    frames[:, :, :64] = frames[:, :4, 124:].mean(axis=(1, 2), keepdims=True).astype(np.uint8)   # left person gone
    layout = TM.layout_halves(item["masks"])
    assert [p.shape for p in layout] == [(17, 128, 128)] * 2
    assert layout[0][0, :, :40].min() == 1 and layout[0][0, :, 90:].max() == 0 and (layout[0] + layout[1] == 1).all()
    sims = TM.video_similarities(judge, frames, item["references"],
                                 [p[::4] for p in layout])
    by_side = TM.multi_video_metrics(judge, None, item["references"], sims=sims)
    assert by_side["own_per_person"][0] is None and by_side["own_per_person"][1] > 0.5
    assert by_side["swap_rate"] == 0 and by_side["missing"] == 0.5
    # without a layout (Identity Score's rule for people bound left to right) a lone face goes to the person
    # of its equal strip: the same here
    no_layout = TM.multi_video_metrics(judge, frames, item["references"])
    assert no_layout["own_per_person"][1] > 0.5 and no_layout["swap_rate"] == 0


def test_bindings(item):
    tokens = [torch.randn(1, 4, 8), torch.randn(1, 4, 8)]
    auto, masks, concat, alone = (TM.binding(tokens, item, m) for m in TM.BINDINGS)
    assert auto.masks == [None, None] and auto.mode == "regions" and concat.mode == "concat"
    second = TM.binding(tokens, item, "alone", person=1)                        # only that person, in its mask
    assert alone.tokens == [tokens[0]] and second.tokens == [tokens[1]] and second.mode == "regions"
    assert torch.equal(second.masks[0], torch.from_numpy(item["masks"][1]).float())
    w = masks.region_weights((5, 8, 8))[0]                                        # [2, T, h, w] from pixel frames
    assert w.shape == (2, 5, 8, 8) and w[0, :, :, :4].sum() > 5 * w[0, :, :, 4:].sum()
    assert isinstance(concat.resolve((5, 8, 8)), torch.Tensor)
    with pytest.raises(ValueError, match="binding"):
        TM.binding(tokens, item, "nearest")
    assert isinstance(auto, RegionalIdentity)


def test_summary_and_table():
    rows = [{"own": 0.8, "cross": 0.1, "swap_rate": 0.0, "blend_rate": 0.0, "missing": 0.0},
            {"own": 0.6, "cross": 0.3, "swap_rate": 0.2, "blend_rate": 0.1, "missing": 0.5},
            {"own": None, "cross": None, "swap_rate": None, "blend_rate": None, "missing": 1.0}]
    s = TM.summarise_multi(rows)
    assert s["videos"] == 3 and s["own"]["mean"] == pytest.approx(0.7) and s["own"]["n"] == 2
    assert s["missing"]["mean"] == pytest.approx(0.5) and s["swap_rate"]["mean"] == pytest.approx(0.1)
    assert s["separation"]["mean"] == pytest.approx(0.5) and s["separation"]["n"] == 2     # (0.7 + 0.3) / 2
    # per person where both were measured: person 2 has no face, so only person 1 counts
    assert TM.separation({"own": 0.5, "cross": 0.0, "own_per_person": [0.5, None],
                          "cross_per_person": [0.1, None]}) == pytest.approx(0.4)
    md = TM.markdown_multi({"pairs": 3, "prompts": 1, "threshold": 0.4,
                            "rows": [{"label": "moca", "binding": "regions", "summary": s}]})
    assert "| moca | regions | 0.700 [" in md and "swap rate" in md and "| 0.500 [" in md
    # a binding against the alone control, paired over the videos both measured
    both = [{"people": [1, 2], "prompt_index": k, "swap_rate": v, "own_per_person": [0.3, 0.1],
             "cross_per_person": [0.0, 0.2]} for k, v in enumerate([0.5, 0.4, None])]
    alone = [{"people": [1, 2], "prompt_index": k, "swap_rate": v, "own_per_person": [0.3, 0.3],
              "cross_per_person": [0.0, 0.0]} for k, v in enumerate([0.25, 0.2, 0.1])]
    d = TM.paired_multi(both, alone, "swap_rate")
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.225)
    assert TM.paired_multi(both, alone, "separation")["mean"] == pytest.approx(0.1 - 0.3)
    md = TM.markdown_multi({"pairs": 3, "prompts": 1, "threshold": 0.4, "rows": [
        {"label": "moca", "binding": "masks", "summary": s, "minus_alone": {"swap_rate": d, "separation": d}},
        {"label": "moca", "binding": "alone", "summary": s}]})
    assert "| moca | masks | 0.225 [" in md and "swap rate minus alone" in md


def test_strip_png(tmp_path):
    from PIL import Image
    frames = np.zeros((17, 16, 16, 3), np.uint8)
    TM.strip([("a", frames), ("b", frames + 200)], tmp_path / "s.png")
    img = np.asarray(Image.open(tmp_path / "s.png"))
    assert img.shape == (32, 160 + 5 * 16, 3) and img[20, 200].tolist() == [200, 200, 200]


from test_toybench import stand_ins  # noqa: E402,F401  (tiny random models in the toy layout)


def test_quick_multi_end_to_end(stand_ins, capsys):  # noqa: F811
    import json

    from PIL import Image

    from moca_model.toy import toybench as TB
    root, out = stand_ins
    args = ["moca", "no_identity", "--multi", "--quick", "--people", "1", "--steps", "2", "--out", str(out),
            "--preset", "tiny", "--backbone", str(root / "backbone.safetensors"), "--vae", str(root / "vae.safetensors")]
    assert TB.main(args) == 0
    res = json.loads((out / "results_multi_quick.json").read_text())
    assert [(r["label"], r["binding"]) for r in res["rows"]] == [("moca", "regions"), ("moca", "masks"),
                                                                  ("moca", "concat"), ("moca", "alone"),
                                                                  ("no_identity", "none")]
    for r in res["rows"]:
        assert r["summary"]["videos"] == 1 and set(TM.MULTI_MEANS) <= set(r["summary"])
    md = (out / "results_multi_quick.md").read_text()
    assert "| moca | concat |" in md and "| no_identity | none |" in md and "swap rate minus alone" in md
    assert set(res["rows"][0]["minus_alone"]) == {"swap_rate", "separation"}
    strip = np.asarray(Image.open(out / "results_multi_quick.png")).astype(float)
    assert strip.shape[0] == 6 * 128                                       # world clip + 4 bindings + no identity
    rows = [strip[128 * i:128 * (i + 1), 160:] for i in range(6)]
    assert np.abs(rows[1] - rows[3]).mean() > 0.5                          # regions and concat make other videos
    assert np.abs(rows[2] - rows[4]).mean() > 0.5                          # alone is not both bound
    assert np.abs(rows[1] - rows[5]).mean() > 0.5                          # the identities act
    alone = json.loads(next((out / "eval_multi").glob("moca-alone-*/0_0.json")).read_text())
    assert alone["binding"] == "alone" and alone["faces"] <= 2 * 17 and len(alone["own_per_person"]) == 2
    items = sorted((out / "eval_multi").glob("moca-regions-*/*.json"))
    assert len(items) == 1 and json.loads(items[0].read_text())["binding"] == "regions"
    mtime = items[0].stat().st_mtime_ns
    assert TB.main(args + ["--no-strip"]) == 0                             # per-video results are reused
    assert items[0].stat().st_mtime_ns == mtime


def test_multi_procs_match_one_process(stand_ins, tmp_path):  # noqa: F811
    """--multi --procs 2: one worker per adapter and binding; the summary equals the one-process run's."""
    import json
    import shutil

    from moca_model.toy import toybench as TB
    root, out = stand_ins
    args = ["moca", "no_identity", "--multi", "--quick", "--people", "1", "--steps", "2", "--no-strip",
            "--preset", "tiny", "--backbone", str(root / "backbone.safetensors"), "--vae", str(root / "vae.safetensors")]
    assert TB.main(args + ["--out", str(out)]) == 0
    par = tmp_path / "par"
    shutil.copytree(out, par, ignore=shutil.ignore_patterns("eval_multi", "results_multi*"))
    assert TB.main(args + ["--out", str(par), "--procs", "2"]) == 0
    folders = sorted(p.name for p in (par / "eval_multi").iterdir())
    assert len(folders) == 5 and sorted(p.name for p in (out / "eval_multi").iterdir()) == folders
    one, two = (json.loads((d / "results_multi_quick.json").read_text())["rows"] for d in (out, par))
    assert one == two
