"""Identities across shots and videos: average-linkage clustering of face tracks by recogniser embeddings.

Each track is summarised by its normalised mean embedding; tracks are merged (scipy's hierarchical
``average`` linkage on cosine distance) while the mean cosine between two groups is at least
``cluster_sim``. Two tracks seen in the same frame are different people: a cluster holding such a pair is
split again (cannot-link): the one less similar to the cluster mean becomes an identity of its own.

Cosine thresholds depend on the recogniser (embedding spaces differ): ``THRESHOLDS`` lists them per pack.
``split`` ends a track when a frame's embedding falls below it against the track's recent mean; ``cluster``
is the average-link cosine that merges tracks into an identity; ``ref_min`` / ``ref_max`` bound the
similarity between a clip and a reference photo (below: maybe another person; above: a near-duplicate).
toyface values were set on tuning footage (``raw_footage`` seed 1: 6 videos, 6 people, 38 tracks; the figures in
docs/training.md are measured on other footage, seed 0): track-mean cosines of one person across shots
0.62..0.99 (5th percentile 0.73), of different people at most 0.43 -> ``cluster`` 0.5; a frame against its own
track's recent mean at least 0.39 -> ``split`` 0.3; a frame against another shot's track mean: same person
5th percentile 0.56, different people at most 0.55 -> ``ref_min`` 0.55. antelopev2 / buffalo_l
values follow common ArcFace (glint360k / WebFace600k) practice - same-person cosines of good face pairs
mostly above 0.4-0.5, different people mostly below 0.2-0.3 - and were not measured in this project.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = {
    "antelopev2": {"split": 0.25, "cluster": 0.45, "ref_min": 0.45, "ref_max": 0.92},
    "buffalo_l": {"split": 0.25, "cluster": 0.45, "ref_min": 0.45, "ref_max": 0.92},
    "toyface": {"split": 0.3, "cluster": 0.5, "ref_min": 0.55, "ref_max": 0.97},
}
DEFAULT_PACK_THRESHOLDS = "antelopev2"


def thresholds_for(pack: str) -> dict:
    """The threshold set for a face pack name (unknown packs get antelopev2's, with a notice from the caller)."""
    return dict(THRESHOLDS.get(pack, THRESHOLDS[DEFAULT_PACK_THRESHOLDS]))


def cluster_tracks(embeddings: np.ndarray, cluster_sim: float, cannot_link=()) -> np.ndarray:
    """Track embeddings [N, D] (L2-normalised) -> identity label [N] (0..K-1, largest identity first).

    cannot_link: pairs (i, j) of tracks that share a frame and so are different people."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, int)
    if n == 1:
        labels = np.zeros(1, int)
    else:
        from scipy.cluster.hierarchy import fcluster, linkage
        e = np.asarray(embeddings, np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        z = linkage(e, method="average", metric="cosine")
        labels = fcluster(z, t=1.0 - cluster_sim, criterion="distance") - 1
    labels = _split_cannot_link(np.asarray(labels), np.asarray(embeddings), cannot_link)
    order = {lab: k for k, (lab, _) in enumerate(sorted(
        ((lab, c) for lab, c in zip(*np.unique(labels, return_counts=True))), key=lambda lc: (-lc[1], lc[0])))}
    return np.array([order[lab] for lab in labels])


def _split_cannot_link(labels: np.ndarray, emb: np.ndarray, cannot_link) -> np.ndarray:
    labels = labels.copy()
    nxt = labels.max() + 1 if len(labels) else 0
    for i, j in cannot_link:
        if labels[i] != labels[j]:
            continue
        members = np.flatnonzero(labels == labels[i])
        centre = emb[members].mean(0)
        k = i if float(emb[i] @ centre) < float(emb[j] @ centre) else j   # the one that fits worse leaves
        labels[k] = nxt
        nxt += 1
    return labels
