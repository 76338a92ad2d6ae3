"""Several identities in one video (moca_model/regions.py): region masks on the token grid, overlaps, the
left-to-right binding, isolation of each person's residual, and the single-identity path unchanged."""
import pytest
import torch

from moca_model import MoCAConfig, MoCADiT
from moca_model.adapter import live_adapter
from moca_model.options import MoCAOptions
from moca_model.regions import (RegionalIdentity, ResolvedRegions, left_to_right_masks, left_to_right_regions,
                                mask_to_token_grid, resolve_overlap)

VARIANTS = {"moca": {}, "single": {"identity_attention": "single", "scales": (1,)},
            "lean": {"expert_kv_rank": 4, "summary_source": "query"}}


def model(name="moca"):
    torch.manual_seed(0)
    m = MoCADiT(MoCAConfig.preset("tiny", **VARIANTS[name])).eval()
    return live_adapter(m, seed=5)


def inputs(m):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 5, 8, 12, generator=g)
    t, ctx = torch.tensor([700.0, 250.0]), torch.randn(2, 7, 4096, generator=g)
    ident = m.adapter.tokenizer(arcface=torch.randn(2, 512, generator=g),
                                face_latent=torch.randn(2, 16, 1, 8, 8, generator=g))
    return x, t, ctx, ident


# Figures recorded from the code before identity regions existed (commit c9ae6d1, same script as `inputs`):
# sum and abs-sum of the velocity with default options, and the sum with top_k 1, strength 0.7.
BEFORE = {"moca": (81.197895472651, 15702.349100696025, 90.4577343591227),
          "single": (237.64203789462226, 15293.733456580432, 176.5541619404794),
          "lean": (765.6207729385205, 15638.961967203955, 690.9553930037873)}


@pytest.mark.parametrize("name", sorted(VARIANTS))
@torch.no_grad()
def test_single_identity_path_unchanged(name):
    m = model(name)
    x, t, ctx, ident = inputs(m)
    v = m(x, t, ctx, identity=ident).double()
    v2 = m(x, t, ctx, identity=ident, moca_options={"top_k": 1, "strength": 0.7}).double()
    s, a, s2 = BEFORE[name]
    assert v.sum().item() == pytest.approx(s, rel=1e-6, abs=1e-3)
    assert v.abs().sum().item() == pytest.approx(a, rel=1e-6)
    assert v2.sum().item() == pytest.approx(s2, rel=1e-6, abs=1e-3)
    # the naive baseline with one identity is the plain path, bit for bit
    assert torch.equal(m(x, t, ctx, identity=RegionalIdentity([ident], mode="concat")).double(), v)


@torch.no_grad()
def test_concat_baseline_is_tokens_concatenated():
    m = model()
    x, t, ctx, a = inputs(m)
    b = a.flip(0)
    ref = m(x, t, ctx, identity=torch.cat([a, b], 1))
    assert torch.equal(m(x, t, ctx, identity=RegionalIdentity([a, b], mode="concat")), ref)


@pytest.mark.parametrize("name", sorted(VARIANTS))
@torch.no_grad()
def test_whole_frame_region_matches_plain_identity(name):
    m = model(name)
    x, t, ctx, ident = inputs(m)
    plain = m(x, t, ctx, identity=ident)
    whole = m(x, t, ctx, identity=RegionalIdentity([ident], masks=[torch.ones(64, 96)]))
    assert (whole - plain).abs().max() < 1e-4 * plain.abs().max()
    assert not torch.equal(plain, m(x, t, ctx))                       # the identity path really acts


@torch.no_grad()
def test_no_region_means_the_backbone_exactly():
    m = model()
    x, t, ctx, ident = inputs(m)
    empty = RegionalIdentity([ident, ident.flip(0)], masks=[torch.zeros(8, 12), torch.zeros(8, 12)])
    assert torch.equal(m(x, t, ctx, identity=empty), m(x, t, ctx))


def _layer_case(name, region_a, region_b, T=5, h=4, w=6, seed=0):
    m = model(name)
    layer = m.adapter.layers[0]
    g = torch.Generator().manual_seed(seed)
    c = m.config
    x = torch.randn(1, T * h * w, c.dim, generator=g)
    vec = torch.randn(1, 1, 6, c.dim, generator=g)
    ida, idb = (torch.randn(1, c.num_id_tokens, c.id_dim, generator=g) for _ in range(2))
    opts = MoCAOptions().resolve(c)
    grid = (T, h, w)

    def run(x, ida, idb):
        r = RegionalIdentity([ida, idb], masks=[region_a, region_b]).resolve(grid)
        return layer(x, vec, r, grid, opts)
    return run, x, ida, idb, grid


