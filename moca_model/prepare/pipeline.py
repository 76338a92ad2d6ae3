"""`train_moca.py prepare --videos DIR --out DIR`: raw videos -> the manifest `train_moca.py cache` reads.

Stages: (1) per video - shot cuts (shots.py), face tracks per shot (tracking.py), kept in ``out/work/``
so a re-run skips analysed videos; (2) all tracks - identities (identities.py), clip windows and quality
filters (selection.py), references from other shots (references.py); (3) per video - clips, mask videos
and reference photos (extract.py; existing files are kept); (4) captions (captions.py); (5) ``manifest.jsonl``,
``pairs.jsonl`` (where each clip and reference came from, with similarities and quality), ``tracks.jsonl``
(every face track with its shot, frames and identity), ``report.json``,
``contact_sheet.png``, ``errors.jsonl``. A video that fails at any stage is listed in errors.jsonl and the
report, and skipped; the run carries on.

Output folder: ``out/clips/*.mp4``, ``out/masks/*.mp4``, ``out/refs/*.png`` plus the files above; manifest
paths are relative to ``out``. ``out`` must be empty or a previous `prepare` output (``prepare_state.json``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_target
from ..video import iter_video
from . import captions as C
from .extract import extract_video
from .identities import THRESHOLDS, cluster_tracks, thresholds_for
from .references import choose_references, track_photos
from .report import contact_sheet
from .selection import FILTER_ORDER, QualityFilters, track_windows
from .shots import DEFAULT_MIN_SHOT_FRAMES, DEFAULT_THRESHOLD, detect_cuts, shots_from_cuts
from .tracking import FaceTrack, ShotTracker, analyse_frame

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
ANALYSIS_VERSION = 1
STATE = "prepare_state.json"
TRACK_ARRAYS = ("frames", "boxes", "kps", "scores", "detected", "pose", "eye_px", "sharpness", "emb")


@dataclass
class PrepareConfig:
    face_models: str = "models/insightface"
    face_pack: str = "antelopev2"
    provider: str = "auto"
    det_size: int = 640
    det_thresh: float = 0.5
    shot_threshold: float = DEFAULT_THRESHOLD
    min_shot_frames: int = DEFAULT_MIN_SHOT_FRAMES
    frames: int = 33
    height: int = 480
    width: int = 832
    fps: float | None = 16.0
    clips_per_track: int = 3
    refs: int = 2
    photos_per_track: int = 3
    same_shot: bool = False
    split_sim: float | None = None          # None: the pack's value in identities.THRESHOLDS
    cluster_sim: float | None = None
    ref_min: float | None = None
    ref_max: float | None = None
    filters: QualityFilters = field(default_factory=QualityFilters)
    caption_command: str | None = None

    def thresholds(self) -> dict:
        t = thresholds_for(self.face_pack)
        for k in ("split", "cluster", "ref_min", "ref_max"):
            v = getattr(self, "split_sim" if k == "split" else "cluster_sim" if k == "cluster" else k)
            if v is not None:
                t[k] = float(v)
        return t

    def check(self):
        if (self.frames - 1) % 4 or self.frames < 5:
            raise ValueError(f"--frames must be 4k + 1 and at least 5 (Wan's VAE), got {self.frames}")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"--height/--width must be multiples of 16, got {self.height}x{self.width}")
        t = self.thresholds()
        if not t["ref_min"] < t["ref_max"]:
            raise ValueError(f"--ref-min ({t['ref_min']}) must be below --ref-max ({t['ref_max']})")


def video_key(rel: Path) -> str:
    """A file-name-safe, unique key for a video path relative to --videos."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "__".join(rel.with_suffix("").parts))


def find_videos(folder) -> list:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--videos {folder}: not a folder; give the folder that holds your videos")
    vids = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
    if not vids:
        raise FileNotFoundError(f"--videos {folder}: no video files ({', '.join(VIDEO_EXTS)}) found in it or below")
    return vids


