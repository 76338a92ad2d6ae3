"""MoCA for ComfyUI: identity-preserving text-to-video (Mixture of Cross-Attention on Wan 2.1).

ComfyUI imports this file when it loads the pack. It only registers the V3 node extension;
heavy optional dependencies (onnxruntime, insightface, kornia) are imported when a node runs,
and nothing here touches a GPU.
"""
try:
    from .nodes import comfy_entrypoint  # noqa: F401  (ComfyUI's V3 entry point)
except ImportError as e:  # imported outside ComfyUI (e.g. by a tool that walks the tree, or by
    # pytest, which imports this file as a top-level module with no parent package)
    if __package__ and "comfy" not in str(e):
        raise

__all__ = ["comfy_entrypoint"]
