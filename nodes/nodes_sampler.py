"""MoCA Sampler: the common graph in one node, with separate text and identity guidance

    cond = v_text + id_cfg (v_text+id - v_text)         (identity guidance, folded into the prompt's prediction)
    v    = v_neg + text_cfg (cond - v_neg)              (text CFG, through ComfyUI's own CFG path)

on ComfyUI's own sampling (comfy.samplers: its samplers and schedulers, pre-CFG / CFG / post-CFG patches such as
APG, RescaleCFG and CFG-Zero*, progress bar, latent previews and interrupt handling). id_cfg = 0 is exactly
KSampler's CFG; id_cfg = 1 is KSampler's CFG with the identity on the prompt's pass (two passes); text_cfg = 1
drops the negative pass. This is DualCFGGuider's "nested" style with cfg_conds = id_cfg and
cfg_cond2_negative = text_cfg, except that ComfyUI's CFG hooks act on the text CFG, as they do in KSampler."""
from __future__ import annotations

import logging
import math

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from .logic import OFF, latent_frames, marker_for, require_choices
from .patch import mark_conditioning, moca_states
from .types import MocaId


class MoCAGuider(comfy.samplers.CFGGuider):
    """Passes: negative, text (identity off) and text_id (identity on); the ones a setting does not need are
    never run. The model's predictions are x0 and every combination's coefficients sum to 1, so combining x0
    equals combining velocities."""

    def set_cfg(self, text_cfg: float, id_cfg: float):
        self.text_cfg, self.id_cfg = float(text_cfg), float(id_cfg)

    def set_conds(self, text_id, text, negative):
        conds = {"text": text, "negative": negative}
        if text_id is not None:
            conds["text_id"] = text_id
        self.inner_set_conds(conds)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        neg, text, text_id = (self.conds.get(k) for k in ("negative", "text", "text_id"))
        s_t, s_i = self.text_cfg, (self.id_cfg if text_id is not None else 0.0)
        if s_i == 0.0:                     # no identity: exactly KSampler's CFG
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, neg, text, s_t, model_options, seed)
        if math.isclose(s_i, 1.0):         # identity without extra guidance: KSampler's CFG on the identity pass
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, neg, text_id, s_t, model_options,
                                                    seed)
        skip_neg = math.isclose(s_t, 1.0) and not model_options.get("disable_cfg1_optimization", False)
        uncond = None if skip_neg else neg
        out = comfy.samplers.calc_cond_batch(self.inner_model, [text_id, uncond, text], x, timestep, model_options)
        outs = [out[2] + s_i * (out[0] - out[2]), out[1]]                   # [cond (identity-guided), uncond]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            outs = fn({"conds": [text_id, uncond], "conds_out": outs, "cond_scale": s_t, "timestep": timestep,
                       "input": x, "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        return comfy.samplers.cfg_function(self.inner_model, outs[0], outs[1], s_t, x, timestep,
                                           model_options=model_options, cond=text_id, uncond=uncond)


def shift_model(model, shift: float):
    """shift > 0: ModelSamplingSD3(shift) on a clone (saying so when it replaces an upstream model sampling);
    0: the model's own sampling (Wan's default, or what an upstream ModelSamplingSD3 set) is kept."""
    if not shift > 0:
        return model
    if "model_sampling" in getattr(model, "object_patches", {}):
        current = getattr(model.get_model_object("model_sampling"), "shift", None)
        if current is not None and not math.isclose(float(current), float(shift)):
            logging.warning("MoCA Sampler: shift %s replaces the upstream model sampling (shift %s); set shift to 0 "
                            "to keep the upstream one", shift, current)
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    return ModelSamplingSD3().patch(model, shift)[0]


class MoCASampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCASampler", display_name="MoCA Sampler", category="MoCA/sampling",
            description="Text + identity -> video latent in one node: makes the empty Wan latent, and samples with "
                        "separate text and identity guidance (v = v_neg + text_cfg (v_text - v_neg) + id_cfg "
                        "(v_text+id - v_text)) on ComfyUI's samplers, with progress bar, previews and interrupt.",
            inputs=[io.Model.Input("model", tooltip="The model from MoCA Apply."),
                    io.Conditioning.Input("positive", tooltip="The prompt (CLIP Text Encode with umT5, or MoCA Load Text Embeds)."),
                    io.Conditioning.Input("negative", tooltip="The negative prompt."),
                    io.Int.Input("width", default=832, min=16, max=4096, step=16, tooltip="Video width in pixels."),
                    io.Int.Input("height", default=480, min=16, max=4096, step=16, tooltip="Video height in pixels."),
                    io.Int.Input("frames", default=33, min=1, max=1025, step=4,
                                 tooltip="Number of video frames (4n+1: 33, 49, 81 ...)."),
                    io.Int.Input("steps", default=30, min=1, max=200, tooltip="Sampling steps."),
                    io.Float.Input("text_cfg", default=5.0, min=0.0, max=30.0, step=0.1, round=0.01,
                                   tooltip="Text guidance scale, as KSampler's cfg (1 = no negative pass)."),
                    io.Float.Input("id_cfg", default=2.0, min=0.0, max=30.0, step=0.1, round=0.01,
                                   tooltip="Identity guidance scale: 0 = no identity (exactly KSampler), 1 = identity "
                                           "on the prompt's pass without extra guidance (two passes), >1 = pushes "
                                           "likeness (three passes)."),
                    io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.01,
                                   tooltip="Timestep shift of Wan's flow schedule, as ModelSamplingSD3. 0 = keep the "
                                           "model's own (Wan T2V: 8, or what an upstream ModelSamplingSD3 set); a "
                                           "value > 0 replaces it."),
                    io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                                 tooltip="Noise seed."),
                    io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="uni_pc",
                                   tooltip="ComfyUI sampler."),
                    io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                                   tooltip="ComfyUI scheduler ('simple' as in the Wan templates)."),
                    io.Int.Input("batch_size", default=1, min=1, max=16, tooltip="Videos per run."),
                    MocaId.Input("moca_id", optional=True,
                                 tooltip="Optional: the identity to use (default: the one given to MoCA Apply).")],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The video latent, for VAE Decode.")])

    @classmethod
    def execute(cls, model, positive, negative, width, height, frames, steps, text_cfg, id_cfg, shift, seed,
                sampler_name, scheduler, batch_size, moca_id=None):
        require_choices('MoCA Sampler', sampler_name=(sampler_name, comfy.samplers.KSampler.SAMPLERS),
                        scheduler=(scheduler, comfy.samplers.KSampler.SCHEDULERS))
        with_moca = bool(moca_states(model))
        if not with_moca:
            logging.warning("MoCA Sampler: input 'model' has no MoCA attached (MoCA Apply bypassed or not connected): "
                            "sampling with text guidance only, exactly as KSampler with cfg %s", text_cfg)
        model = shift_model(model, shift)
        latent = torch.zeros([batch_size, 16, latent_frames(frames), height // 8, width // 8],
                             device=comfy.model_management.intermediate_device())
        noise = comfy.sample.prepare_noise(latent, seed)

        guider = MoCAGuider(model)
        if with_moca:
            guider.set_conds(mark_conditioning(positive, marker_for("with identity", moca_id)),
                             mark_conditioning(positive, OFF), mark_conditioning(negative, OFF))
        else:
            guider.set_conds(None, positive, negative)
        guider.set_cfg(text_cfg, id_cfg)

        sampler = comfy.samplers.sampler_object(sampler_name)
        ms = model.get_model_object("model_sampling")
        discard = sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, steps + 1 if discard else steps).cpu()
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
        samples = guider.sample(noise, latent, sampler, sigmas, callback=callback,
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        return io.NodeOutput({"samples": samples.to(comfy.model_management.intermediate_device())})