@pytest.mark.parametrize("name", sorted(VARIANTS))
@torch.no_grad()
def test_each_person_gets_only_its_own_identity(name):
    T, h, w = 5, 4, 6
    a = torch.zeros(T, h, w); a[:, :, :3] = 1                          # left half (per latent frame)
    b = torch.zeros(T, h, w); b[:, :, 3:5] = 1                         # right, column 5 is nobody's
    b[3:, :, 2] = 1; a[3:, :, 2] = 0                                   # person B moves one column left at t=3
    run, x, ida, idb, grid = _layer_case(name, a, b)
    out = run(x, ida, idb).view(T, h, w, -1)
    inside_a, inside_b = a.bool(), b.bool()
    outside = ~(inside_a | inside_b)
    assert outside.any() and out[outside].abs().max() == 0             # no residual outside every region
    assert out[inside_a].abs().min() > 0 and out[inside_b].abs().min() > 0
    other = run(x, ida, torch.randn_like(idb)).view(T, h, w, -1)       # change B's identity
    assert torch.equal(other[inside_a], out[inside_a])                 # A's tokens never see B's identity
    assert not torch.allclose(other[inside_b], out[inside_b])
    # HTP and the window summaries stay within the region: new video content inside B (and in the unbound
    # column) leaves A's residual untouched, even where B passed through A's columns in other frames
    x2 = x.view(T, h, w, -1).clone()
    x2[~inside_a] += torch.randn_like(x2[~inside_a])
    moved = run(x2.view(1, T * h * w, -1), ida, idb).view(T, h, w, -1)
    assert torch.allclose(moved[inside_a], out[inside_a], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(moved[inside_b], out[inside_b])


def test_mask_to_token_grid_pixels_latents_static():
    grid = (5, 4, 6)                                                   # 17 pixel frames, 64x96 px, 2x2 patches
    pix = torch.zeros(17, 64, 96)
    pix[0, :16, :16] = 1                                               # frame 0 alone
    pix[6, 48:, 80:] = 1                                               # frame 6: group 2 (frames 5..8)
    m = mask_to_token_grid(pix, grid)[0]                               # [5, 4, 6]
    assert m.shape == (5, 4, 6)
    assert m[0, 0, 0] == 1 and m[0].sum() == 1
    assert m[2, 3, 5] == 1 and m[2].sum() == 1 and m[1].sum() == 0 and m[3].sum() == 0
    lat = torch.zeros(5, 8, 12); lat[1, :2, :2] = 1                    # latent grid, one per latent frame
    assert torch.equal(mask_to_token_grid(lat, grid)[0, 1, 0, 0], torch.tensor(1.0))
    half = mask_to_token_grid(torch.tensor([[1.0, 0.0]]).repeat(8, 6), grid)[0]   # static, soft by area
    assert torch.allclose(half, torch.full((5, 4, 6), 0.5))
    with pytest.raises(ValueError, match="mask frames"):
        mask_to_token_grid(torch.ones(7, 8, 12), grid)


def test_overlap_rules():
    w = torch.tensor([[0.9, 0.5, 0.0], [0.6, 0.5, 0.0]])[None, :, None]          # [1, K=2, T=1, N=3]
    largest = resolve_overlap(w, "largest")[0, :, 0]
    assert torch.equal(largest, torch.tensor([[0.9, 0.5, 0.0], [0.0, 0.0, 0.0]]))   # tie -> first identity
    blend = resolve_overlap(w, "blend")[0, :, 0]
    assert torch.allclose(blend, torch.tensor([[0.6, 0.5, 0.0], [0.4, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="overlap"):
        resolve_overlap(w, "max")


def test_left_to_right_binding():
    grid = (1, 2, 10)
    eq = left_to_right_masks(2, grid)
    assert eq[0, 0, 0].tolist() == [1] * 5 + [0] * 5 and eq[1, 0, 0].tolist() == [0] * 5 + [1] * 5
    faces = left_to_right_masks(2, grid, centres=[0.8, 0.2])                    # order given does not matter
    assert faces[0, 0, 0].tolist() == [1] * 5 + [0] * 5                        # split at 0.5
    faces = left_to_right_masks(2, grid, centres=[0.1, 0.3])                   # split at 0.2
    assert faces[0, 0, 0].tolist() == [1, 1] + [0] * 8
    mixed = RegionalIdentity([torch.zeros(1, 2, 3)] * 3, masks=[None, torch.ones(2, 10), None])
    w = mixed.region_weights(grid)[0]                                           # [3, T, h, w]
    assert w[0, 0, 0].tolist() == [1] * 5 + [0] * 5 and w[2, 0, 0].tolist() == [0] * 5 + [1] * 5
    with pytest.raises(ValueError, match="face centres"):
        left_to_right_masks(2, grid, centres=[0.5])
    with pytest.raises(ValueError, match="1 to 4"):
        RegionalIdentity([torch.zeros(1, 2, 3)] * 5)


def test_left_to_right_regions_from_known_masks():
    """Training the automatic binding: each person takes the strip of its rank from the left, split where the
    binding would split between their centres (person 0 standing on the right gets the right strip)."""
    regions = torch.zeros(2, 3, 4, 10)
    regions[0, :, 1:3, 6:9] = 1                                                  # person 0 on the right, centre 0.75
    regions[1, :, 1:3, 1:3] = 1                                                  # person 1 on the left, centre 0.2
    strips = left_to_right_regions(regions)
    assert strips.shape == (2, 3, 4, 10)
    split = [1] * 5 + [0] * 5                                                    # midpoint 0.475: columns 0-4
    assert strips[1, :, :].eq(torch.tensor(split, dtype=torch.float32)).all()
    assert strips[0].eq(1 - torch.tensor(split, dtype=torch.float32)).all()
    assert torch.equal(strips.sum(0), torch.ones(3, 4, 10))                     # every token has one owner
    regions[1] = 0                                                               # someone out of the clip: equal strips
    eq = left_to_right_regions(regions)
    assert eq[0, 0, 0].tolist() == [1] * 5 + [0] * 5 and eq[1, 0, 0].tolist() == [0] * 5 + [1] * 5


def test_resolved_regions_shape_checked():
    m = model()
    layer, c = m.adapter.layers[0], m.config
    bad = ResolvedRegions((torch.zeros(1, 4, c.id_dim),), torch.ones(1, 1, 3, 5))
    with pytest.raises(ValueError, match="region weights"):
        layer(torch.zeros(1, 24, c.dim), torch.zeros(1, 1, 6, c.dim), bad, (1, 4, 6), MoCAOptions().resolve(c))
