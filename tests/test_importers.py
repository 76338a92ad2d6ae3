"""`train_moca.py import`: OpenS2V-5M and ConsisID layouts (small files made here in their documented formats)
-> our manifest, honouring their crops, face segments, boxes and masks, with cross-clip references where the
data has them; the manifest goes through `cache` into shards."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from moca_model.importers import main as import_main
from moca_model.video import read_video, write_video

GREY = 100
COLOURS = {"vidA_part1": (220, 40, 40), "vidA_part2": (40, 220, 40), "vidB_part1": (40, 40, 220),
           "clipX": (230, 200, 30)}


def face_box(f: int) -> tuple:
    """The square 'face' of frame f, source pixels (x1, y1, x2, y2)."""
    return (12 + f, 12, 28 + f, 28)


def make_video(path, colour, frames=12, size=(48, 64), second=None):
    """Grey frames with a coloured 16 px square moving right one pixel a frame (second: another square)."""
    v = np.full((frames, size[0], size[1], 3), GREY, np.uint8)
    for f in range(frames):
        x1, y1, x2, y2 = face_box(f)
        v[f, y1:y2, x1:x2] = colour
        if second is not None:
            v[f, 30:40, 50:60] = second
    return write_video(path, v, fps=8)


def _centre(img, box):
    x1, y1, x2, y2 = box
    return np.asarray(img)[int((y1 + y2) / 2), int((x1 + x2) / 2)].astype(int)


# ---------------------------------------------------------------------------------------------- OpenS2V
CROP = [4, 60, 0, 48]          # OpenS2V's [x1, x2, y1, y2]: 4 px cut on the left


def _cropped(box):
    return [box[0] - CROP[0], box[1] - CROP[2], box[2] - CROP[0], box[3] - CROP[2]]


def _item(name, face_cut, per_frame=True, heads=1):
    anns = [{"class_name": "person", "bbox": _cropped((8, 8, 40, 48)), "gme_score": 0.3, "aes_score": 4.0}]
    for h in range(heads):
        anns.append({"class_name": "human head", "bbox": _cropped(face_box(0 + 20 * h)), "gme_score": 0.3,
                     "aes_score": 4.0})
    item = {"metadata": {"path": f"{name}.mp4", "crop": CROP, "cut": [0, 12], "face_cut": face_cut, "fps": 8,
                         "num_frames": 12, "resolution": {"height": 48, "width": 64},
                         "face_cap_qwen": f"a person in {name}"},
            "annotation": {"ann_frame_data": {"ann_frame_idx": 0, "annotations": anns, "box_format": "xyxy"},
                           "mask_map": {str(i + 1): {"class_name": a["class_name"]} for i, a in enumerate(anns)}}}
    if per_frame:
        item["bbox"] = {str(f): {"face": [
            {"track_id": 0, "box": dict(zip(("x1", "y1", "x2", "y2"), _cropped(face_box(f)))), "confidence": 0.9},
            *([{"track_id": 1, "box": {"x1": 44, "y1": 30, "x2": 54, "y2": 40}, "confidence": 0.7}] if f < 4 else [])]}
            for f in range(12)}
    return item


@pytest.fixture()
def opens2v(tmp_path):
    videos = tmp_path / "part1"
    videos.mkdir()
    for name, colour in COLOURS.items():
        if name != "clipX":
            make_video(videos / f"{name}.mp4", colour, second=(250, 250, 250))
    data = {"vidA_part1_step1": dict(_item("vidA_part1", [2, 10]), ),
            "vidA_part2_step1": _item("vidA_part2", [0, 12]),
            "vidB_part1_step1": _item("vidB_part1", [0, 8], per_frame=False),
            "broken_step1": _item("missing_video", [0, 8]),
            "nocap_step1": _item("vidB_part1", [0, 8])}
    data["nocap_step1"]["metadata"].pop("face_cap_qwen")
    (tmp_path / "part1.json").write_text(json.dumps(data))
    (tmp_path / "cluster_videos.json").write_text(json.dumps(
        {"vidA": ["part1/vidA_part1_step1", "part1/vidA_part2_step1"], "vidB": ["part1/vidB_part1_step1"]}))
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "vidA.json").write_text(json.dumps([
        {"cur_id": "part1/vidA_part1_step1", "aft_id": "part1/vidA_part2_step1", "cur_class_id": "2",
         "aft_class_id": "2", "cur_class_name": "human head", "aft_class_name": "human head",
         "text_similarity": 1.0, "image_similarity": 0.93, "cur_frame_idx": 0, "aft_frame_idx": 0},
        {"cur_id": "part1/vidA_part1_step1", "aft_id": "part1/vidA_part2_step1", "cur_class_id": "1",
         "aft_class_id": "1", "cur_class_name": "person", "aft_class_name": "person",
         "text_similarity": 1.0, "image_similarity": 0.99, "cur_frame_idx": 0, "aft_frame_idx": 0}]))
    return tmp_path


def _run_opens2v(root, out, *extra):
    with pytest.warns(UserWarning, match="import: skipping"):
        import_main(["--format", "opens2v", "--json", str(root / "part1.json"), "--videos", str(root / "part1"),
                     "--clusters", str(root / "cluster_videos.json"), "--pairs", str(root / "pairs"),
                     "--out", str(out), *extra])
    return {e["id"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def test_opens2v_clips_honour_crop_segment_boxes_and_cross_clip_pairs(opens2v):
    out = opens2v / "out"
    m = _run_opens2v(opens2v, out)
    assert set(m) == {"vidA_part1_step1", "vidA_part2_step1", "vidB_part1_step1"}
    report = json.loads((out / "import_report.json").read_text())
    assert report["skipped"] == 2 and {s["id"] for s in report["skipped_clips"]} == {"broken_step1", "nocap_step1"}
    assert report["references"] == {"other_clip": 2, "same_clip": 1} and report["masks"] == {"boxes": 2, "none": 1}
    assert not list(out.rglob("broken*")) and not list(out.rglob(".*.tmp"))      # nothing of a failed clip

    a = m["vidA_part1_step1"]
    assert a["caption"] == "a person in vidA_part1" and a["identity"] == "vidA"
    clip, _ = read_video(out / a["video"])
    assert clip.shape == (8, 48, 56, 3)                                          # face_cut [2, 10), 4 px cropped
    first = _cropped(face_box(2))                                               # clip frame 0 = source frame 2
    assert np.abs(_centre(clip[0], first) - COLOURS["vidA_part1"]).max() < 30
    # the reference is vidA_part2's head (green), found through the pair file, not this clip's own face (red)
    assert a["reference_from"] == "other_clip"
    ref = Image.open(out / a["reference"][0])
    assert np.abs(np.asarray(ref)[ref.height // 2, ref.width // 2].astype(int) - COLOURS["vidA_part2"]).max() < 30
    # face masks follow the main face track (track 0), not the short second track (track 1)
    mask, _ = read_video(out / a["face_mask"])
    assert mask.shape[:3] == clip.shape[:3]
    assert _centre(mask[0], first)[0] > 200 and mask[0, 35, 45, 0] < 50
    assert _centre(mask[7], _cropped(face_box(9)))[0] > 200

    b = m["vidB_part1_step1"]                    # alone in its cluster, no per-frame boxes: its own head, no mask
    assert b["reference_from"] == "same_clip" and "face_mask" not in b
    ref = Image.open(out / b["reference"][0])
    assert np.abs(np.asarray(ref)[ref.height // 2, ref.width // 2].astype(int) - COLOURS["vidB_part1"]).max() < 30


def test_opens2v_similarity_window_and_resume(opens2v):
    out = opens2v / "out"
    m = _run_opens2v(opens2v, out, "--pair-similarity", "0", "0.9", "--refs", "2")
    a = m["vidA_part1_step1"]
    assert a["reference_from"] == "same_clip" and len(a["reference"]) == 2        # the 0.93 pair is outside
    ref = Image.open(out / a["reference"][0])
    assert np.abs(np.asarray(ref)[ref.height // 2, ref.width // 2].astype(int) - COLOURS["vidA_part1"]).max() < 30
    stamp = (out / a["video"]).stat().st_mtime_ns
    again = _run_opens2v(opens2v, out, "--pair-similarity", "0", "0.9", "--refs", "2")
    assert again == m and (out / a["video"]).stat().st_mtime_ns == stamp          # finished clips are not redone


def test_opens2v_bad_input_is_named(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([1, 2]))
    with pytest.raises(SystemExit):
        import_main(["--format", "opens2v", "--json", str(tmp_path / "x.json"), "--videos", str(tmp_path),
                     "--out", str(tmp_path / "o")])
    from moca_model.importers.opens2v import OpenS2VImporter
    from moca_model.importers.common import DatasetLayoutError
    with pytest.raises(DatasetLayoutError, match="x.json is not a .*clip key"):
        OpenS2VImporter([(tmp_path / "x.json", tmp_path)])
    with pytest.raises(DatasetLayoutError, match="nope.json does not exist"):
        OpenS2VImporter([(tmp_path / "nope.json", tmp_path)])


# ---------------------------------------------------------------------------------------------- ConsisID
def _entry(f, pid, kind, box, conf=0.95):
    return {"name": kind, "class": 0, "confidence": conf, "box": dict(zip(("x1", "y1", "x2", "y2"), box)),
            "track_id": int(pid), "new_track_id": int(pid)}


@pytest.fixture()
def consisid(tmp_path):
    root = tmp_path / "dataname"
    (root / "videos").mkdir(parents=True)
    make_video(root / "videos" / "clipX.mp4", COLOURS["clipX"], frames=30)
    make_video(root / "videos" / "noanno.mp4", COLOURS["clipX"], frames=10)
    bbox = {}
    for f in range(30):
        d = {"face": [], "head": [], "person": []}
        if f < 25 and f not in (10, 11):                                        # a 2-frame gap, bridged
            x1, y1, x2, y2 = face_box(f)
            d["face"].append(_entry(f, 1, "face", (x1 + 2, y1 + 2, x2 - 2, y2 - 2), 0.9 + f / 1000))
            d["head"].append(_entry(f, 1, "head", (x1, y1, x2, y2), 0.9 + f / 1000))
        d["face"].append(_entry(f, 2, "face", (50, 30, 60, 40)))                # person 2: a face, never a head
        bbox[str(f)] = d
    (root / "refine_bbox_jsons").mkdir()
    (root / "refine_bbox_jsons" / "clipX.json").write_text(json.dumps(bbox))
    track = root / "track_masks_data" / "clipX"
    (track / "tracking_mask_results" / "1").mkdir(parents=True)
    (track / "corresponding_data.json").write_text(json.dumps({"1": {"face": 1, "head": 2, "person": 3},
                                                               "2": {"face": 4}}))
    frames = [f for f in range(25) if f not in (10, 11)]
    (track / "valid_frame.json").write_text(json.dumps({"1": {"face": frames, "head": frames}}))
    for f in range(20):                                                         # tracked masks for frames 0-19
        m = np.zeros((48, 64), np.uint8)
        m[14:26, 20 + f:26 + f] = 255                                           # the right part of the square only
        Image.fromarray(m).save(track / "tracking_mask_results" / "1" / f"annotated_frame_{f:05d}.png")
    caps = [{"path": "clipX.mp4", "cap": "a woman turns", "fps": 8, "duration": 3.75},
            {"path": "noanno.mp4", "cap": "nobody annotated", "fps": 8, "duration": 1.25},
            {"path": "gone.mp4", "cap": "missing", "fps": 8, "duration": 1.0}]
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "dataname.json").write_text(json.dumps(caps))
    (tmp_path / "total_train_data.txt").write_text("dataname/videos,captions/dataname.json,dataname\n")
    return tmp_path


def test_consisid_person_runs_tracked_masks_and_references_outside_the_clip(consisid):
    out = consisid / "out"
    with pytest.warns(UserWarning, match="import: skipping"):
        import_main(["--format", "consisid", "--list", str(consisid / "total_train_data.txt"), "--max-frames", "16",
                     "--refs", "2", "--out", str(out)])
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["id"] for e in lines] == ["clipX_id1"]                            # person 2 has no head track
    e = lines[0]
    assert e["identity"] == "clipX#1" and e["caption"] == "a woman turns" and e["reference_from"] == "other_shot_part"
    clip, _ = read_video(out / e["video"])
    assert clip.shape == (16, 48, 64, 3)                                        # run 0..24, first 16 frames
    mask, _ = read_video(out / e["face_mask"])
    assert mask.shape[:3] == clip.shape[:3]
    assert mask[3, 20, 3 + 22, 0] > 200 and mask[3, 20, 3 + 15, 0] < 60        # the tracked mask, not the box
    # references: the most confident head boxes outside the 16 training frames (frames 16..24), 3+ frames apart
    refs = [np.asarray(Image.open(out / r)) for r in e["reference"]]
    assert len(refs) == 2 and all(np.abs(r[r.shape[0] // 2, r.shape[1] // 2].astype(int)
                                         - COLOURS["clipX"]).max() < 30 for r in refs)
    report = json.loads((out / "import_report.json").read_text())
    assert report["clips"] == 1 and report["skipped"] == 2 and report["masks"] == {"segmentation": 1}
    assert {s["id"] for s in report["skipped_clips"]} == {"noanno", "gone"}


def test_consisid_frames_without_a_tracked_mask_use_the_face_box(consisid):
    out = consisid / "out"
    from moca_model.training.cli import main as cli_main                      # as train_moca.py runs it
    with pytest.warns(UserWarning):
        assert cli_main(["import", "--format", "consisid", "--root", str(consisid / "dataname"), "--captions",
                         str(consisid / "captions" / "dataname.json"), "--out", str(out)]) == 0
    e = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    mask, _ = read_video(out / e["face_mask"])
    assert mask.shape[0] == 25 and e["reference_from"] == "same_clip"           # the whole run is the clip
    x1, y1, x2, y2 = face_box(22)                                               # frame 22: no PNG, face box
    assert mask[22, 20, x1 + 3, 0] > 200 and mask[22, 20, x1 + 1, 0] < 60
    assert mask[11, 20, 26, 0] < 60                                             # bridged gap: no face, no mask


def test_consisid_index_errors_are_named(tmp_path):
    (tmp_path / "t.txt").write_text("only,two\n")
    from moca_model.importers.common import DatasetLayoutError
    from moca_model.importers.consisid import read_index
    with pytest.raises(DatasetLayoutError, match=r"t.txt:1: expected '<videos dir>,<captions JSON>,<annotation dir>'"):
        read_index(tmp_path / "t.txt")


# ---------------------------------------------------------------------------------------------- into cache
def test_imported_manifest_goes_through_cache(opens2v, tmp_path):
    from test_train_cache import ColourFaceEncoder, HashTextEncoder, PoolVideoEncoder

    from moca_model.training.cache import Cacher
    from moca_model.training.data import ShardDataset
    out = opens2v / "out"
    _run_opens2v(opens2v, out)
    c = Cacher(PoolVideoEncoder(), HashTextEncoder(), ColourFaceEncoder(), num_frames=5, height=32, width=32,
               fps=None, samples_per_shard=4, log=lambda *a: None)
    stats = c.run(out / "manifest.jsonl", tmp_path / "cache")
    assert stats["written"] == 3 and stats["skipped"] == 0
    ds = ShardDataset(tmp_path / "cache")
    with_mask = [ds[i] for i in range(len(ds)) if "face_mask" in ds[i]]
    assert len(ds) == 3 and len(with_mask) == 2 and all(s["face_mask"].max() > 0 for s in with_mask)
