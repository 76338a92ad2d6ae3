"""OpenS2V-5M (PKU-YuanGroup/OpenS2V-Nexus) -> our manifest.

Read from its documented layout (the dataset card's JSONs and the data_process demo files):
    part JSON      {clip key: {"metadata": {"path", "crop": [x1, x2, y1, y2], "face_cut": [start, end) or "cut",
                    "fps", "face_cap_qwen" (caption; "cap" accepted), ...},
                    "bbox" (optional): {frame: {"face": [{"track_id", "box": {x1, y1, x2, y2}, "confidence"}]}},
                    "annotation": {"ann_frame_data": {"ann_frame_idx", "annotations": [{"class_name", "bbox":
                    [x1, y1, x2, y2]}]}, "mask_map": {"1": {"class_name"}}, ...}}}
    cluster JSON   cross_video_pairs/cluster_videos.json: {cluster id: ["<part>/<clip key>", ...]}
    pair JSONs     <pairs dir>/<cluster id>.json: [{"cur_id", "aft_id", "cur_class_id", "aft_class_id",
                    "image_similarity", ...}] - which subject of one clip is which subject of another
Frame numbers index the video file; boxes are in pixels of the cropped frame (crop first, as OpenS2V's own
dataloader does).

What is honoured: the watermark crop, the face segment (face_cut), per-frame face boxes of the main face track
(-> box face masks; OpenS2V's SAM2 masks cover one annotated frame only, so they cannot mask a clip), the
annotated head / face box (-> the reference crop), and cross-clip pairs (-> references from *another* clip of
the same source video, inside a similarity window). Without pairs, a clip of the same cluster whose annotation
holds exactly one head gives the reference; otherwise the clip's own face is used (counted in the report).
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from .common import ClipPlan, DatasetLayoutError, ManifestWriter, ReferencePlan, box_mask, load_json, safe_key

FACE_CLASSES = ("human head", "head", "face", "human face")
FIX = "Point --json at a part JSON of OpenS2V-5M (its Jsons/ folder) and --videos at the folder of its clips."


def _crop(meta: dict):
    """metadata "crop" [x1, x2, y1, y2] -> (x1, y1, x2, y2), None for no crop."""
    c = meta.get("crop")
    if not c:
        return None
    if len(c) != 4:
        raise ValueError(f"metadata crop {c} is not [x1, x2, y1, y2]")
    return (int(c[0]), int(c[2]), int(c[1]), int(c[3]))


def _box(b) -> tuple:
    if isinstance(b, dict):
        return (float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"]))
    return tuple(float(v) for v in b[:4])


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def head_subject(item: dict):
    """(annotated frame, class id, box) of the largest head / face box of the clip's annotation, or None."""
    ann = (item.get("annotation") or {}).get("ann_frame_data") or {}
    best = None
    for i, a in enumerate(ann.get("annotations") or []):
        if str(a.get("class_name", "")).strip().lower() in FACE_CLASSES and a.get("bbox"):
            b = _box(a["bbox"])
            if best is None or _area(b) > _area(best[2]):
                best = (int(ann.get("ann_frame_idx", 0)), str(i + 1), b)        # mask_map ids count from 1
    return best


def face_tracks(item: dict, frames) -> tuple:
    """(main track id, {frame: (box, confidence)}) of the per-frame face boxes over ``frames``; (None, {})
    when the JSON has none. The main track is the one present in most frames (ties: the larger face)."""
    per_frame = item.get("bbox") or {}
    seen, area = Counter(), Counter()
    for f in frames:
        for d in (per_frame.get(str(f)) or {}).get("face") or []:
            t = d.get("track_id", 0)
            if t is None or int(t) < 0:
                continue
            seen[int(t)] += 1
            area[int(t)] += _area(_box(d["box"]))
    if not seen:
        return None, {}
    main = max(seen, key=lambda t: (seen[t], area[t]))
    boxes = {}
    for f in frames:
        for d in (per_frame.get(str(f)) or {}).get("face") or []:
            if d.get("track_id") is not None and int(d["track_id"]) == main:
                boxes[f] = (_box(d["box"]), float(d.get("confidence", 1.0)))
    return main, boxes


