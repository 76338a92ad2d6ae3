"""MoCA on ComfyUI's own Wan model, in-process (COMFYUI_PATH): parity with moca_model.MoCADiT, no leaks
into the base model, chaining with other dit patches, per-conditioning identity, MoCA Sampler guidance,
interrupts, casting ops. Skipped, with the reason shown, when COMFYUI_PATH is not set."""
from __future__ import annotations

import gc

import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()

import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402

mm = H.pack_module("moca_model")
latents = H.pack_module("moca_model.latents")
patch = H.pack_module("nodes.patch")
logic = H.pack_module("nodes.logic")
adapter_mod = H.pack_module("nodes.adapter")
sampler_mod = H.pack_module("nodes.nodes_sampler")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ref, model, adapter = H.native_tiny_wan(tmp_path_factory.mktemp("wan"))   # ComfyUI's loader -> native WanModel
    g = torch.Generator().manual_seed(3)
    identity = mm.MoCAIdentity(torch.randn(2, 512, generator=g), torch.randn(2, 16, 1, 32, 32, generator=g), "mean")
    return ref, model, adapter, identity


denoise = H.denoise


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, 3, 8, 10, generator=g), torch.tensor([0.7]), torch.randn(1, 12, 4096, generator=g)


def test_native_wan_plus_moca_apply_matches_mocadit(setup):
    ref, model, adapter, identity = setup
    assert type(model.get_model_object("diffusion_model")).__name__ == "WanModel"
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions())
    x, sigma, ctx = inputs()
    base, moca = denoise(model, x, sigma, ctx), denoise(patched, x, sigma, ctx)
    with torch.no_grad():
        t = sigma * 1000
        v_base = ref(x, t, ctx)
        v_moca = ref(x, t, ctx, identity=identity.tokens(ref.adapter.tokenizer))
    want_base, want_moca = x - sigma * v_base, x - sigma * v_moca      # FLOW: denoised = x - sigma * v
    scale = want_moca.abs().max().item()
    err_base = (base - want_base).abs().max().item() / scale
    err_moca = (moca - want_moca).abs().max().item() / scale
    effect = (want_moca - want_base).abs().max().item() / scale
    print(f"\nparity (fp32, relative to output scale {scale:.3f}): backbone {err_base:.2e}, "
          f"MoCA {err_moca:.2e}; MoCA changes the output by {effect:.3f}")
    assert effect > 1e-2, "the test adapter must change the output, or parity proves nothing"
    assert err_base < 1e-4 and err_moca < 1e-4


def test_sampling_steps_match_mocadit(setup):
    ref, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions(strength=0.8))
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 11)
    ctx = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(5))
    cond = [[ctx, {}]]
    out = comfy.sample.sample(patched, noise, 3, 1.0, "euler", "simple", cond, cond, latent, disable_pbar=True, seed=11)
    # the same Euler steps with MoCADiT on the sigmas ComfyUI used
    sigmas = comfy.samplers.calculate_sigmas(patched.get_model_object("model_sampling"), "simple", 3)
    tokens = identity.tokens(ref.adapter.tokenizer)
    x = noise * sigmas[0]
    with torch.no_grad():
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            v = ref(x, (s * 1000).reshape(1), ctx, identity=tokens, moca_options={"strength": 0.8})
            x = x + (s_next - s) * v
    x = latents.denormalize_latent(x)            # ComfyUI returns latents in the VAE's space (process_out)
    err = (out - x).abs().max().item() / x.abs().max().item()
    print(f"\n3 Euler steps through KSampler's path vs MoCADiT: max relative difference {err:.2e}")
    assert err < 1e-4


def test_bypassed_moca_apply_leaves_the_base_model_bit_identical(setup):
    _, model, adapter, identity = setup
    x, sigma, ctx = inputs(1)
    before = denoise(model, x, sigma, ctx)
    options_before = repr(model.model_options)
    wrappers_before = repr(model.wrappers)
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions())
    moca = denoise(patched, x, sigma, ctx)
    latent = torch.zeros(1, 16, 2, 8, 8)
    cond = [[ctx, {}]]
    comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, 0), 2, 2.0, "euler", "simple", cond, cond, latent,
                        disable_pbar=True)
    after = denoise(model, x, sigma, ctx)
    assert not torch.equal(moca, before)
    assert torch.equal(before, after), "a MoCA run changed the base model's output"
    assert repr(model.model_options) == options_before and repr(model.wrappers) == wrappers_before
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