def _write_json(path: Path, obj, lines: bool = False):
    with atomic_target(path, overwrite=True) as tmp:
        text = "".join(json.dumps(o) + "\n" for o in obj) if lines else json.dumps(obj, indent=1)
        Path(tmp).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- stage 1
def analyse_video(path, analyzer, cfg: PrepareConfig, split_sim: float, join_sim: float | None = None) -> dict:
    """Cuts and face tracks of one video -> {"fps", "n_frames", "size", "shots", "splits", "tracks"}."""
    cuts = set(detect_cuts(path, cfg.shot_threshold, cfg.min_shot_frames))
    fps, n_hint, frames = iter_video(path)
    shot, tracker, tracks, splits, size, t = 0, ShotTracker(0, split_sim, join_sim=join_sim), [], 0, None, -1
    for t, frame in enumerate(tqdm(frames, total=n_hint or None, desc=Path(path).name, unit="frame", leave=False)):
        size = frame.shape[1], frame.shape[0]
        if t in cuts:
            tracks += tracker.finish()
            splits += tracker.splits
            shot += 1
            tracker = ShotTracker(shot, split_sim, join_sim=join_sim)
        tracker.step(t, analyse_frame(analyzer, frame))
    if t < 0:
        raise ValueError(f"{path}: the video has no frames")
    tracks += tracker.finish()
    splits += tracker.splits
    return {"fps": fps, "n_frames": t + 1, "size": list(size), "shots": shots_from_cuts(cuts, t + 1),
            "splits": splits, "tracks": tracks}