class OpenS2VImporter:
    def __init__(self, parts: list, clusters=None, pairs_dir=None, max_frames: int = 0, refs: int = 1,
                 similarity=(0.0, 1.0)):
        """parts: [(part JSON path, videos folder)]; clusters: cluster_videos.json path; pairs_dir: folder of
        per-cluster pair JSONs; similarity: (min, max) image_similarity of a cross-clip pair to use it."""
        self.items, self.video_dir = {}, {}
        for json_path, videos in parts:
            data = load_json(json_path, "OpenS2V part JSON", FIX)
            if not isinstance(data, dict) or not all(isinstance(v, dict) and "metadata" in v
                                                     for v in list(data.values())[:50]):
                raise DatasetLayoutError(f"OpenS2V part JSON {json_path} is not a {{clip key: {{\"metadata\": ...}}}} "
                                         f"object. {FIX}")
            for k, v in data.items():
                self.items[k] = v
                self.video_dir[k] = Path(videos)
        self.clusters: dict[str, str] = {}
        self.members: dict[str, list] = {}
        if clusters:
            data = load_json(clusters, "OpenS2V cluster JSON (cross_video_pairs/cluster_videos.json)",
                             "Give the cluster_videos.json of OpenS2V-5M's cross-video data, or leave --clusters out.")
            for cid, ids in data.items():
                keys = [str(i).split("/", 1)[-1] for i in ids]
                self.members[cid] = keys
                for k in keys:
                    self.clusters[k] = cid
        self.pairs_dir = Path(pairs_dir) if pairs_dir else None
        self.max_frames, self.refs = int(max_frames), int(refs)
        self.similarity = (float(similarity[0]), float(similarity[1]))
        self._pairs: dict[str, list] = {}

    # ------------------------------------------------------------------ references
    def _pairs_of(self, cid: str) -> list:
        if cid not in self._pairs:
            p = self.pairs_dir / f"{cid}.json" if self.pairs_dir else None
            self._pairs[cid] = load_json(p, "OpenS2V cross-frame pair JSON", "") if p and p.is_file() else []
        return self._pairs[cid]

    def _ref_in(self, key: str, class_id: str | None = None) -> ReferencePlan | None:
        """The reference of clip ``key``: its annotated box ``class_id`` (None = its head / face box)."""
        item = self.items.get(key)
        if item is None:
            return None
        meta = item["metadata"]
        if class_id is None:
            subj = head_subject(item)
            if subj is None:
                return None
            frame, _, box = subj
        else:
            ann = item["annotation"]["ann_frame_data"]
            i = int(class_id) - 1
            if not 0 <= i < len(ann["annotations"]):
                return None
            frame, box = int(ann.get("ann_frame_idx", 0)), _box(ann["annotations"][i]["bbox"])
        return ReferencePlan(self.video_dir[key] / meta["path"], frame, box, _crop(meta))

    def cross_references(self, key: str, class_id: str) -> list:
        """References of the same subject from other clips: pairs first (within the similarity window, most
        similar first), else cluster members whose annotation holds exactly one head."""
        cid = self.clusters.get(key)
        if cid is None:
            return []
        out = []
        lo, hi = self.similarity
        rows = []
        for r in self._pairs_of(cid):
            a, b = str(r.get("cur_id", "")).split("/", 1)[-1], str(r.get("aft_id", "")).split("/", 1)[-1]
            if a == key and str(r.get("cur_class_id")) == class_id and b != key:
                rows.append((float(r.get("image_similarity", 0)), b, str(r.get("aft_class_id"))))
            elif b == key and str(r.get("aft_class_id")) == class_id and a != key:
                rows.append((float(r.get("image_similarity", 0)), a, str(r.get("cur_class_id"))))
        for sim, other, other_class in sorted(rows, reverse=True):
            if lo <= sim <= hi and other in self.items:
                ref = self._ref_in(other, other_class)
                if ref is not None and not any(o.video == ref.video and o.frame == ref.frame for o in out):
                    ref.origin = "other_clip"
                    out.append(ref)
        if not out and not self._pairs_of(cid):
            for other in self.members.get(cid, []):
                item = self.items.get(other)
                if other == key or item is None:
                    continue
                heads = [a for a in item.get("annotation", {}).get("ann_frame_data", {}).get("annotations", [])
                         if str(a.get("class_name", "")).strip().lower() in FACE_CLASSES]
                if len(heads) == 1:
                    ref = self._ref_in(other)
                    ref.origin = "other_clip"
                    out.append(ref)
        return out[:self.refs]

    # ------------------------------------------------------------------ plans
    def plan(self, key: str) -> ClipPlan:
        item = self.items[key]
        meta = item.get("metadata") or {}
        if "path" not in meta:
            raise ValueError("its metadata has no 'path'")
        caption = meta.get("face_cap_qwen") or meta.get("cap") or meta.get("caption")
        if not caption:
            raise ValueError("no caption (metadata face_cap_qwen / cap)")
        start, end = (meta.get("face_cut") or meta.get("cut") or [0, int(meta.get("num_frames", 0))])[:2]
        if self.max_frames:
            end = min(int(end), int(start) + self.max_frames)
        frames = list(range(int(start), int(end)))
        if not frames:
            raise ValueError(f"empty face segment {meta.get('face_cut') or meta.get('cut')}")
        crop = _crop(meta)
        video = self.video_dir[key] / meta["path"]
        _, boxes = face_tracks(item, frames)
        subj = head_subject(item)
        refs = self.cross_references(key, subj[1]) if subj is not None else []
        if len(refs) < self.refs and boxes:                              # the clip's own best face boxes
            for f, (b, _) in sorted(boxes.items(), key=lambda kv: -kv[1][1])[:self.refs - len(refs)]:
                refs.append(ReferencePlan(video, f, b, crop, "same_clip"))
        if not refs and subj is not None:
            refs.append(ReferencePlan(video, subj[0], subj[2], crop, "same_clip"))
        masks, source = None, "none"
        if boxes:
            h = (crop[3] - crop[1]) if crop else None
            w = (crop[2] - crop[0]) if crop else None

            def masks(f, boxes=boxes, h=h, w=w):
                if f not in boxes:
                    return None
                b = boxes[f][0]
                return box_mask(b, h or int(b[3]) + 1, w or int(b[2]) + 1)
            source = "boxes"
        identity = self.clusters.get(key) or key.split("_segment")[0].split("_part")[0]
        return ClipPlan(safe_key(key), video, frames, str(caption), str(identity), crop, masks, source, refs)

    def run(self, writer: ManifestWriter, limit: int = 0) -> dict:
        keys = list(self.items)[: limit or None]
        for key in keys:
            try:
                plan = self.plan(key)
            except (ValueError, KeyError, TypeError) as e:
                writer.skip(safe_key(key), f"{type(e).__name__}: {e}")
                continue
            writer.write(plan)
        return writer.finish({"format": "opens2v", "clips_in_json": len(self.items),
                              "clusters": len(self.members), "pairs_dir": str(self.pairs_dir or "")})