def test_chains_an_existing_dit_patch_instead_of_overwriting_it(setup):
    _, model, adapter, identity = setup
    calls = []

    def other_pack_patch(args, extra):          # what another node pack would have put on block 0
        calls.append("other")
        out = extra["original_block"](args)
        return {"img": out["img"] * 1.0}

    m = model.clone()
    m.set_model_patch_replace(other_pack_patch, "dit", "double_block", 0)
    patched = patch.apply_moca(m, adapter, identity, mm.MoCAOptions())
    block0 = patched.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    assert block0.previous is other_pack_patch
    x, sigma, ctx = inputs(2)
    a = denoise(patched, x, sigma, ctx)
    b = denoise(patch.apply_moca(model, adapter, identity, mm.MoCAOptions()), x, sigma, ctx)
    assert calls == ["other"]
    assert torch.allclose(a, b, atol=1e-6)       # the other patch is an identity op: same MoCA result


def test_adapter_is_loaded_with_the_model_and_cloning_shares_the_patch(setup):
    _, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions())
    assert adapter in patched.model_patches_models()
    clone = patched.clone()
    p0 = patched.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    p1 = clone.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    assert p0 is p1 and p0.state is p1.state
    assert patch.moca_states(clone) and not patch.moca_states(model)


def test_identity_only_on_marked_conditioning(setup):
    _, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions(), apply_to="marked conditioning only")
    x, sigma, ctx = inputs(4)
    base = denoise(model, x, sigma, ctx)
    unmarked = denoise(patched, x, sigma, ctx)
    on = denoise(patched, x, sigma, ctx, {"moca_id": logic.marker_for("with identity")})
    off = denoise(patched, x, sigma, ctx, {"moca_id": logic.OFF})
    all_ = denoise(patch.apply_moca(model, adapter, identity, mm.MoCAOptions()), x, sigma, ctx)
    assert torch.equal(unmarked, base) and torch.equal(off, base)
    assert torch.allclose(on, all_, atol=1e-6) and not torch.allclose(on, base)


def test_dual_cfg_guider_puts_identity_on_cond1_only(setup):
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG
    _, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions(), apply_to="marked conditioning only")
    seen = []
    wrapper = patched.wrappers[comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL]["moca"][0]
    original = wrapper.__class__.__call__

    class Spy(wrapper.__class__):
        def __call__(self, executor, x, timestep, context, *args, **kwargs):
            seen.append(kwargs.get("moca_id"))
            return original(self, executor, x, timestep, context, *args, **kwargs)

    patched.wrappers[comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL]["moca"] = [Spy(wrapper.state)]
    ctx = torch.randn(1, 12, 4096)
    pos = [[ctx, {}]]
    cond1 = patch.mark_conditioning(pos, logic.marker_for("with identity"))
    cond2 = patch.mark_conditioning(pos, logic.OFF)
    guider = Guider_DualCFG(patched)
    guider.set_conds(cond1, cond2, [[torch.randn(1, 12, 4096), {}]])
    guider.set_cfg(2.0, 4.0)
    latent = torch.zeros(1, 16, 2, 8, 8)
    out = guider.sample(comfy.sample.prepare_noise(latent, 0), latent, comfy.samplers.sampler_object("euler"),
                        torch.tensor([1.0, 0.5, 0.0]), disable_pbar=True, seed=0)
    assert torch.isfinite(out).all()
    modes = [None if m is None else m.mode for m in seen]
    assert modes.count("on") == 2 and "off" in modes        # 2 steps: one identity pass each