def save_analysis(work: Path, key: str, a: dict, stamp: dict):
    arrays = {f"{k}.{n}": getattr(tr, n) for k, tr in enumerate(a["tracks"]) for n in TRACK_ARRAYS}
    with atomic_target(work / f"{key}.npz", overwrite=True, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    meta = {k: v for k, v in a.items() if k != "tracks"}
    meta.update(stamp=stamp, track_shots=[tr.shot for tr in a["tracks"]])
    _write_json(work / f"{key}.json", meta)


def load_analysis(work: Path, key: str, stamp: dict) -> dict | None:
    """The saved analysis of a video when it was made with the same stamp (file and settings), else None."""
    js, npz = work / f"{key}.json", work / f"{key}.npz"
    if not (js.is_file() and npz.is_file()):
        return None
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
        if meta.get("stamp") != stamp:
            return None
        with np.load(npz) as z:
            tracks = [FaceTrack(shot=s, **{n: z[f"{k}.{n}"] for n in TRACK_ARRAYS})
                      for k, s in enumerate(meta["track_shots"])]
    except (ValueError, KeyError, OSError):
        return None
    meta["tracks"] = tracks
    return meta


def cannot_link(tracks: list) -> list:
    """Index pairs of tracks [(video key, index, FaceTrack)] seen in the same frames of one shot."""
    groups = {}
    for i, (key, _, tr) in enumerate(tracks):
        groups.setdefault((key, tr.shot), []).append(i)
    return [(i, j) for g in groups.values() for n, i in enumerate(g) for j in g[n + 1:]
            if tracks[i][2].frames[0] <= tracks[j][2].frames[-1] and tracks[j][2].frames[0] <= tracks[i][2].frames[-1]]


# ---------------------------------------------------------------------------------------------- the command
class Preparer:
    def __init__(self, cfg: PrepareConfig, analyzer=None, log=print):
        cfg.check()
        self.cfg, self.log = cfg, log
        self._analyzer = analyzer

    @property
    def analyzer(self):
        if self._analyzer is None:
            from ..face import FaceAnalyzer
            self._analyzer = FaceAnalyzer.load(self.cfg.face_models, pack=self.cfg.face_pack,
                                               provider=self.cfg.provider, det_size=self.cfg.det_size,
                                               det_thresh=self.cfg.det_thresh)
            self.log(self._analyzer.report)
        return self._analyzer

    def _claim(self, out: Path):
        state = out / STATE
        if out.exists() and any(out.iterdir()) and not state.is_file():
            raise FileExistsError(f"--out {out} is not empty and was not written by `prepare` (no {STATE}); "
                                  "give an empty or new folder")
        out.mkdir(parents=True, exist_ok=True)
        if not state.is_file():
            _write_json(state, {"format": "moca-prepare", "version": ANALYSIS_VERSION})

    def run(self, videos_dir, out_dir) -> dict:
        t_start = time.time()
        cfg, out = self.cfg, Path(out_dir)
        videos = find_videos(videos_dir)
        self._claim(out)
        work = out / "work"
        work.mkdir(exist_ok=True)
        th = cfg.thresholds()
        if cfg.face_pack not in THRESHOLDS and not any(getattr(cfg, k) is not None for k in
                                                        ("split_sim", "cluster_sim", "ref_min", "ref_max")):
            self.log(f"[moca-prepare] no thresholds known for face pack {cfg.face_pack!r}: using antelopev2's "
                     f"({th}); set --split-sim/--cluster-sim/--ref-min/--ref-max for your recogniser")
        errors, analyses, keys, tags = [], {}, {}, {}
        settings = {"pack": cfg.face_pack, "det_size": cfg.det_size, "det_thresh": cfg.det_thresh,
                    "shot_threshold": cfg.shot_threshold, "min_shot_frames": cfg.min_shot_frames,
                    "split": th["split"], "join": th["cluster"], "version": ANALYSIS_VERSION}
        reused = 0
        # (1) per video: shots and face tracks
        for path in tqdm(videos, desc="analyse", unit="video"):
            rel = path.relative_to(videos_dir)
            key = video_key(rel)
            keys[key] = path
            st = path.stat()
            stamp = dict(settings, size=st.st_size, mtime=int(st.st_mtime))
            a = load_analysis(work, key, stamp)
            if a is not None:
                reused += 1
            else:
                try:
                    a = analyse_video(path, self.analyzer, cfg, th["split"], th["cluster"])
                    save_analysis(work, key, a, stamp)
                except Exception as e:       # unreadable, corrupt, ...: list it, keep going
                    errors.append({"video": str(rel), "stage": "analyse", "error": f"{type(e).__name__}: {e}"})
                    self.log(f"[moca-prepare] skipping {rel}: {type(e).__name__}: {e}")
                    continue
            analyses[key] = a
            # names of clips and photos carry a digest of what made them, so a changed video or setting
            # never reuses a file written for another track numbering or clip size
            tags[key] = hashlib.sha1(json.dumps([stamp, cfg.frames, cfg.fps, cfg.height, cfg.width],
                                                sort_keys=True).encode()).hexdigest()[:6]
        # (2) identities, windows, filters, references
        all_tracks = [(key, k, tr) for key, a in analyses.items() for k, tr in enumerate(a["tracks"])]
        emb = np.stack([tr.mean_embedding() for _, _, tr in all_tracks]) if all_tracks else np.zeros((0, 1))
        labels = cluster_tracks(emb, th["cluster"], cannot_link(all_tracks))
        identity = {(key, k): int(lab) for (key, k, _), lab in zip(all_tracks, labels)}
        _write_json(out / "tracks.jsonl", [
            {"video": str(keys[key].relative_to(videos_dir)), "track": k, "shot": tr.shot, "identity": identity[(key, k)],
             "frames": [int(tr.frames[0]), int(tr.frames[-1])], "detected": int(tr.detected.sum())}
            for key, k, tr in all_tracks], lines=True)
        windows, photos, track_of = [], [], {}
        for key, k, tr in all_tracks:
            track_of[(key, k)] = tr
            fps = analyses[key]["fps"]
            for w in track_windows(key, k, tr, fps, cfg.fps, cfg.frames, cfg.clips_per_track, cfg.filters,
                                   tags[key]):
                w.identity = identity[(key, k)]
                windows.append(w)
            for p in track_photos(key, k, tr, cfg.filters, cfg.photos_per_track, tag=tags[key]):
                p.identity = identity[(key, k)]
                photos.append(p)
        dropped, kept, by_identity = {}, [], {}
        for p in photos:
            by_identity.setdefault(p.identity, []).append(p)
        for w in windows:
            if w.failed:
                continue
            chosen, why = choose_references(w, by_identity.get(w.identity, []), cfg.refs, th["ref_min"],
                                            th["ref_max"], cfg.same_shot)
            if not chosen:
                w.failed.append(f"no_reference:{why}")
                continue
            kept.append((w, chosen))
        # (3) per video: write clips, masks, photos
        by_video = {}
        for w, chosen in kept:
            by_video.setdefault(w.video, []).append((w, chosen))
        photos_needed = {}
        for _, ch in kept:
            for p, _ in ch:
                photos_needed.setdefault(p.video, {})[p.name] = p
        written = []
        for key in tqdm(sorted(set(by_video) | set(photos_needed)), desc="extract", unit="video"):
            items = by_video.get(key, [])
            clips = [(w, track_of[(key, w.track)]) for w, _ in items]
            need = photos_needed.get(key, {})
            try:
                res = extract_video(keys[key], clips, list(need.values()), out, cfg.width, cfg.height,
                                    cfg.fps or analyses[key]["fps"], cfg.filters.min_motion)
            except Exception as e:
                errors.append({"video": str(keys[key].relative_to(videos_dir)), "stage": "extract",
                               "error": f"{type(e).__name__}: {e}"})
                for w, _ in items:
                    w.failed.append("extract_error")
                continue
            for w, chosen in items:
                if res[w.id]:
                    w.failed.append(res[w.id])
                else:
                    written.append((w, chosen))
        # photos of videos that failed extraction cannot serve as references
        written = [(w, [(p, s) for p, s in ch if (out / "refs" / f"{p.name}.png").is_file()]) for w, ch in written]
        for w, ch in written:
            if not ch:
                w.failed.append("no_reference:extract_error")
        written = [(w, ch) for w, ch in written if ch]
        # (4) captions
        entries, pairs = self._captions(written, analyses, keys, out, errors, videos_dir)
        for w in windows:
            if w.failed:
                r = w.dropped
                dropped[r] = dropped.get(r, 0) + 1
        # (5) files
        _write_json(out / "manifest.jsonl", entries, lines=True)
        _write_json(out / "pairs.jsonl", pairs, lines=True)
        _write_json(out / "errors.jsonl", errors, lines=True)
        sheet_rows = contact_sheet(out, entries, out / "contact_sheet.png")
        report = self._report(analyses, videos, all_tracks, labels, windows, entries, pairs, dropped, errors,
                              th, reused, sheet_rows, time.time() - t_start)
        _write_json(out / "report.json", report)
        return report

    def _captions(self, written, analyses, keys, out, errors, videos_dir):
        cfg = self.cfg
        cache_path = out / "work" / "captions.json"
        cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
        sidecars, entries, pairs = {}, [], []
        for w, chosen in written:
            src = keys[w.video]
            fps = analyses[w.video]["fps"]
            start, end = w.indices[0] / fps, (w.indices[-1] + 1) / fps
            caption = None
            try:
                if w.video not in sidecars:
                    sidecars[w.video] = C.load_sidecar(src)
                if sidecars[w.video] is not None:
                    caption = C.caption_from_segments(sidecars[w.video], start, end)
                elif cfg.caption_command:
                    caption = cache.get(w.id) or C.caption_from_command(cfg.caption_command, out / "clips" / f"{w.id}.mp4",
                                                                        src, start, end)
                    cache[w.id] = caption
            except C.CaptionError as e:
                errors.append({"video": str(src.relative_to(videos_dir)), "stage": "caption", "clip": w.id,
                               "error": str(e)})
                w.failed.append("caption_error")
                continue
            if not caption:
                w.failed.append("no_caption")
                continue
            refs = [f"refs/{p.name}.png" for p, _ in chosen]
            entries.append({"video": f"clips/{w.id}.mp4", "caption": caption, "reference": refs,
                            "face_mask": f"masks/{w.id}.mp4", "id": w.id})
            pairs.append({"id": w.id, "source": str(src.relative_to(videos_dir)), "shot": w.shot, "track": w.track,
                          "identity": w.identity, "frames": [w.indices[0], w.indices[-1]], "source_fps": fps,
                          "quality": w.quality,
                          "references": [{"photo": r, "source": str(keys[p.video].relative_to(videos_dir)),
                                          "shot": p.shot, "track": p.track, "frame": p.frame,
                                          "similarity": round(s, 4), "other_shot": (p.video, p.shot) != (w.video, w.shot),
                                          "other_video": p.video != w.video}
                                         for r, (p, s) in zip(refs, chosen)]})
        if cache:
            _write_json(cache_path, cache)
        return entries, pairs

    def _report(self, analyses, videos, all_tracks, labels, windows, entries, pairs, dropped, errors, th, reused,
                sheet_rows, seconds) -> dict:
        refs = [r for p in pairs for r in p["references"]]
        ids = {}
        for (key, _, tr), lab in zip(all_tracks, labels):
            ids.setdefault(int(lab), set()).add((key, tr.shot))
        failed = {}
        for w in windows:
            for f in w.failed:
                failed[f] = failed.get(f, 0) + 1
        return {
            "videos": {"found": len(videos), "analysed": len(analyses), "reused_analysis": reused,
                       "failed": len({e["video"] for e in errors if e["stage"] == "analyse"})},
            "frames": int(sum(a["n_frames"] for a in analyses.values())),
            "shots": int(sum(len(a["shots"]) for a in analyses.values())),
            "tracks": len(all_tracks), "track_splits": int(sum(a["splits"] for a in analyses.values())),
            "identities": len(ids), "identities_in_several_shots": sum(len(v) > 1 for v in ids.values()),
            "identities_in_several_videos": sum(len({k for k, _ in v}) > 1 for v in ids.values()),
            "candidate_clips": len(windows), "clips": len(entries), "pairs": len(refs),
            "dropped": dict(sorted(dropped.items(), key=lambda kv: (FILTER_ORDER + (kv[0],)).index(kv[0]))),
            "failed_filters": failed,
            "references": {
                "per_clip": round(len(refs) / max(1, len(entries)), 2),
                "from_other_shot": round(sum(r["other_shot"] for r in refs) / max(1, len(refs)), 4),
                "from_other_video": round(sum(r["other_video"] for r in refs) / max(1, len(refs)), 4),
                "similarity": ({"min": min(r["similarity"] for r in refs), "mean": round(float(np.mean(
                    [r["similarity"] for r in refs])), 4), "max": max(r["similarity"] for r in refs)} if refs else None)},
            "thresholds": th, "filters": self.cfg.filters.as_dict(),
            "settings": {k: v for k, v in asdict(self.cfg).items() if k != "filters"},
            "contact_sheet_rows": sheet_rows, "errors": errors, "seconds": round(seconds, 1),
        }


def main(argv) -> int:
    f = QualityFilters()
    p = argparse.ArgumentParser(prog="train_moca.py prepare",
                                description="Turn raw videos into clips, face masks, cross-shot references and the "
                                            "manifest `train_moca.py cache` reads.")
    p.add_argument("--videos", required=True, help="folder of raw videos (searched recursively); captions from "
                   "sidecars <name>.captions.json / <name>.txt next to each video")
    p.add_argument("--out", required=True, help="output folder (empty, or a previous prepare output to resume)")
    p.add_argument("--face-models", required=True, help="insightface models root (ComfyUI/models/insightface)")
    p.add_argument("--face-pack", default="antelopev2")
    p.add_argument("--provider", default="auto", help="onnxruntime provider: auto, cuda, cpu, ...")
    p.add_argument("--det-size", type=int, default=640, help="detector input size (multiple of 32; smaller = "
                   "faster, misses small faces)")
    p.add_argument("--det-thresh", type=float, default=0.5, help="detection score to track a face")
    p.add_argument("--shot-threshold", type=float, default=DEFAULT_THRESHOLD, help="PySceneDetect ContentDetector threshold")
    p.add_argument("--min-shot-frames", type=int, default=DEFAULT_MIN_SHOT_FRAMES)
    p.add_argument("--frames", type=int, default=33, help="frames per clip, 4k + 1")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--fps", type=float, default=16.0, help="clip frame rate (0 = the source's)")
    p.add_argument("--clips-per-track", type=int, default=3)
    p.add_argument("--refs", type=int, default=2, help="reference photos per clip")
    p.add_argument("--photos-per-track", type=int, default=3, help="candidate reference photos taken from each track")
    p.add_argument("--same-shot-references", action="store_true",
                   help="also take references from the clip's own shot (outside the clip's frames)")
    for name, k in (("split-sim", "split"), ("cluster-sim", "cluster"), ("ref-min", "ref_min"), ("ref-max", "ref_max")):
        p.add_argument(f"--{name}", type=float, default=None,
                       help=f"cosine threshold '{k}' (default: per face pack, see moca_model/prepare/identities.py)")
    p.add_argument("--min-det-score", type=float, default=f.min_det_score)
    p.add_argument("--min-eye-px", type=float, default=f.min_eye_px, help="smallest eye distance in source pixels")
    p.add_argument("--max-yaw", type=float, default=f.max_yaw)
    p.add_argument("--max-pitch", type=float, default=f.max_pitch)
    p.add_argument("--min-sharpness", type=float, default=f.min_sharpness)
    p.add_argument("--min-motion", type=float, default=f.min_motion)
    p.add_argument("--max-face-speed", type=float, default=f.max_face_speed)
    p.add_argument("--caption-command", default=None, help="command printing a caption for {clip} (used for "
                   "videos without a sidecar), e.g. \"python cap.py {clip}\"")
    a = p.parse_args(argv)
    filters = QualityFilters(min_det_score=a.min_det_score, min_eye_px=a.min_eye_px, max_yaw=a.max_yaw,
                             max_pitch=a.max_pitch, min_sharpness=a.min_sharpness, min_motion=a.min_motion,
                             max_face_speed=a.max_face_speed)
    cfg = PrepareConfig(face_models=a.face_models, face_pack=a.face_pack, provider=a.provider, det_size=a.det_size,
                        det_thresh=a.det_thresh, shot_threshold=a.shot_threshold, min_shot_frames=a.min_shot_frames,
                        frames=a.frames, height=a.height, width=a.width, fps=a.fps or None,
                        clips_per_track=a.clips_per_track, refs=a.refs, photos_per_track=a.photos_per_track,
                        same_shot=a.same_shot_references, split_sim=a.split_sim, cluster_sim=a.cluster_sim,
                        ref_min=a.ref_min, ref_max=a.ref_max, filters=filters, caption_command=a.caption_command)
    r = Preparer(cfg).run(a.videos, a.out)
    print(f"[moca-prepare] {r['videos']['analysed']}/{r['videos']['found']} videos, {r['shots']} shots, "
          f"{r['tracks']} tracks, {r['identities']} identities -> {r['clips']} clips, {r['pairs']} pairs "
          f"(dropped: {r['dropped'] or 'none'}; errors: {len(r['errors'])}, see errors.jsonl); "
          f"manifest {Path(a.out) / 'manifest.jsonl'}")
    return 0