def add_arguments(p: argparse.ArgumentParser):
    g = p.add_argument_group("opens2v")
    g.add_argument("--json", nargs="+", default=[], help="OpenS2V-5M part JSON file(s) (Jsons/*.json)")
    g.add_argument("--videos", nargs="+", default=[], help="folder(s) of the part's clips (metadata 'path' is "
                   "relative to it): one for all parts, or one per --json")
    g.add_argument("--clusters", default=None, help="cross_video_pairs/cluster_videos.json (cross-clip references)")
    g.add_argument("--pairs", default=None, help="folder of per-cluster cross-frame pair JSONs (<cluster id>.json)")
    g.add_argument("--pair-similarity", nargs=2, type=float, default=(0.0, 1.0), metavar=("MIN", "MAX"),
                   help="use a cross-clip pair only when its image_similarity is in [MIN, MAX] (lower MAX to drop "
                        "near-duplicate references)")


def from_args(a) -> OpenS2VImporter:
    if not a.json or not a.videos:
        raise DatasetLayoutError(f"--format opens2v needs --json and --videos. {FIX}")
    if len(a.videos) not in (1, len(a.json)):
        raise DatasetLayoutError(f"give one --videos folder for all {len(a.json)} --json files, or one per file "
                                 f"(got {len(a.videos)})")
    videos = a.videos * len(a.json) if len(a.videos) == 1 else a.videos
    return OpenS2VImporter(list(zip(a.json, videos)), a.clusters, a.pairs, a.max_frames, a.refs, a.pair_similarity)
