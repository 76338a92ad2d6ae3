"""Custom socket types. ComfyUI checks links by these names, so a wrong link is refused at validation."""
from comfy_api.latest import io

MocaAdapter = io.Custom("MOCA_ADAPTER")
MocaId = io.Custom("MOCA_ID")
MocaFaceAnalyzer = io.Custom("MOCA_FACE_ANALYZER")
MocaPooling = io.Custom("MOCA_POOLING")
MocaMixing = io.Custom("MOCA_MIXING")
