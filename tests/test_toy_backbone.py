"""The toy backbone trainer: text-only flow matching that learns, resumes exactly, and exports a Wan file; and
the shipped toy_models/diffusion_models/toy_wan_t2v.safetensors follows held-out captions."""
import pytest
import torch

from moca_model import MoCAConfig, MoCADiT
from moca_model.toy.backbone_train import train_backbone
from moca_model.training.synthetic import make_synthetic_shards


def _train(tmp_path, name, steps, **kw):
    logs = []
    out = train_backbone([tmp_path / "shards"], tmp_path / name, preset="tiny", steps=steps, batch_size=2, lr=2e-3,
                         warmup=2, checkpoint_every=3, log=logs.append, **kw)
    return out, logs


def test_backbone_learns_resumes_exactly_and_exports(tmp_path):
    make_synthetic_shards(tmp_path / "shards", 4)
    full, logs = _train(tmp_path, "full", 6)
    losses = [float(line.split("loss ")[1].split()[0]) for line in logs if " loss " in line]
    assert losses and all(l == l for l in losses)                                     # finite, logged
    # interrupted after the step-3 checkpoint, then run again: the same exported weights, bit for bit
    _train(tmp_path, "split", 3)
    resumed, logs2 = _train(tmp_path, "split", 6)
    assert any("resumed" in line for line in logs2)
    with pytest.raises(SystemExit, match="at step 6, past the 3 steps"):               # not exported as a 3-step run
        _train(tmp_path, "split", 3)
    from safetensors.torch import load_file
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = MoCADiT(MoCAConfig.preset("tiny"))
    model.load_backbone(str(full))                                                    # a Wan-format checkpoint
    assert not any(k.startswith("adapter") for k in a)
    fresh = MoCADiT(MoCAConfig.preset("tiny")).backbone_state_dict()
    assert any(not torch.equal(fresh[k].half(), a[k]) for k in a)                     # it trained


def test_backbone_loss_falls_on_a_fixed_set(tmp_path):
    make_synthetic_shards(tmp_path / "shards", 2)
    _, logs = _train(tmp_path, "fit", 100, text_dropout=0.0)
    losses = [float(line.split("loss ")[1].split()[0]) for line in logs if " loss " in line]
    assert losses[-1] < 0.7 * losses[0], losses


# the shipped backbone (18,000 text-only steps, then 3,000 trained jointly with the MoCA adapter) on 8 held-out
# captions, 10 sampling steps, text only: background 0.875 and lighting 1.0 (chance 0.25 / 0.375 among these
# prompts), a face in 0.43 of the 136 frames (the text-only 18,000-step backbone before it: 0.875, 1.0 and 0.34;
# the 11,000-step one 0.875, 1.0 and 0.29; the 3,500-step one 0.75, 0.875 and 0.18); see docs/toy_world.md.
# The action (0.33 on 40 captions, chance 0.175) is not asserted.
SHIPPED_MIN_BACKGROUND, SHIPPED_MIN_LIGHTING, SHIPPED_MIN_FACE_FRAMES = 0.6, 0.75, 0.30


def test_shipped_backbone_follows_heldout_captions():
    from moca_model.toy.pipeline import FILES
    if not (FILES["backbone"].is_file() and FILES["vae"].is_file()):
        pytest.skip(f"the toy backbone / VAE are not in this checkout ({FILES['backbone']}): `make toy` builds them")
    from moca_model.toy.evaluate import evaluate_backbone
    r = evaluate_backbone(n_prompts=8, steps=10, log=lambda *a: None)
    assert r["background_accuracy"]["mean"] >= SHIPPED_MIN_BACKGROUND > r["background_accuracy"]["chance"], r
    assert r["lighting_accuracy"]["mean"] >= SHIPPED_MIN_LIGHTING > r["lighting_accuracy"]["chance"], r
    assert r["face_frames"]["mean"] >= SHIPPED_MIN_FACE_FRAMES, r                     # it draws heads, sometimes
