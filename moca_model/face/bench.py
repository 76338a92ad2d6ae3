"""Face encoding benchmark: encode time for 1, 4 and 16 references (and likeness over video frames).

    python -m moca_model bench-face                      # tiny test models, CPU, no weights needed
    python -m moca_model bench-face --models-root ComfyUI/models/insightface --provider cuda

Without ``--models-root`` it builds the tiny insightface-contract pack (needs the ``onnx`` package), so the
numbers measure our pipeline (loading, letterbox, decoding, kornia alignment, I/O), not the real networks.
With a real pack they are what a ComfyUI user gets. The provider that actually ran is printed.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time


def _reference_image(path):
    if path:
        from .images import load_images

        return load_images(path)[0].uint8()
    try:
        from skimage import data
    except ImportError:
        return None
    return data.astronaut()


def run(models_root=None, pack="antelopev2", provider="auto", backend="auto", refs=(1, 4, 16), repeat=3,
        det_size=640, image=None, frames=16, out=print) -> dict:
    """Run the benchmark, print a table through ``out``, return the measurements."""
    import numpy as np
    import torch

    from .analyzer import FaceAnalyzer
    from .likeness import likeness_scores

    img = _reference_image(image)
    tmp = None
    if models_root is None:
        from .tiny_models import ASTRONAUT_FACE, ASTRONAUT_SIZE, make_tiny_pack

        tmp = tempfile.TemporaryDirectory(prefix="moca-face-bench-")
        models_root = tmp.name
        if img is None:  # any non-black picture works with the tiny detector
            img = (np.mgrid[0:512, 0:512, 0:3].sum(0) % 256).astype(np.uint8)
        faces = [ASTRONAUT_FACE] if img.shape[:2] == ASTRONAUT_SIZE[::-1] else [
            _scaled_face(ASTRONAUT_FACE, ASTRONAUT_SIZE, img.shape[1::-1])]
        make_tiny_pack(models_root, pack, faces=faces, image_size=img.shape[1::-1])
        label = "tiny test models (insightface contracts, random weights)"
    else:
        label = f"{pack} from {models_root}"
        if img is None:
            raise SystemExit("A real pack needs a real face photo: pass --image PATH (or install scikit-image).")
    try:
        t0 = time.perf_counter()
        an = FaceAnalyzer.load(models_root, pack=pack, provider=provider, det_size=det_size, backend=backend)
        t_load = time.perf_counter() - t0
        rng = np.random.default_rng(0)

        def variants(n):  # slightly different copies so nothing can be cached
            return [np.clip(img.astype(np.int16) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
                    for _ in range(n)]

        t0 = time.perf_counter()
        ident = an.encode(variants(1))
        t_first = time.perf_counter() - t0
        rows = []
        for r in refs:
            totals, parts = [], []
            for _ in range(repeat):
                batch = variants(r)
                t0 = time.perf_counter()
                an.encode(batch)
                totals.append(time.perf_counter() - t0)
                parts.append(dict(an.last_timing))
            med = statistics.median(totals)
            part = {k: statistics.median(p[k] for p in parts) for k in ("load", "detect", "align", "embed")}
            rows.append({"refs": r, "encode_s": med, "per_ref_ms": 1000 * med / r, **part})
        like = None
        if frames:
            clip = torch.from_numpy(np.stack(variants(frames)).astype(np.float32) / 255.0)
            t0 = time.perf_counter()
            rep = likeness_scores(an, clip, ident)
            like = {"frames": frames, "seconds": time.perf_counter() - t0, "summary": rep.summary()}
    finally:
        if tmp is not None:
            tmp.cleanup()
    out(f"MoCA face benchmark - {label}")
    out(f"host: {platform.machine()} {platform.system()}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), image {img.shape[1]}x{img.shape[0]}, det_size {det_size}, repeat {repeat} (median)")
    out(an.report)
    out(f"load {t_load:.3f} s, first encode (warm-up) {t_first:.3f} s")
    out("| refs | encode s | ms / ref | load ms | detect ms | align ms | embed ms |")
    out("|-----:|---------:|---------:|--------:|----------:|---------:|---------:|")
    for row in rows:
        out(f"| {row['refs']:>4} | {row['encode_s']:8.3f} | {row['per_ref_ms']:8.1f} | {1000 * row['load']:7.1f} | "
            f"{1000 * row['detect']:9.1f} | {1000 * row['align']:8.1f} | {1000 * row['embed']:8.1f} |")
    if like:
        out(f"likeness over {like['frames']} frames: {like['seconds']:.3f} s "
            f"({1000 * like['seconds'] / like['frames']:.1f} ms/frame)")
    return {"report": an.report, "load_s": t_load, "first_s": t_first, "rows": rows, "likeness": like,
            "det_provider": an.backend.det_provider, "rec_provider": an.backend.rec_provider}


def _scaled_face(face, src_size, dst_size):
    from .tiny_models import TinyFace

    sx, sy = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    b = face.box
    return TinyFace((b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), tuple((x * sx, y * sy) for x, y in face.kps),
                    face.score)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m moca_model bench-face", description=__doc__.split("\n\n")[0])
    p.add_argument("--models-root", help="insightface root (ComfyUI/models/insightface); default: tiny test models")
    p.add_argument("--pack", default="antelopev2")
    p.add_argument("--provider", default="auto", help="auto, cuda, cpu, directml, coreml, rocm, openvino, tensorrt")
    p.add_argument("--backend", default="auto", choices=("auto", "insightface", "onnxruntime"))
    p.add_argument("--refs", default="1,4,16", help="comma-separated reference counts")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument("--image", help="reference photo (default: scikit-image's astronaut)")
    p.add_argument("--frames", type=int, default=16, help="frames for the likeness timing (0 = skip)")
    a = p.parse_args(argv)
    refs = tuple(int(x) for x in a.refs.split(",") if x.strip())
    run(a.models_root, a.pack, a.provider, a.backend, refs, a.repeat, a.det_size, a.image, a.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