def test_moca_guider_matches_the_guidance_formula(setup):
    ref, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions())
    g = torch.Generator().manual_seed(9)
    pos, neg = torch.randn(1, 12, 4096, generator=g), torch.randn(1, 12, 4096, generator=g)
    guider = sampler_mod.MoCAGuider(patched)
    guider.set_conds(patch.mark_conditioning([[pos, {}]], logic.marker_for("with identity")),
                     patch.mark_conditioning([[pos, {}]], logic.OFF), patch.mark_conditioning([[neg, {}]], logic.OFF))
    guider.set_cfg(4.0, 2.5)
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 1)
    out = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), torch.tensor([1.0, 0.0]),
                        disable_pbar=True, seed=1)
    tokens = identity.tokens(ref.adapter.tokenizer)
    t = torch.tensor([1000.0])
    with torch.no_grad():
        v_u, v_t, v_ti = ref(noise, t, neg), ref(noise, t, pos), ref(noise, t, pos, identity=tokens)
    v = v_u + 4.0 * (v_t + 2.5 * (v_ti - v_t) - v_u)
    want = latents.denormalize_latent(noise - v)  # one Euler step from sigma 1 to 0, in the VAE's space
    err = (out - want).abs().max().item() / want.abs().max().item()
    print(f"\nMoCA Sampler guidance vs v_u + s_t(v_t + s_i(v_ti - v_t) - v_u): relative difference {err:.2e}")
    assert err < 1e-4


def test_start_end_percent_gate_moca_by_sigma(setup):
    _, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions(), start_percent=0.0, end_percent=0.3)
    x, _, ctx = inputs(5)
    ms = model.get_model_object("model_sampling")
    early, late = torch.tensor([ms.percent_to_sigma(0.1)]), torch.tensor([ms.percent_to_sigma(0.8)])
    assert not torch.equal(denoise(patched, x, early, ctx), denoise(model, x, early, ctx))
    assert torch.equal(denoise(patched, x, late, ctx), denoise(model, x, late, ctx))


def test_compat_block_range_limits_moca_to_those_blocks(setup):
    """blocks=(0,): block 0 gets its MoCA residual, the others run as plain Wan - exactly MoCADiT with the
    other layers' output projections zeroed; every block listed equals the default."""
    import copy
    ref, model, adapter, identity = setup
    x, sigma, ctx = inputs(7)
    full = denoise(patch.apply_moca(model, adapter, identity, mm.MoCAOptions()), x, sigma, ctx)
    listed = patch.apply_moca(model, adapter, identity, mm.MoCAOptions(), blocks=range(ref.config.num_layers))
    assert torch.equal(denoise(listed, x, sigma, ctx), full)
    first = denoise(patch.apply_moca(model, adapter, identity, mm.MoCAOptions(), blocks=[0]), x, sigma, ctx)
    only0 = copy.deepcopy(ref)
    with torch.no_grad():
        for layer in only0.adapter.layers[1:]:
            layer.out.weight.zero_()
            layer.out.bias.zero_()
        want = x - sigma * only0(x, sigma * 1000, ctx, identity=identity.tokens(only0.adapter.tokenizer))
    scale = want.abs().max().item()
    assert (first - want).abs().max().item() / scale < 1e-4
    assert (first - full).abs().max().item() / scale > 1e-3, "block 1's MoCA must matter, or this proves nothing"
    with pytest.raises(ValueError, match="non-empty subset"):
        patch.apply_moca(model, adapter, identity, mm.MoCAOptions(), blocks=[ref.config.num_layers])


def test_compat_lora_and_moca_apply_commute(setup):
    """A LoRA loaded by core LoraLoaderModelOnly (comfy.sd.load_lora_for_models) before or after MoCA Apply
    gives the same model: the LoRA patches the Wan weights, MoCA adds block patches, neither drops the other."""
    import comfy.sd
    ref, model, adapter, identity = setup
    lora = H.tiny_wan_lora(ref)
    with_lora = lambda m: comfy.sd.load_lora_for_models(m, None, lora, 1.0, 0.0)[0]      # noqa: E731
    moca = lambda m: patch.apply_moca(m, adapter, identity, mm.MoCAOptions())         # noqa: E731
    x, sigma, ctx = inputs(9)
    lora_then_moca = denoise(moca(with_lora(model)), x, sigma, ctx)
    moca_then_lora = denoise(with_lora(moca(model)), x, sigma, ctx)
    only_lora, only_moca = denoise(with_lora(model), x, sigma, ctx), denoise(moca(model), x, sigma, ctx)
    base = denoise(model, x, sigma, ctx)
    scale = base.abs().max().item()
    assert (lora_then_moca - moca_then_lora).abs().max().item() / scale < 1e-6
    assert (only_lora - base).abs().max().item() / scale > 1e-3, "the LoRA must change the model"
    assert (lora_then_moca - only_lora).abs().max().item() / scale > 1e-3, "MoCA must still act with the LoRA"
    assert (lora_then_moca - only_moca).abs().max().item() / scale > 1e-3, "the LoRA must still act with MoCA"
    assert torch.equal(denoise(model, x, sigma, ctx), base), "the input model was modified"


