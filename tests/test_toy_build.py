"""`make toy`: every stage is wired, and the world stage writes the manifest the cache reads, resumably."""
import json

from moca_model.toy import build, world
from moca_model.video import read_video


def test_every_stage_has_a_function():
    assert list(build.STAGES) == ["world", "face", "vae", "cache", "backbone", "adapter", "classifiers"]
    assert set(build.STAGE_FUNCS) == set(build.STAGES)


def test_world_stage_writes_a_cache_manifest_and_resumes(tmp_path):
    manifest = build.write_world(tmp_path, [3], 1, log=lambda *_: None)
    (line,) = [json.loads(x) for x in manifest.read_text().splitlines()]
    spec = world.clip_spec(3, 0)
    assert line["caption"] == spec.caption and line["id"] == "3"
    frames, _ = read_video(tmp_path / line["video"])
    masks, _ = read_video(tmp_path / line["face_mask"])
    assert frames.shape == (17, 128, 128, 3) and masks.shape == (17, 128, 128, 3)
    clip = world.make_clip(3, 0)
    assert abs(frames.astype(float) - clip.frames).mean() < 4                 # H.264 at crf 18: close to the render
    head = masks[..., 0] > 127
    assert (head == [f[0].mask for f in clip.faces]).mean() > 0.97             # white = the person's head
    assert (tmp_path / line["reference"][0]).is_file()
    stamp = (tmp_path / line["video"]).stat().st_mtime_ns
    build.write_world(tmp_path, [3], 1, log=lambda *_: None)                  # done clips are not re-rendered
    assert (tmp_path / line["video"]).stat().st_mtime_ns == stamp
