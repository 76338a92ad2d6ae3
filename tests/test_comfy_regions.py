"""Several people in one video inside ComfyUI (COMFYUI_PATH): MoCA Identity Region chains into MoCA Apply on the native
Wan model and matches moca_model's RegionalIdentity; the naive concatenation; region masks as ComfyUI MASKs (one, or
one per frame); nodes that take one identity refuse a list clearly. Skipped when COMFYUI_PATH is not set."""
from __future__ import annotations

import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()


mm = H.pack_module("moca_model")
regions = H.pack_module("moca_model.regions")
patch = H.pack_module("nodes.patch")
nodes_moca = H.pack_module("nodes.nodes_moca")
nodes_face = H.pack_module("nodes.nodes_face")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ref, model, adapter = H.native_tiny_wan(tmp_path_factory.mktemp("wan"))   # ComfyUI's loader -> native WanModel
    g = torch.Generator().manual_seed(3)
    people = [mm.MoCAIdentity(torch.randn(1, 512, generator=g), torch.randn(1, 16, 1, 32, 32, generator=g), "mean")
              for _ in range(2)]
    return ref, model, adapter, people


def region(moca_id, mask=None, previous=None, overlap="largest", binding="regions"):
    return nodes_moca.MoCAIdentityRegion.execute(moca_id, overlap, binding, mask=mask, previous=previous).result[0]


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, 3, 8, 10, generator=g), torch.tensor([0.7]), torch.randn(1, 12, 4096, generator=g)


def parity(ref, model, adapter, moca_id, want_identity):
    x, sigma, ctx = inputs()
    got = H.denoise(patch.apply_moca(model, adapter, moca_id, mm.MoCAOptions()), x, sigma, ctx)
    with torch.no_grad():
        want = x - sigma * ref(x, sigma * 1000, ctx, identity=want_identity)
        base = x - sigma * ref(x, sigma * 1000, ctx)
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / scale, (want - base).abs().max().item() / scale, got


def test_region_chain_into_moca_apply_matches_mocadit(setup):
    ref, model, adapter, (a, b) = setup
    # 9 video frames of 64 x 80 px (3 latent frames, 4 x 5 tokens): a on the left, b on the right from frame 5 on
    left = torch.zeros(1, 64, 80); left[:, :, :32] = 1
    right = torch.zeros(9, 64, 80); right[5:, :, 48:] = 1
    bound = region(b, right, previous=region(a, left))
    assert isinstance(bound, regions.IdentityBindings) and len(bound.identities) == 2
    tok = [p.tokens(ref.adapter.tokenizer) for p in (a, b)]
    err, effect, got = parity(ref, model, adapter, bound, regions.RegionalIdentity(tok, [left, right]))
    print(f"\nregions parity {err:.2e}, effect {effect:.3f}")
    assert effect > 1e-2 and err < 1e-4
    # tokens outside both regions (the middle columns, and the right before frame 5) get no identity
    x, sigma, ctx = inputs()
    with torch.no_grad():
        alone = x - sigma * ref(x, sigma * 1000, ctx, identity=regions.RegionalIdentity(tok, [left, right * 0]))
    assert not torch.allclose(got, alone)                       # b's region acts


def test_left_to_right_and_concat_bindings(setup):
    ref, model, adapter, (a, b) = setup
    tok = [p.tokens(ref.adapter.tokenizer) for p in (a, b)]
    auto = region(b, previous=a)                               # a plain identity as 'previous': person 1
    assert auto.masks == [None, None]
    err, effect, _ = parity(ref, model, adapter, auto, regions.RegionalIdentity(tok))
    assert effect > 1e-2 and err < 1e-4
    naive = region(b, previous=region(a), binding="concat (naive baseline)")
    err, effect, _ = parity(ref, model, adapter, naive, torch.cat(tok, 1))
    assert effect > 1e-2 and err < 1e-4


def test_nodes_that_take_one_identity_refuse_a_list(setup, tmp_path):
    _, _, _, (a, b) = setup
    with pytest.raises(ValueError, match="takes one identity"):
        nodes_face.MoCASaveIdentity.execute(region(b, previous=a), "x")
    with pytest.raises(ValueError, match="connect it to 'previous'"):
        region(region(a), previous=None)
    with pytest.raises(ValueError, match="1 to 4"):
        region(a, previous=region(a, previous=region(a, previous=region(a, previous=a))))


def test_identity_score_reports_each_person_on_a_two_person_toy_clip():
    import numpy as np

    from moca_model.face import FaceAnalyzer
    from moca_model.toy import world
    root = H.REPO / "toy_models" / "insightface"
    if not (root / "models" / "toyface" / "rec_toy.onnx").is_file():
        pytest.skip("the toy face pack is absent (python -m moca_model.toy build --stages face)")
    an = FaceAnalyzer.load(str(root), pack="toyface", provider="cpu")
    seeds = (100003, 100007)
    clip = world.make_two_person_clip(seeds, 0)
    ids = [mm.MoCAIdentity(an.encode(torch.from_numpy(world.make_reference(p, 0).image).float()[None] / 255).embeddings,
                           None) for p in seeds]                              # what MoCA Encode Face gives, minus latents
    frames = torch.from_numpy(clip.frames[::4]).float() / 255                  # 5 frames, [F, H, W, 3]
    right = torch.zeros(1, 128, 128); right[:, :, 64:] = 1
    for order, swapped in (((0, 1), False), ((1, 0), True)):
        bound = region(ids[order[1]], right, previous=region(ids[order[0]]))    # person 2 by mask, person 1 by order
        mean, per_frame, text, plot = nodes_face.MoCAIdentityScore.execute(frames, bound, an, 0.4).result
        assert "person 1: own" in text and "person 2: own" in text and plot.shape[1] == 2 * 240
        assert per_frame.count(";") == 4 and (("swap rate 1.000" in text) == swapped), text
        assert (mean > 0.5) != swapped


def test_region_choices_are_checked_when_the_node_runs(setup):
    _, _, _, (a, _) = setup
    with pytest.raises(ValueError, match="MoCA Identity Region: input 'overlap' = 'max'"):
        region(a, overlap="max")