def test_compat_moca_on_fp8_e4m3fn_wan_weights(setup, tmp_path):
    """Load Diffusion Model with weight_dtype fp8_e4m3fn (ComfyUI casts the weights per layer on the fly):
    MoCA Apply still acts, and its effect matches the fp32 model's."""
    ref, model, adapter, identity = setup
    path = tmp_path / "tiny_wan.safetensors"
    mm.save_wan_checkpoint(path, ref, prefix="model.diffusion_model.", overwrite=True)
    fp8 = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float8_e4m3fn})
    assert fp8.model.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    x, sigma, ctx = inputs(11)
    base, base8 = denoise(model, x, sigma, ctx), denoise(fp8, x, sigma, ctx)
    effect = denoise(patch.apply_moca(model, adapter, identity, mm.MoCAOptions()), x, sigma, ctx) - base
    effect8 = denoise(patch.apply_moca(fp8, adapter, identity, mm.MoCAOptions()), x, sigma, ctx) - base8
    scale = base.abs().max().item()
    assert torch.isfinite(effect8).all() and 0 < (base8 - base).abs().max().item() / scale < 0.1
    assert effect8.abs().max().item() / scale > 1e-2
    assert (effect8 - effect).abs().max().item() / effect.abs().max().item() < 0.2


@pytest.mark.parametrize("order", ["compile_then_moca", "moca_then_compile"])
def test_compat_moca_under_comfyuis_torch_compile_node(setup, order):
    """Core TorchCompileModel (inductor) on either side of MoCA Apply: MoCA's block patches still run (its
    check that every block's patch ran would raise otherwise) and the output matches eager."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    _, model, adapter, identity = setup
    compile_ = lambda m: TorchCompileModel.execute(m, "inductor").result[0]            # noqa: E731
    moca = lambda m: patch.apply_moca(m, adapter, identity, mm.MoCAOptions())         # noqa: E731
    x, sigma, ctx = inputs(13)
    eager = denoise(moca(model), x, sigma, ctx)
    compiled = moca(compile_(model)) if order == "compile_then_moca" else compile_(moca(model))
    got = denoise(compiled, x, sigma, ctx)
    base = denoise(model, x, sigma, ctx)
    scale = eager.abs().max().item()
    assert (got - eager).abs().max().item() / scale < 1e-4
    assert (got - base).abs().max().item() / scale > 1e-2, "MoCA must act under compile"


def test_interrupt_mid_sampling_leaves_nothing_held_by_moca(setup):
    _, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions())
    latent = torch.zeros(1, 16, 2, 8, 8)
    cond = [[torch.randn(1, 12, 4096), {}]]

    def interrupt(step, *_):
        if step >= 1:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, 0), 4, 1.0, "euler", "simple", cond, cond,
                            latent, callback=interrupt, disable_pbar=True)
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is patch.MoCARun], "identity tokens outlived the run"
    state = patch.moca_states(patched)[0]
    held = [k for k, v in vars(state).items() if torch.is_tensor(v)]
    assert not held, f"MoCA state holds tensors: {held}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_fp16_bf16_fp8_adapters_run_through_casting_ops(setup, dtype):
    ref, model, _, identity = setup
    state = {k: v.to(dtype) for k, v in ref.adapter.state_dict().items()}
    ap = adapter_mod.build_adapter_patcher(ref.config, state, f"tiny-{dtype}", weight_dtype=dtype)
    assert ap.model.layers[0].out.weight.dtype == dtype
    assert ap.model.tokenizer.type_embed.dtype == torch.float32
    x, sigma, ctx = inputs(6)
    out = denoise(patch.apply_moca(model, ap, identity, mm.MoCAOptions()), x, sigma, ctx)
    full = denoise(patch.apply_moca(model, setup[2], identity, mm.MoCAOptions()), x, sigma, ctx)
    assert torch.isfinite(out).all()
    assert (out - full).abs().max() / full.abs().max() < (1e-1 if dtype.itemsize == 1 else 5e-2)


def test_adapter_dtype_follows_comfyuis_rule_for_the_wan_model_not_the_file(setup):
    ref = setup[0]
    bf16_file = {k: v.to(torch.bfloat16) for k, v in ref.adapter.state_dict().items()}
    want = comfy.model_management.unet_dtype(supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    ap = adapter_mod.build_adapter_patcher(ref.config, bf16_file, "bf16 file")
    assert ap.model.layers[0].out.weight.dtype == want == adapter_mod.default_adapter_dtype()
    fp32_file = ref.adapter.state_dict()
    ap = adapter_mod.build_adapter_patcher(ref.config, fp32_file, "fp32 file", weight_dtype="bf16")
    assert ap.model.layers[0].out.weight.dtype == torch.bfloat16
    assert ap.model.tokenizer.type_embed.dtype == torch.float32          # bare parameters stay fp32
    assert comfy.model_management.module_size(ap.model) < 0.6 * sum(v.nbytes for v in fp32_file.values())
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        adapter_mod.build_adapter_patcher(ref.config, fp32_file, "x", weight_dtype="int8")


def test_wrong_model_and_mismatched_adapter_errors_name_the_input(setup):
    ref, model, adapter, identity = setup
    small = mm.MoCAConfig.preset("tiny", num_layers=1)
    other = adapter_mod.build_adapter_patcher(small, mm.MoCAAdapter(small).init_weights().state_dict(), "one-layer")
    with pytest.raises(ValueError, match="input 'moca_adapter'.*2 blocks"):
        patch.apply_moca(model, other, identity, mm.MoCAOptions())
    with pytest.raises(mm.CheckpointError, match="missing"):
        adapter_mod.build_adapter_patcher(ref.config, {}, "empty")


# ---------------------------------------------------------------------------------------------- partial loading
def _partially_loaded_adapter(ref):
    """The adapter after ComfyUI's own partial load (what --novram or too little free VRAM gives): only leaf
    modules are managed; the casting ops cast offloaded weights on the fly. The meta device stands in for the
    GPU: computation there only propagates shapes, and a tensor left on the CPU that nothing casts fails."""
    ap = adapter_mod.build_adapter_patcher(ref.config, ref.adapter.state_dict(), "partial")
    meta = torch.device("meta")
    ap.load(meta, lowvram_model_memory=ap.model_size() // 2)      # half of it fits
    devices = {p.device.type for p in ap.model.parameters()}
    assert devices == {"cpu", "meta"}, f"not a partial load: parameters on {devices}"
    return ap, meta


def test_partially_loaded_adapter_makes_identity_tokens_on_the_load_device(setup):
    ref, _, _, identity = setup
    ap, meta = _partially_loaded_adapter(ref)
    tokens = identity.tokens(ap.model.tokenizer, device=meta)
    assert tokens.device == meta and tokens.shape == (1, ref.config.num_id_tokens, ref.config.id_dim)


def test_partially_loaded_adapter_layers_run_on_the_load_device(setup):
    ref, _, _, _ = setup
    ap, meta = _partially_loaded_adapter(ref)
    c = ref.config
    grid = (3, 2, 2)
    x = torch.zeros(1, 12, c.dim, device=meta)
    vec = torch.zeros(1, 1, 6, c.dim, device=meta)
    tokens = torch.zeros(1, c.num_id_tokens, c.id_dim, device=meta)
    opts = mm.MoCAOptions().resolve(c)
    for i, layer in enumerate(ap.model.layers):
        try:
            out = layer(x, vec, tokens, grid, opts)
        except RuntimeError as e:
            if "item() cannot be called on meta tensors" in str(e):
                pytest.skip("the TACA experts read the window plan on the host (a sync per layer, issue 9 item 17); "
                            "this check runs once the plan carries that as a Python value")
            raise
        assert out.device == meta and out.shape == x.shape, i


# ---------------------------------------------------------------------------------------------- Wan variants
def _comfy_wan_variant(cls_name: str, **extra):
    """A tiny Wan variant loaded by ComfyUI's own loader: the state dict of ComfyUI's own class for that variant
    (zeros), so ComfyUI's model detection picks the variant as it does for a real file."""
    import comfy.ldm.wan.model as wan
    import comfy.ops
    m = getattr(wan, cls_name)(patch_size=(1, 2, 2), dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096,
                               freq_dim=256, operations=comfy.ops.disable_weight_init, device="meta", **extra)
    sd = {"model.diffusion_model." + k: torch.zeros(v.shape, dtype=torch.float16) for k, v in m.state_dict().items()}
    return comfy.sd.load_diffusion_model_state_dict(sd)


