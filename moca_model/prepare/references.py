"""Reference photos for each clip: frames of the same identity from *other* shots or videos.

Candidate photos: up to ``photos_per_track`` frames of every track, spread along it, that pass the photo
filters (detected, score, eye distance, |yaw| and |pitch| at most ``max_photo_angle``, sharpness). For a clip,
a photo qualifies when it belongs to the clip's identity, comes from another shot (or, with
``same_shot=True``, also from the clip's own shot outside the clip's frames), and its embedding's cosine to
the clip's mean embedding lies in [``ref_min``, ``ref_max``]: below is maybe another person, above a
near-duplicate of the clip (Concat-ID / Phantom-Data keep cross-video pairs inside such a window).
Preference: another video first, then the *least* similar photo inside the window (a different pose,
expression or light lowers the similarity), at most one photo per track.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .selection import ClipWindow, QualityFilters
from .tracking import FaceTrack


@dataclass
class Photo:
    video: str
    shot: int
    track: int
    frame: int
    embedding: np.ndarray            # [D]
    box: np.ndarray                  # [4] source pixels
    identity: int = -1
    tag: str = ""                    # digest of the settings that made it (see pipeline)

    @property
    def name(self) -> str:
        return f"{self.video}_f{self.frame:06d}_t{self.track:03d}" + (f"_{self.tag}" if self.tag else "")


def track_photos(video: str, track_index: int, track: FaceTrack, filters: QualityFilters,
                 photos_per_track: int = 3, max_photo_angle: float = 35.0, tag: str = "") -> list:
    """Up to ``photos_per_track`` good frames of a track, spread evenly along it."""
    ok = (track.detected & (track.scores >= filters.min_det_score) & (track.eye_px >= filters.min_eye_px)
          & (np.abs(track.pose[:, 0]) <= max_photo_angle) & (np.abs(track.pose[:, 1]) <= max_photo_angle)
          & (track.sharpness >= filters.min_sharpness))
    pos = np.flatnonzero(ok)
    if not len(pos):
        return []
    picks = sorted(set(pos[np.linspace(0, len(pos) - 1, min(photos_per_track, len(pos))).round().astype(int)].tolist()))
    return [Photo(video, track.shot, track_index, int(track.frames[p]), track.emb[p], track.boxes[p], tag=tag)
            for p in picks]


def choose_references(clip: ClipWindow, photos: list, n_refs: int, ref_min: float, ref_max: float,
                      same_shot: bool = False) -> tuple:
    """(chosen [(Photo, similarity)], reason when none: "single_shot_identity" / "outside_window")."""
    mine = [p for p in photos if p.identity == clip.identity]
    other = [p for p in mine if (p.video, p.shot) != (clip.video, clip.shot)]
    if same_shot:
        other += [p for p in mine if (p.video, p.shot) == (clip.video, clip.shot)
                  and not clip.indices[0] <= p.frame <= clip.indices[-1]]
    if not other:
        return [], "single_shot_identity"
    scored = [(p, float(p.embedding @ clip.embedding)) for p in other]
    inside = [(p, s) for p, s in scored if ref_min <= s <= ref_max]
    if not inside:
        return [], "outside_window"
    inside.sort(key=lambda ps: (ps[0].video == clip.video, (ps[0].video, ps[0].shot) == (clip.video, clip.shot), ps[1]))
    chosen, tracks = [], set()
    for p, s in inside:
        if (p.video, p.track) in tracks:
            continue
        tracks.add((p.video, p.track))
        chosen.append((p, s))
        if len(chosen) == n_refs:
            break
    return chosen, None
