"""MoCA Sampler: the common graph in one node, with separate text and identity guidance

    v = v_uncond + s_text (v_text - v_uncond) + s_id (v_text+id - v_text)

on ComfyUI's own sampling (comfy.samplers: its samplers and schedulers, progress bar, latent previews and
interrupt handling)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from .logic import OFF, check_choices, guidance_coefficients, latent_frames, marker_for
from .patch import mark_conditioning, moca_states
from .types import MocaId


class MoCAGuider(comfy.samplers.CFGGuider):
    """Three passes (negative, text, text+identity), combined with the text and identity scales. Passes
    whose coefficient is zero are skipped; the model's predictions are x0, and the coefficients sum to 1,
    so combining x0 equals combining velocities."""

    def set_cfg(self, text_cfg: float, id_cfg: float):
        self.text_cfg, self.id_cfg = float(text_cfg), float(id_cfg)

    def set_conds(self, text_id, text, negative):
        self.inner_set_conds({"text_id": text_id, "text": text, "negative": negative})

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        coefs = guidance_coefficients(self.text_cfg, self.id_cfg)
        names = list(coefs)
        outs = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds.get(n) for n in names], x, timestep,
                                              model_options)
        result = None
        for n, out in zip(names, outs):
            result = coefs[n] * out if result is None else result + coefs[n] * out
        return result


def shift_model(model, shift: float):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    return ModelSamplingSD3().patch(model, shift)[0]


class MoCASampler(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, sampler_name, scheduler):
        return check_choices('MoCA Sampler',
                             sampler_name=(sampler_name, comfy.samplers.KSampler.SAMPLERS),
                             scheduler=(scheduler, comfy.samplers.KSampler.SCHEDULERS))

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
                                   tooltip="Text guidance scale (1 = no negative pass)."),
                    io.Float.Input("id_cfg", default=2.0, min=0.0, max=30.0, step=0.1, round=0.01,
                                   tooltip="Identity guidance scale: 0 = no identity, 1 = identity without extra "
                                           "guidance (two passes), >1 = pushes likeness (three passes)."),
                    io.Float.Input("shift", default=8.0, min=0.0, max=100.0, step=0.01,
                                   tooltip="Timestep shift of Wan's flow schedule (8 for T2V; as ModelSamplingSD3)."),
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
        if not moca_states(model):
            raise ValueError("MoCA Sampler: input 'model' has no MoCA attached. Connect the MODEL output of "
                             "MoCA Apply (or use KSampler for a model without MoCA).")
        model = shift_model(model, shift)
        latent = torch.zeros([batch_size, 16, latent_frames(frames), height // 8, width // 8],
                             device=comfy.model_management.intermediate_device())
        noise = comfy.sample.prepare_noise(latent, seed)

        guider = MoCAGuider(model)
        guider.set_conds(mark_conditioning(positive, marker_for("with identity", moca_id)),
                         mark_conditioning(positive, OFF), mark_conditioning(negative, OFF))
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