@pytest.mark.parametrize("cls_name, extra, named", [
    ("WanModel", {"model_type": "i2v", "in_dim": 36, "out_dim": 16}, r"a Wan image-to-video model .*WAN21_I2V"),
    ("VaceWanModel", {"in_dim": 16, "out_dim": 16, "vace_layers": 1, "vace_in_dim": 96}, r"a Wan VACE model .*WAN21_Vace"),
    ("HumoWanModel", {"in_dim": 16, "out_dim": 16}, r"a HuMo model .*WAN21_HuMo"),
    ("WanModel", {"in_dim": 48, "out_dim": 48}, r"a Wan model with 48 latent channels .*WAN22_T2V"),
], ids=["i2v", "vace", "humo", "48-channel"])
def test_unsupported_wan_variants_are_refused_by_name(setup, cls_name, extra, named):
    ref, _, adapter, identity = setup
    model = _comfy_wan_variant(cls_name, **extra)
    with pytest.raises(ValueError, match=r"MoCA Apply: input 'model' is " + named + r".*MoCA supports Wan 2.1 "
                                         r"text-to-video, 1.3B or 14B \(ComfyUI model type WAN21_T2V\) only"):
        patch.apply_moca(model, adapter, identity, mm.MoCAOptions())


def test_marked_only_with_a_plain_ksampler_fails_with_the_fix(setup):
    _, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions(), apply_to="marked conditioning only")
    latent = torch.zeros(1, 16, 2, 8, 8)
    cond = [[torch.randn(1, 12, 4096), {}]]
    with pytest.raises(ValueError, match="apply_to is 'marked conditioning only', but no conditioning .* set MoCA "
                                         "Apply's apply_to to 'all'.*MoCA Identity Conditioning"):
        comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, 0), 1, 2.0, "euler", "simple", cond, cond,
                            latent, disable_pbar=True)
    marked = patch.mark_conditioning(cond, logic.marker_for("with identity"))        # marked: runs
    out = comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, 0), 1, 2.0, "euler", "simple", marked, cond,
                              latent, disable_pbar=True)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- MoCA Sampler
