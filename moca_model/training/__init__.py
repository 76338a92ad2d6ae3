"""The standalone MoCA trainer (pure PyTorch; `python train_moca.py`): cache shards, flow matching + LVPL,
DDP / FSDP2 via torchrun, exact resume, export. Heavy optional encoders live in `cache` and load lazily."""
from .config import TrainConfig
from .data import ShardDataset, ShardError, read_shard, write_shard
from .lvpl import LatentVideoPerceptualLoss, build_extractor
from .wan_vae_decoder import WanVAEDecoderStages, load_wan_vae_decoder_stages

__all__ = ["TrainConfig", "ShardDataset", "ShardError", "read_shard", "write_shard", "LatentVideoPerceptualLoss",
           "build_extractor", "WanVAEDecoderStages", "load_wan_vae_decoder_stages", "Trainer"]


def __getattr__(name):
    if name == "Trainer":
        from .trainer import Trainer
        return Trainer
    raise AttributeError(name)
