"""ConsisID's released data (ConsisID-preview-Data, PKU-YuanGroup/ConsisID) -> our manifest.

Read from its documented training layout (README "Data preprocessing" and models/dataloader.py):
    index file      total_train_data.txt: one "<videos dir>,<captions JSON>,<annotation dir>" per line
    captions JSON   [{"path": "<clip>.mp4", "cap": caption, "fps", "duration", ...}]
    <annotation dir>/refine_bbox_jsons/<clip>.json
                    {frame: {"face" | "head" | "person": [{"box": {x1, y1, x2, y2}, "confidence", "new_track_id"}]}}
    <annotation dir>/track_masks_data/<clip>/corresponding_data.json   {person id: {"face", "head", "person"}}
    <annotation dir>/track_masks_data/<clip>/valid_frame.json          {person id: {"face": [frames], "head": [...]}}
    <annotation dir>/track_masks_data/<clip>/tracking_mask_results/<person id>/annotated_frame_00012.png
                    the person's SAM2-tracked mask per frame (> 0 = inside), which ConsisID trains its face region with
One manifest line per person that has both face and head tracks (ConsisID's own "valid ids"): the longest run of
frames where that person's face or head is found (gaps up to --tolerance frames bridged), the tracked masks
(or, where a frame has none, the face box), and reference crops of the person's head box from frames *outside*
the training clip where the run is longer than the clip (ConsisID's cross-face sampling), else from inside it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from .common import ClipPlan, DatasetLayoutError, ManifestWriter, ReferencePlan, box_mask, load_json, safe_key

FIX = ("Give --list total_train_data.txt (lines: videos dir, captions JSON, annotation dir), or --root (a dataset "
       "folder holding videos/, refine_bbox_jsons/, track_masks_data/) with --captions.")


def _box(d) -> tuple:
    b = d["box"]
    return (float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"]))


def runs(frames, tolerance: int) -> list[list[int]]:
    """Sorted frames split where the gap exceeds ``tolerance``."""
    frames = sorted(set(int(f) for f in frames))
    out = []
    for f in frames:
        if out and f - out[-1][-1] <= tolerance:
            out[-1].append(f)
        else:
            out.append([f])
    return out


def person_boxes(bbox: dict, pid: str, kind: str) -> dict:
    """{frame: (box, confidence)} of ``kind`` ("face" / "head") boxes of person ``pid`` (new_track_id)."""
    out = {}
    for f, d in bbox.items():
        for item in d.get(kind) or []:
            if str(item.get("new_track_id", item.get("track_id"))) == str(pid):
                b, c = _box(item), float(item.get("confidence", 1.0))
                if int(f) not in out or c > out[int(f)][1]:
                    out[int(f)] = (b, c)
    return out


def spaced(frames: list, n: int, min_distance: int) -> list:
    """Up to ``n`` of ``frames`` (in the given order of preference) at least ``min_distance`` apart."""
    out = []
    for f in frames:
        if all(abs(f - g) >= min_distance for g in out):
            out.append(f)
        if len(out) == n:
            break
    return out


class ConsisIDImporter:
    def __init__(self, triples: list, max_frames: int = 0, refs: int = 1, tolerance: int = 6,
                 min_distance: int = 3):
        """triples: [(videos dir, captions JSON, annotation dir)] (total_train_data.txt's lines)."""
        self.entries = []                                     # (videos dir, annotation dir, caption record)
        for videos, captions, anno in triples:
            recs = load_json(captions, "ConsisID captions JSON", FIX)
            if not isinstance(recs, list) or not all(isinstance(r, dict) and "path" in r for r in recs):
                raise DatasetLayoutError(f"ConsisID captions JSON {captions} is not a list of "
                                         f"{{\"path\", \"cap\", ...}} records. {FIX}")
            self.entries += [(Path(videos), Path(anno), r) for r in recs]
        self.max_frames, self.refs = int(max_frames), int(refs)
        self.tolerance, self.min_distance = int(tolerance), int(min_distance)

    def plans(self, videos: Path, anno: Path, rec: dict) -> list[ClipPlan]:
        """One plan per valid person of one clip; ValueError when its annotation is missing or unusable."""
        stem = Path(rec["path"]).stem
        caption = rec.get("cap") or rec.get("caption")
        if not caption:
            raise ValueError("no caption ('cap')")
        video = videos / os.path.basename(rec["path"])
        bbox = load_json(anno / "refine_bbox_jsons" / f"{stem}.json", "ConsisID box JSON", FIX)
        track = anno / "track_masks_data" / stem
        corr = load_json(track / "corresponding_data.json", "ConsisID corresponding_data.json", FIX) \
            if (track / "corresponding_data.json").is_file() else {}
        valid = load_json(track / "valid_frame.json", "ConsisID valid_frame.json", FIX) \
            if (track / "valid_frame.json").is_file() else {}
        ids = [p for p, d in corr.items() if "face" in d and "head" in d] or sorted(
            {str(i.get("new_track_id")) for d in bbox.values() for i in d.get("face") or []} &
            {str(i.get("new_track_id")) for d in bbox.values() for i in d.get("head") or []})
        if not ids:
            raise ValueError("no person with both a face and a head track")
        out = []
        for pid in ids:
            faces, heads = person_boxes(bbox, pid, "face"), person_boxes(bbox, pid, "head")
            v = valid.get(pid) or {}
            present = set(v.get("face") or faces) | set(v.get("head") or heads)
            if not present:
                continue
            run = max(runs(present, self.tolerance), key=len)
            frames = list(range(run[0], run[-1] + 1))
            window = frames[:self.max_frames] if self.max_frames else frames
            ref_pool = heads or faces                             # ConsisID crops the head box
            ranked = sorted((f for f in ref_pool if run[0] <= f <= run[-1]), key=lambda f: -ref_pool[f][1])
            outside = [f for f in ranked if f not in set(window)]
            picks = [(f, "other_shot_part") for f in spaced(outside, self.refs, self.min_distance)]
            if len(picks) < self.refs:
                picks += [(f, "same_clip") for f in spaced([f for f in ranked if f in set(window)],
                                                           self.refs - len(picks), self.min_distance)]
            refs = [ReferencePlan(video, f, ref_pool[f][0], None, origin) for f, origin in picks]
            mask_dir = track / "tracking_mask_results" / pid
            source = "segmentation" if mask_dir.is_dir() else "boxes"

            def masks(f, mask_dir=mask_dir, faces=faces):
                png = mask_dir / f"annotated_frame_{f:05d}.png"
                if png.is_file():
                    from PIL import Image
                    with Image.open(png) as im:
                        return np.asarray(im.convert("L")) > 0
                if f in faces:
                    b = faces[f][0]
                    return box_mask(b, int(b[3]) + 1, int(b[2]) + 1)
                return None
            out.append(ClipPlan(safe_key(f"{stem}_id{pid}"), video, window, str(caption), f"{stem}#{pid}", None,
                                masks, source, refs))
        if not out:
            raise ValueError("no person has frames with a face or head box")
        return out

    def run(self, writer: ManifestWriter, limit: int = 0) -> dict:
        for videos, anno, rec in self.entries[: limit or None]:
            try:
                plans = self.plans(videos, anno, rec)
            except (ValueError, KeyError, TypeError) as e:
                writer.skip(safe_key(Path(str(rec.get("path", "?"))).stem), f"{type(e).__name__}: {e}")
                continue
            for plan in plans:
                writer.write(plan)
        return writer.finish({"format": "consisid", "clips_in_captions": len(self.entries)})


def read_index(path) -> list:
    """total_train_data.txt -> [(videos dir, captions JSON, annotation dir)]; relative paths from its folder."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"ConsisID index {path} does not exist. {FIX}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            raise DatasetLayoutError(f"{path}:{n}: expected '<videos dir>,<captions JSON>,<annotation dir>', got "
                                     f"{line.strip()!r}. {FIX}")
        out.append(tuple(p if os.path.isabs(p) else path.parent / p for p in parts))
    return out


def add_arguments(p: argparse.ArgumentParser):
    g = p.add_argument_group("consisid")
    g.add_argument("--list", default=None, help="ConsisID's total_train_data.txt (videos dir, captions JSON, "
                   "annotation dir per line)")
    g.add_argument("--root", default=None, help="instead of --list: one dataset folder (videos/, "
                   "refine_bbox_jsons/, track_masks_data/)")
    g.add_argument("--captions", default=None, help="with --root: its captions JSON")
    g.add_argument("--tolerance", type=int, default=6, help="bridge gaps of up to this many frames without a face")


def from_args(a) -> ConsisIDImporter:
    if a.list:
        triples = read_index(a.list)
    elif a.root and a.captions:
        triples = [(Path(a.root) / "videos", Path(a.captions), Path(a.root))]
    else:
        raise DatasetLayoutError(f"--format consisid needs --list, or --root with --captions. {FIX}")
    return ConsisIDImporter(triples, a.max_frames, a.refs, a.tolerance)