def _moca_sampler(model, pos, neg, text_cfg, id_cfg, shift=0.0, seed=3):
    out = sampler_mod.MoCASampler.execute(model, pos, neg, 16, 16, 5, 3, text_cfg, id_cfg, shift, seed, "euler",
                                          "simple", 1)
    return out.result[0]["samples"]


def _ksampler(model, pos, neg, cfg, seed=3):
    latent = torch.zeros(1, 16, 2, 2, 2)
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), 3, cfg, "euler", "simple", pos, neg,
                               latent, disable_pbar=True, seed=seed)


def _cfg_hooks(model):
    """ComfyUI's own pre-CFG (APG), CFG (RescaleCFG) and post-CFG (CFG-Zero*) patches, fresh (APG keeps state)."""
    from comfy_extras.nodes_apg import APG
    from comfy_extras.nodes_cfg import CFGZeroStar
    from comfy_extras.nodes_model_advanced import RescaleCFG
    model = APG.execute(model, 1.0, 5.0, 0.5).result[0]
    model = RescaleCFG().patch(model, 0.7)[0]
    return CFGZeroStar.execute(model).result[0]


def _prompts():
    g = torch.Generator().manual_seed(21)
    return [[torch.randn(1, 12, 4096, generator=g), {}]], [[torch.randn(1, 12, 4096, generator=g), {}]]


def _stage(model, latent, pos, neg, start, last, add_noise, leftover, steps=6, seed=5):
    """What core KSamplerAdvanced runs for one stage (start_at_step .. end_at_step)."""
    noise = comfy.sample.prepare_noise(latent, seed) if add_noise else torch.zeros_like(latent)
    return comfy.sample.sample(model, noise, steps, 3.0, "euler", "simple", pos, neg, latent, disable_noise=not add_noise,
                               start_step=start, last_step=last, force_full_denoise=not leftover, disable_pbar=True,
                               seed=seed)


