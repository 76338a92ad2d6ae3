"""Face -> identity: encode reference photos, save / load identity files, score likeness of video frames."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io, ui

import comfy.model_management
import comfy.utils
import folder_paths

from ..moca_model.identity import MoCAIdentity
from ..moca_model.latents import normalize_latent
from . import paths
from .logic import check_choices, likeness_plot, require_choices, safe_prefix, single_identity
from .types import MocaFaceAnalyzer, MocaId

SELECT = ["largest", "left_to_right", "index"]
NO_FACE = ["error", "skip"]
FUSION = ["mean", "concat"]
EXTRA_IMAGES = ("image_2", "image_3", "image_4")


def _frames(name, images):
    if images is None:
        return []
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"input '{name}': expected an IMAGE batch [N, H, W, C], got shape {list(images.shape)}")
    return [(f"input '{name}' frame {i} ({images.shape[2]}x{images.shape[1]})", images[i]) for i in range(images.shape[0])]


class MoCAEncodeFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCAEncodeFace", display_name="MoCA Encode Face", category="MoCA/face",
            description="Finds the face in each reference photo, aligns it, and encodes it for MoCA: the ArcFace "
                        "embedding (global identity tokens) and the Wan VAE latent of the aligned face crop (local "
                        "tokens). Several references are fused by averaging or concatenating their tokens.",
            inputs=[io.Image.Input("image", tooltip="One or more reference photos (an IMAGE batch). Every frame is a reference."),
                    MocaFaceAnalyzer.Input("face_analyzer", tooltip="From MoCA Face Analyzer Loader."),
                    io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (the same one that decodes the video); it encodes the "
                                                "aligned face crop into the latent the local identity tokens come from."),
                    io.Combo.Input("face_select", options=SELECT, default="largest",
                                   tooltip="Which face of a photo with several: the largest, the n-th from the left, or the "
                                           "n-th in detector order (n = face_index)."),
                    io.Int.Input("face_index", default=0, min=0, max=64,
                                 tooltip="0 = first face in the order face_select gives (largest first, or leftmost)."),
                    io.Combo.Input("on_no_face", options=NO_FACE, default="error",
                                   tooltip="error: stop and name the photo without a face. skip: leave it out and say so "
                                           "in the info output (if every photo is skipped it is still an error)."),
                    io.Combo.Input("fusion", options=FUSION, default="mean",
                                   tooltip="How several references combine: mean averages their identity tokens; concat "
                                           "keeps every reference's tokens (more detail, longer attention)."),
                    io.Int.Input("crop_size", default=256, min=64, max=1024, step=32,
                                 tooltip="Size in pixels of the aligned face crop that the VAE encodes (256 matches training)."),
                    io.Image.Input("image_2", optional=True, tooltip="More reference photos (any size)."),
                    io.Image.Input("image_3", optional=True, tooltip="More reference photos (any size)."),
                    io.Image.Input("image_4", optional=True, tooltip="More reference photos (any size).")],
            outputs=[MocaId.Output(display_name="moca_id", tooltip="The identity, for MoCA Apply / Identity Conditioning / Save Identity."),
                     io.Image.Output(display_name="aligned_faces", tooltip="The aligned face crops that were encoded (check them!)."),
                     io.String.Output(display_name="info", tooltip="What was found, skipped and used, and which provider ran.")])

    @classmethod
    def execute(cls, image, face_analyzer, vae, face_select, face_index, on_no_face, fusion, crop_size,
                image_2=None, image_3=None, image_4=None):
        from ..moca_model.face import FaceNotFoundError
        require_choices('MoCA Encode Face', face_select=(face_select, SELECT), on_no_face=(on_no_face, NO_FACE),
                        fusion=(fusion, FUSION))
        sources = _frames("image", image)
        for name, extra in zip(EXTRA_IMAGES, (image_2, image_3, image_4)):
            sources += _frames(name, extra)
        pbar = comfy.utils.ProgressBar(len(sources) * 2)
        embeddings, crops, used, skipped = [], [], [], []
        for label, frame in sources:
            comfy.model_management.throw_exception_if_processing_interrupted()
            try:
                face = face_analyzer.encode(frame[None], select=face_select, index=face_index, on_no_face="error",
                                            fusion="separate", crop_size=crop_size)
            except FaceNotFoundError as e:
                if on_no_face == "skip":
                    skipped.append(label)
                    pbar.update(2)
                    continue
                raise FaceNotFoundError(f"MoCA Encode Face: no usable face in {label}: "
                                        f"{getattr(e, 'detail', str(e))}. Use a larger, frontal, well-lit photo of the "
                                        "face (the face about a third of the picture or more), or set on_no_face to "
                                        "'skip' to leave this photo out.") from e
            if not torch.isfinite(face.embeddings).all():
                raise ValueError(f"input 'face_analyzer': the ArcFace model returned NaN or infinity for {label}; its "
                                 f"recogniser file is broken ({face_analyzer.report}). Re-download the pack.")
            embeddings.append(face.embeddings)
            crops.append(face.crops)
            used.append(label)
            pbar.update(1)
        if not used:
            raise FaceNotFoundError("MoCA Encode Face: no face found in any reference (skipped: "
                                    + "; ".join(skipped) + "). Connect photos where the face is clearly visible.")
        crops = torch.cat(crops).float().clamp(0, 1)                                        # [R, S, S, 3]
        latents = []
        for i in range(crops.shape[0]):
            comfy.model_management.throw_exception_if_processing_interrupted()
            z = vae.encode(crops[i:i + 1, :, :, :3])                                        # [1, 16, 1, h, w] raw
            if z.ndim != 5 or z.shape[1] != 16:
                raise ValueError(f"input 'vae': expected the Wan 2.1 VAE (16 latent channels, video latents), but it "
                                 f"returned a latent of shape {list(z.shape)}. Load wan_2.1_vae.safetensors.")
            if not torch.isfinite(z).all():
                raise ValueError(f"input 'vae': the VAE returned NaN or infinity for the face crop of {used[i]}; the "
                                 "VAE file is broken or not the Wan 2.1 VAE. Load wan_2.1_vae.safetensors.")
            latents.append(normalize_latent(z.float().cpu()))
            pbar.update(1)
        identity = MoCAIdentity(torch.cat(embeddings), torch.cat(latents), fusion, crops,
                                {"used": used, "skipped": skipped, "analyzer": face_analyzer.report},
                                recognizer=face_analyzer.recognizer)
        info = [f"MoCA identity: {identity.summary()}", f"analyzer: {face_analyzer.report}",
                "used: " + "; ".join(used)]
        if skipped:
            info.append("skipped (no face): " + "; ".join(skipped))
        return io.NodeOutput(identity, crops, "\n".join(info))


class MoCASaveIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCASaveIdentity", display_name="MoCA Save Identity", category="MoCA/face",
            description="Saves an identity (ArcFace embeddings + face-crop latents + crops) as a small .safetensors file "
                        "in output/moca_identities, so later runs need neither the face detector nor the VAE. "
                        "Never overwrites: every save gets a new numbered name.",
            inputs=[MocaId.Input("moca_id", tooltip="The identity from MoCA Encode Face (or Load Identity)."),
                    io.String.Input("filename_prefix", default="identity",
                                    tooltip="File name prefix under output/moca_identities/ (subfolders with '/').")],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written.")],
            is_output_node=True)

    @classmethod
    def execute(cls, moca_id, filename_prefix):
        moca_id = single_identity(moca_id, "MoCA Save Identity")
        path = paths.output_path("moca_identities", safe_prefix(filename_prefix, "identity"))
        moca_id.save(path, overwrite=False)
        return io.NodeOutput(path, ui=ui.PreviewText(f"saved {os.path.basename(path)}: {moca_id.summary()}"))


class MoCALoadIdentity(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, identity_file):
        return check_choices('MoCA Load Identity', identity_file=(identity_file, paths.files("moca_identities")))

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCALoadIdentity", display_name="MoCA Load Identity", category="MoCA/face",
            description="Loads an identity file written by MoCA Save Identity (from models/moca_identities or "
                        "output/moca_identities).",
            inputs=[io.Combo.Input("identity_file", options=paths.files("moca_identities"),
                                   tooltip="An identity .safetensors file. Press R to refresh after saving a new one.")],
            outputs=[MocaId.Output(display_name="moca_id", tooltip="The identity."),
                     io.Image.Output(display_name="aligned_faces", tooltip="The face crops stored in the file."),
                     io.String.Output(display_name="info", tooltip="What the file holds.")])

    @classmethod
    def execute(cls, identity_file):
        path = folder_paths.get_full_path("moca_identities", identity_file)
        if path is None:
            raise FileNotFoundError(f"input 'identity_file': {identity_file!r} is not in "
                                    f"{folder_paths.get_folder_paths('moca_identities')}; save it with MoCA Save Identity.")
        identity = MoCAIdentity.load(path)
        crops = identity.crops if identity.crops is not None else torch.zeros(1, 64, 64, 3)
        return io.NodeOutput(identity, crops, f"{identity_file}: {identity.summary()}")

    @classmethod
    def fingerprint_inputs(cls, identity_file):
        path = folder_paths.get_full_path("moca_identities", identity_file)
        return os.path.getmtime(path) if path else float("nan")


class MoCAIdentityScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoCAIdentityScore", display_name="MoCA Identity Score", category="MoCA/face",
            description="Likeness QA: the ArcFace cosine similarity between every video frame's face and the reference "
                        "identity, with a summary (mean, min, 10th percentile, frames without a face) and a plot. With "
                        "several identities (MoCA Identity Region) it scores each person's face against its own reference "
                        "and the others': own / other likeness per person, swap rate, blend rate, one plot row per person.",
            inputs=[io.Image.Input("frames", tooltip="Decoded video frames (VAE Decode output)."),
                    MocaId.Input("moca_id", tooltip="The reference identity."),
                    MocaFaceAnalyzer.Input("face_analyzer", tooltip="From MoCA Face Analyzer Loader."),
                    io.Float.Input("threshold", default=0.4, min=-1.0, max=1.0, step=0.01,
                                   tooltip="A line on the plot; frames below it are listed in the summary (about 0.4 "
                                           "is 'same person' for ArcFace).")],
            outputs=[io.Float.Output(display_name="mean_likeness", tooltip="Mean over the frames with a face (0 if none)."),
                     io.String.Output(display_name="per_frame", tooltip="Per-frame likeness, comma separated ('none' = no face)."),
                     io.String.Output(display_name="summary", tooltip="Mean / min / p10 and frames without a face."),
                     io.Image.Output(display_name="plot", tooltip="Likeness over frames.")],
            is_output_node=True)

    @classmethod
    def execute(cls, frames, moca_id, face_analyzer, threshold):
        from ..moca_model.face import likeness_scores
        from ..moca_model.regions import IdentityBindings
        if isinstance(moca_id, IdentityBindings):
            return cls._several(frames, moca_id, face_analyzer, threshold)
        ref = moca_id.mean_embedding()
        if ref is None:
            raise ValueError("input 'moca_id': this identity has no ArcFace embedding, so likeness cannot be measured; "
                             "encode it with MoCA Encode Face.")
        if frames.ndim != 4:
            raise ValueError(f"input 'frames': expected an IMAGE batch [N, H, W, C], got {list(frames.shape)}")
        report = likeness_scores(face_analyzer, frames, moca_id)
        per_frame = ", ".join("none" if s is None else f"{s:.3f}" for s in report.scores)
        low = [i for i, s in enumerate(report.scores) if s is not None and s < threshold]
        summary = report.summary() + (f"; below {threshold:.2f} in {len(low)} frame(s): "
                                      f"{', '.join(map(str, low[:20]))}" if low else f"; no frame below {threshold:.2f}")
        plot = likeness_plot(report.scores, threshold=threshold)
        mean = float(report.mean) if report.mean is not None else 0.0
        shown = {**ui.PreviewImage(plot, cls=cls).as_dict(), "text": (summary, per_frame)}
        return io.NodeOutput(mean, per_frame, summary, plot, ui=shown)

    @classmethod
    def _several(cls, frames, bound, face_analyzer, threshold):
        """Several people (MoCA Identity Region): each person's face (found by its mask, else left to right) against
        its own reference and the others'; swap and blend rates."""
        from ..moca_model.face.multi_likeness import face_similarities, multi_scores, summary
        for k, one in enumerate(bound.identities, 1):
            if one.mean_embedding() is None:
                raise ValueError(f"input 'moca_id': identity region {k} has no ArcFace embedding, so likeness cannot be "
                                 "measured; encode it with MoCA Encode Face.")
        if frames.ndim != 4:
            raise ValueError(f"input 'frames': expected an IMAGE batch [N, H, W, C], got {list(frames.shape)}")
        if len(bound.identities) < 2:
            raise ValueError("input 'moca_id': one bound identity; connect the identity itself to score one person")
        sims = face_similarities(face_analyzer, frames, bound.identities, bound.masks)      # [F, P, P]
        scores = multi_scores(sims, threshold)
        text = summary(scores)
        per_frame = "; ".join(", ".join("none" if v != v else f"{v:.3f}" for v in sims[f].diagonal().tolist())
                              for f in range(sims.shape[0]))
        plot = torch.cat([likeness_plot(sims[:, k, k].tolist(), threshold=threshold)
                          for k in range(sims.shape[1])], dim=1)                             # one row per person
        own = [v for v in scores["own"] if v is not None]
        mean = float(sum(own) / len(own)) if own else 0.0
        shown = {**ui.PreviewImage(plot, cls=cls).as_dict(), "text": (text, per_frame)}
        return io.NodeOutput(mean, per_frame, text, plot, ui=shown)
