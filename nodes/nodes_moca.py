"""Configure and attach MoCA: temporal pooling, expert mixing, MoCA Apply, identity conditioning, identity regions."""
from __future__ import annotations

from comfy_api.latest import io

from .logic import (APPLY_TO, IDENTITY_MODES, SCALE_NAMES, bind_region, build_options, check_choices, make_mixing,
                    make_pooling, marker_for, mixing_blocks, require_choices)
from .patch import apply_moca, mark_conditioning
from .types import MocaAdapter, MocaId, MocaMixing, MocaPooling

SCALE_HELP = {"1": "every latent frame (fine detail, per-frame likeness)",
              "2": "pairs of latent frames (short motion)",
              "4": "windows of 4 latent frames (about 16 video frames: gestures, head turns)",
              "T": "the whole clip (global identity consistency)"}


class MoCATemporalPooling(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        inputs = []
        for s in SCALE_NAMES:
            inputs.append(io.Boolean.Input(f"scale_{s}", default=True,
                                           tooltip=f"Enable the expert that pools over {SCALE_HELP[s]}."))
        return io.Schema(
            node_id="MoCATemporalPooling", display_name="MoCA Temporal Pooling", category="MoCA/settings",
            description="Hierarchical temporal pooling: which time scales the identity experts work at. Disabled "
                        "experts are dropped from the router's mix (how much each counts: MoCA Expert Mixing's "
                        "gains). Scales an adapter was not trained with are ignored while left on.",
            inputs=inputs,
            outputs=[MocaPooling.Output(display_name="moca_pooling", tooltip="For MoCA Apply's moca_pooling input.")])

    @classmethod
    def execute(cls, **kw):
        return io.NodeOutput(make_pooling({s: kw[f"scale_{s}"] for s in SCALE_NAMES}))


class MoCAExpertMixing(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        inputs = [
            io.Float.Input("identity_strength", default=1.0, min=0.0, max=4.0, step=0.05,
                           tooltip="Multiplies every MoCA residual. Lower it if the face dominates the prompt "
                                   "(frontal headshots); 0 turns MoCA off."),
            io.Float.Input("router_temperature", default=1.0, min=0.05, max=10.0, step=0.05,
                           tooltip="Softmax temperature of the expert router: above 1 mixes the scales more evenly, "
                                   "below 1 lets each token follow its favourite expert."),
            io.Int.Input("top_k", default=0, min=0, max=8,
                         tooltip="Keep only the k most likely experts per token (0 = all, the trained setting)."),
        ]
        for s in SCALE_NAMES:
            inputs.append(io.Float.Input(f"gain_{s}", default=1.0, min=0.0, max=4.0, step=0.05,
                                         tooltip=f"Output gain of the scale-{s} expert ({SCALE_HELP[s]})."))
        inputs += [
            io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                           tooltip="Where in the sampling schedule identity starts acting (0 = first step)."),
            io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                           tooltip="Where it stops (1 = last step). Ending early frees late steps for prompt details."),
            io.String.Input("blocks", default="all", optional=True,
                            tooltip="The DiT blocks identity acts in: 'all', or block numbers and ranges separated by "
                                    "commas ('0-14', '0-9, 20', '-10..-1' = the last ten; the first block is 0). "
                                    "Fewer blocks = a gentler identity; the others run as plain Wan."),
        ]
        return io.Schema(
            node_id="MoCAExpertMixing", display_name="MoCA Expert Mixing", category="MoCA/settings",
            description="Inference knobs of the mixture of cross-attention experts: identity strength, router "
                        "temperature and top-k, per-expert gains, and the part of the schedule where identity acts.",
            inputs=inputs,
            outputs=[MocaMixing.Output(display_name="moca_mixing", tooltip="For MoCA Apply's moca_mixing input.")])

    @classmethod
    def execute(cls, identity_strength, router_temperature, top_k, start_percent, end_percent, blocks="all", **kw):
        gains = {s: kw[f"gain_{s}"] for s in SCALE_NAMES}
        return io.NodeOutput(make_mixing(identity_strength, router_temperature, top_k, gains, start_percent, end_percent,
                                         blocks))