def test_wan22_two_expert_stages_with_moca_on_each(setup, tmp_path):
    """Wan 2.2 A14B: a high-noise and a low-noise expert (Wan 2.1 layout each) sampled by two KSamplerAdvanced
    stages, MoCA Apply on each with that expert's adapter (as the template does). With one model in both
    stages the split equals a single pass (MoCA keeps no state across calls); with two experts MoCA acts in
    each stage."""
    ref, high, adapter, identity = setup
    path = tmp_path / "tiny_wan22_low_noise.safetensors"
    low_ref = H.tiny_moca(seed=1)
    mm.save_wan_checkpoint(path, low_ref, prefix="model.diffusion_model.", overwrite=True)
    low = comfy.sd.load_diffusion_model(str(path))
    low_adapter = adapter_mod.build_adapter_patcher(low_ref.config, low_ref.adapter.state_dict(), "tiny-low")
    experts = {id(high): adapter, id(low): low_adapter}
    moca = lambda m: patch.apply_moca(m, experts[id(m)], identity, mm.MoCAOptions())  # noqa: E731
    pos, neg = _prompts()
    latent = torch.zeros(1, 16, 2, 4, 4)

    whole = _stage(moca(high), latent, pos, neg, 0, 6, True, False)
    split = _stage(moca(high), _stage(moca(high), latent, pos, neg, 0, 3, True, True), pos, neg, 3, 6, False, False)
    assert (split - whole).abs().max().item() < 1e-5 * whole.abs().max().item()

    first = _stage(moca(high), latent, pos, neg, 0, 3, True, True)
    both = _stage(moca(low), first, pos, neg, 3, 6, False, False)
    high_only = _stage(low, first, pos, neg, 3, 6, False, False)
    plain = _stage(low, _stage(high, latent, pos, neg, 0, 3, True, True), pos, neg, 3, 6, False, False)
    scale = plain.abs().max().item()
    assert torch.isfinite(both).all()
    assert (both - high_only).abs().max().item() / scale > 1e-2, "MoCA must act on the low-noise expert"
    assert (high_only - plain).abs().max().item() / scale > 1e-2, "MoCA must act on the high-noise expert"


def _context_windows(model, frames: int, overlap: int):
    """Core WanContextWindowsManual (lengths in video frames; 0.3.64's node has no freenoise input)."""
    import inspect
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode as Node
    kw = dict(context_length=frames, context_overlap=overlap, context_schedule="standard_static", context_stride=1,
              closed_loop=False, fuse_method="pyramid")
    if "freenoise" in inspect.signature(Node.execute).parameters:
        kw["freenoise"] = False
    return Node.execute(model, **kw).result[0]


def test_compat_context_windows_with_moca(setup):
    """ComfyUI's Wan context windows run the model per window of latent frames; MoCA then sees each window as
    the clip (its whole-clip expert pools the window). Windows that cover the clip change nothing; shorter
    windows stay finite and identity-conditioned in every window."""
    _, model, adapter, identity = setup
    pos, neg = _prompts()
    latent = torch.zeros(1, 16, 5, 4, 4)                                    # 17 video frames
    moca = patch.apply_moca(model, adapter, identity, mm.MoCAOptions())
    off = patch.apply_moca(model, adapter, identity, mm.MoCAOptions(strength=0.0))
    one_pass = _stage(moca, latent, pos, neg, 0, 6, True, False)
    covering = _stage(_context_windows(moca, 17, 4), latent, pos, neg, 0, 6, True, False)
    assert torch.equal(covering, one_pass)
    windowed = _stage(_context_windows(moca, 9, 4), latent, pos, neg, 0, 6, True, False)     # 3 latent frames each
    windowed_off = _stage(_context_windows(off, 9, 4), latent, pos, neg, 0, 6, True, False)
    scale = windowed_off.abs().max().item()
    assert torch.isfinite(windowed).all()
    assert (windowed - one_pass).abs().max().item() / scale > 1e-3, "the windows must really split the clip"
    per_frame = (windowed - windowed_off).abs().amax(dim=(0, 1, 3, 4)) / scale
    assert (per_frame > 1e-2).all(), f"identity must act in every latent frame, got {per_frame.tolist()}"


