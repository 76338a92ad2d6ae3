"""The ComfyUI layer of MoCA: V3 nodes that translate ComfyUI types into `moca_model` calls.

Importing this package is cheap: nothing from ComfyUI, onnxruntime or kornia is imported until ComfyUI asks
for the node list through `comfy_entrypoint`, and no GPU is touched until a node runs.
"""


async def comfy_entrypoint():
    from .extension import MoCAExtension
    return MoCAExtension()


__all__ = ["comfy_entrypoint"]