class MoCAApply(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, apply_to):
        return check_choices('MoCA Apply', apply_to=(apply_to, APPLY_TO))

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCAApply", display_name="MoCA Apply", category="MoCA",
            description="Attaches MoCA to a native Wan 2.1 T2V MODEL: a patched copy gets an identity cross-attention "
                        "residual after every DiT block (chained after any block patch already there). The input model "
                        "is not changed, so bypassing this node gives exactly the base model. Works with KSampler "
                        "(identity on every pass), MoCA Sampler, and DualCFGGuider with MoCA Identity Conditioning.",
            inputs=[io.Model.Input("model", tooltip="A Wan 2.1 text-to-video MODEL (Load Diffusion Model or MoCA-DiT Loader)."),
                    MocaAdapter.Input("moca_adapter", tooltip="From MoCA Adapter Loader or MoCA-DiT Loader."),
                    MocaId.Input("moca_id", tooltip="The identity (MoCA Encode Face or Load Identity), or several "
                                                    "identities each bound to a region (MoCA Identity Region)."),
                    io.Combo.Input("apply_to", options=list(APPLY_TO), default="all",
                                   tooltip="all: every model pass gets the identity (KSampler: positive and negative "
                                           "alike). marked conditioning only: only conditionings marked 'with identity' "
                                           "by MoCA Identity Conditioning (for separate identity guidance)."),
                    MocaPooling.Input("moca_pooling", optional=True,
                                      tooltip="Optional MoCA Temporal Pooling settings (default: every scale, weight 1)."),
                    MocaMixing.Input("moca_mixing", optional=True,
                                     tooltip="Optional MoCA Expert Mixing settings (default: strength 1, whole schedule).")],
            outputs=[io.Model.Output(display_name="model", tooltip="The MoCA-patched model (a clone).")])

    @classmethod
    def execute(cls, model, moca_adapter, moca_id, apply_to, moca_pooling=None, moca_mixing=None):
        options, start, end = build_options(moca_adapter.model.config, moca_pooling, moca_mixing)
        blocks = mixing_blocks(moca_mixing, moca_adapter.model.config.num_layers)
        return io.NodeOutput(apply_moca(model, moca_adapter, moca_id, options, start, end, apply_to, blocks))


class MoCAIdentityConditioning(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, identity):
        return check_choices('MoCA Identity Conditioning', identity=(identity, IDENTITY_MODES))

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCAIdentityConditioning", display_name="MoCA Identity Conditioning", category="MoCA/conditioning",
            description="Marks a conditioning so the MoCA model uses the identity on its passes (or explicitly not). "
                        "For separate text and identity guidance with DualCFGGuider: cond1 = prompt 'with identity', "
                        "cond2 = the same prompt 'without identity', negative = negative prompt; MoCA Apply with "
                        "apply_to 'marked conditioning only'.",
            inputs=[io.Conditioning.Input("conditioning", tooltip="Text conditioning (CLIP Text Encode / MoCA Load Text Embeds)."),
                    io.Combo.Input("identity", options=list(IDENTITY_MODES), default="with identity",
                                   tooltip="with identity: passes with this conditioning get the identity. "
                                           "without identity: they never do, whatever MoCA Apply's apply_to says."),
                    MocaId.Input("moca_id", optional=True,
                                 tooltip="Optional: a different identity for this conditioning (default: MoCA Apply's).")],
            outputs=[io.Conditioning.Output(display_name="conditioning", tooltip="The marked conditioning.")])

    @classmethod
    def execute(cls, conditioning, identity, moca_id=None):
        return io.NodeOutput(mark_conditioning(conditioning, marker_for(identity, moca_id)))


REGION_OVERLAP = ("largest", "blend")
REGION_BINDING = ("regions", "concat (naive baseline)")


class MoCAIdentityRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCAIdentityRegion", display_name="MoCA Identity Region", category="MoCA",
            description="Binds an identity to a region of the video, for several people in one video (up to 4): chain "
                        "one node per person (previous -> next) and connect the last one to MoCA Apply's moca_id. Video "
                        "tokens inside a region attend only to that region's identity; outside every region there is "
                        "no identity at all.",
            inputs=[MocaId.Input("moca_id", tooltip="This person's identity (MoCA Encode Face or Load Identity)."),
                    io.Mask.Input("mask", optional=True,
                                  tooltip="Where this person is: one mask, or one per video frame (white = this person; "
                                          "any size, scaled to the latent grid). Without a mask, people are bound left "
                                          "to right in chain order: the frame is split into equal vertical strips."),
                    MocaId.Input("previous", optional=True,
                                 tooltip="The identities bound so far (the previous MoCA Identity Region)."),
                    io.Combo.Input("overlap", options=list(REGION_OVERLAP), default="largest",
                                   tooltip="Where regions overlap: largest = the person with the larger mask value takes "
                                           "the token; blend = the identities mix by their mask values. The last node "
                                           "of a chain decides."),
                    io.Combo.Input("binding", options=list(REGION_BINDING), default="regions",
                                   tooltip="regions: each person gets its own identity. concat: every identity's tokens "
                                           "together everywhere, no regions (the naive approach, for comparison). The "
                                           "last node of a chain decides.")],
            outputs=[MocaId.Output(display_name="moca_id", tooltip="The identities bound so far (for MoCA Apply or the "
                                                                   "next MoCA Identity Region).")])

    @classmethod
    def execute(cls, moca_id, overlap, binding, mask=None, previous=None):
        require_choices('MoCA Identity Region', overlap=(overlap, REGION_OVERLAP), binding=(binding, REGION_BINDING))
        bound = bind_region(previous, moca_id, mask, overlap, "concat" if binding.startswith("concat") else "regions")
        return io.NodeOutput(bound, ui={"text": (bound.summary(),)})