def test_moca_sampler_honours_comfyuis_cfg_patches(setup):
    """id_cfg 0 is exactly KSampler's CFG, and id_cfg 1 is KSampler's CFG with the identity on the prompt's pass
    (MoCA Apply 'marked conditioning only', the prompt marked): both with APG + RescaleCFG + CFG-Zero* applied."""
    _, model, adapter, identity = setup
    pos, neg = _prompts()
    no_hooks = _moca_sampler(patch.apply_moca(model, adapter, identity, mm.MoCAOptions()), pos, neg, 4.0, 0.0)
    got = _moca_sampler(patch.apply_moca(_cfg_hooks(model), adapter, identity, mm.MoCAOptions()), pos, neg, 4.0, 0.0)
    want = _ksampler(_cfg_hooks(model), pos, neg, 4.0)
    assert torch.equal(got, want), (got - want).abs().max()
    assert (got - no_hooks).abs().max() > 1e-3, "the CFG patches must change this run, or the test proves nothing"

    got = _moca_sampler(patch.apply_moca(_cfg_hooks(model), adapter, identity, mm.MoCAOptions()), pos, neg, 4.0, 1.0)
    marked = patch.apply_moca(_cfg_hooks(model), adapter, identity, mm.MoCAOptions(), apply_to="marked conditioning only")
    want = _ksampler(marked, patch.mark_conditioning(pos, logic.marker_for("with identity")), neg, 4.0)
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item()), (got - want).abs().max()


def test_moca_sampler_keeps_an_upstream_shift_unless_asked(setup):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    _, model, adapter, identity = setup
    pos, neg = _prompts()
    shifted = ModelSamplingSD3().patch(model, 3.0)[0]
    kept = _moca_sampler(patch.apply_moca(shifted, adapter, identity, mm.MoCAOptions()), pos, neg, 4.0, 0.0, shift=0.0)
    assert torch.equal(kept, _ksampler(shifted, pos, neg, 4.0))
    asked = _moca_sampler(patch.apply_moca(shifted, adapter, identity, mm.MoCAOptions()), pos, neg, 4.0, 0.0, shift=5.0)
    assert torch.equal(asked, _ksampler(ModelSamplingSD3().patch(model, 5.0)[0], pos, neg, 4.0))
    assert not torch.equal(kept, asked)


def test_moca_sampler_on_a_model_without_moca_is_ksampler(setup):
    """MoCA Apply bypassed: MoCA Sampler gets the base model and gives exactly KSampler's result."""
    _, model, _, _ = setup
    pos, neg = _prompts()
    assert torch.equal(_moca_sampler(model, pos, neg, 4.0, 2.0), _ksampler(model, pos, neg, 4.0))


@pytest.mark.parametrize("text_cfg, id_cfg, passes", [(4.0, 2.0, 3), (4.0, 1.0, 2), (1.0, 2.0, 2), (1.0, 1.0, 1),
                                                      (4.0, 0.0, 2)])
def test_moca_sampler_runs_only_the_passes_a_setting_needs(setup, text_cfg, id_cfg, passes):
    _, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions())
    seen = []

    def count(executor, x, *args, **kwargs):
        seen.append(x.shape[0])
        return executor(x, *args, **kwargs)

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "count", count)
    pos, neg = _prompts()
    _moca_sampler(patched, pos, neg, text_cfg, id_cfg)
    assert sum(seen) == 3 * passes, seen                 # 3 steps, batch 1: one row per pass and step


def test_a_block_patch_added_after_moca_apply_is_detected(setup):
    _, model, adapter, identity = setup
    patched = patch.apply_moca(model, adapter, identity, mm.MoCAOptions())
    x, sigma, ctx = inputs(7)

    def later_pack_patch(args, extra):            # another pack's node after MoCA Apply: replaces block 1's patch
        return extra["original_block"](args)

    replaced = patched.clone()
    replaced.set_model_patch_replace(later_pack_patch, "dit", "double_block", 1)
    with pytest.raises(ValueError, match=r"identity did not run on DiT block\(s\) 1: .*later_pack_patch.*after MoCA "
                                         r"Apply.*Connect that node before MoCA Apply"):
        denoise(replaced, x, sigma, ctx)

    previous = patched.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 1)]

    def chaining_patch(args, extra):               # a pack that calls what was there before keeps MoCA working
        return previous(args, extra)

    chained = patched.clone()
    chained.set_model_patch_replace(chaining_patch, "dit", "double_block", 1)
    assert torch.equal(denoise(chained, x, sigma, ctx), denoise(patched, x, sigma, ctx))
