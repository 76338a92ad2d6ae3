"""The toy world's two-person stage: clips, a head mask and a reference photo per person, and a manifest that
`train_moca.py cache` encodes into multi-person shards."""
import json

import numpy as np

from moca_model.toy import build, world
from moca_model.training import ShardDataset
from moca_model.training.cache import Cacher
from moca_model.training.data import num_people
from moca_model.video import read_video


def test_two_person_pairs_are_distinct_people():
    pairs = build.two_person_pairs([5, 6, 7], 7)
    assert all(a != b for a, b, _ in pairs) and len({(a, b) for a, b, _ in pairs}) == 6
    assert [j for *_, j in pairs] == list(range(7))


def test_two_person_world_feeds_the_cache(tmp_path):
    from test_train_cache import ColourFaceEncoder, HashTextEncoder, PoolVideoEncoder
    manifest = build.write_two_person_world(tmp_path, [3, 4], 1, log=lambda *_: None)
    (line,) = [json.loads(x) for x in manifest.read_text().splitlines()]
    clip = world.make_two_person_clip((3, 4), 0)
    assert line["caption"] == clip.caption and line["id"] == "3+4" and len(line["people"]) == 2
    masks = [read_video(tmp_path / p["face_mask"])[0][..., 0] > 127 for p in line["people"]]
    for k, m in enumerate(masks):
        assert m.shape == (17, 128, 128)
        assert (m == np.stack([f[k].mask for f in clip.faces])).mean() > 0.97   # white = that person's head
    left = [m[0].nonzero()[1].mean() for m in masks]
    assert left[0] < 64 < left[1]                                                # person 1 left, person 2 right
    refs = [tmp_path / p["reference"][0] for p in line["people"]]
    assert all(r.is_file() for r in refs) and refs[0].read_bytes() != refs[1].read_bytes()
    stats = Cacher(PoolVideoEncoder(), HashTextEncoder(), ColourFaceEncoder(), num_frames=17, height=128, width=128,
                   fps=None, samples_per_shard=4, log=lambda *a: None).run(manifest, tmp_path / "cache")
    assert stats["written"] == 1
    (s,) = [ShardDataset(tmp_path / "cache")[0]]
    assert num_people(s) == 2 and s["person_mask"].shape == (2, 5, 16, 16)
    pm = s["person_mask"]
    assert pm[0, :, :, :8].sum() > 5 * pm[0, :, :, 8:].sum() and pm[1, :, :, 8:].sum() > 5 * pm[1, :, :, :8].sum()
