#!/usr/bin/env python
"""Standalone MoCA trainer (runs without ComfyUI). See docs/training.md.

    python train_moca.py --config configs/train_tiny.yaml
    torchrun --nproc_per_node 8 train_moca.py --config configs/train_wan2.1-14b.yaml --resume
    python train_moca.py cache --manifest data.jsonl --out cache/ --vae ... --text-encoder ...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moca_model.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
