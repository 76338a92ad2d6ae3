"""MoCADiT: the Wan 2.1 T2V DiT with a MoCA layer as a residual after every block.

The backbone's parameters carry Wan 2.1's names at the top level (`patch_embedding`, `blocks.N.*`,
`head.*`, ...), so Wan checkpoints load as-is; the adapter lives under `adapter.*`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .adapter import MoCAAdapter, init_generic
from .config import MoCAConfig
from .options import MoCAOptions
from .regions import RegionalIdentity
from .wan import (Head, WanAttentionBlock, pad_to_patch_size, rope_frequencies, sinusoidal_embedding_1d,
                  unpatchify)


class MoCADiT(nn.Module):
    def __init__(self, config: MoCAConfig, operations=None, device=None, dtype=None):
        super().__init__()
        ops = operations or nn
        c = self.config = config
        kw = dict(device=device, dtype=dtype)
        self.patch_embedding = ops.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size,
                                          device=device, dtype=torch.float32 if dtype is not None else None)
        self.text_embedding = nn.Sequential(ops.Linear(c.text_dim, c.dim, **kw), nn.GELU(approximate="tanh"),
                                            ops.Linear(c.dim, c.dim, **kw))
        self.time_embedding = nn.Sequential(ops.Linear(c.freq_dim, c.dim, **kw), nn.SiLU(),
                                            ops.Linear(c.dim, c.dim, **kw))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(c.dim, 6 * c.dim, **kw))
        self.blocks = nn.ModuleList(
            WanAttentionBlock(c.dim, c.ffn_dim, c.num_heads, c.qk_norm, c.cross_attn_norm, c.eps, ops, **kw)
            for _ in range(c.num_layers))
        self.head = Head(c.dim, c.out_dim, c.patch_size, c.eps, ops, **kw)
        self.adapter = MoCAAdapter(c, ops, **kw)
        self.gradient_checkpointing = False
        if device is None or torch.device(device).type != "meta":
            if operations is None:
                self.init_weights()

    # ------------------------------------------------------------------ init / weights
    def init_weights(self):
        """Random backbone (Wan's scheme, but with a non-zero head so a random model is not constant)
        and a fresh, zero-output adapter."""
        init_generic(m for name, m in self.named_modules() if not name.startswith("adapter"))
        for blk in self.blocks:
            nn.init.normal_(blk.modulation, std=self.config.dim ** -0.5)
        nn.init.normal_(self.head.modulation, std=self.config.dim ** -0.5)
        for m in list(self.text_embedding) + list(self.time_embedding):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        self.adapter.init_weights()
        return self

    def backbone_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("adapter.")}

    def load_backbone(self, source, strict: bool = True):
        """Load Wan 2.1 T2V weights: a .safetensors path or a state dict, original or ComfyUI naming,
        with or without the `model.diffusion_model.` prefix, fp32/fp16/bf16 (cast to this model)."""
        from .checkpoint import load_backbone_into
        return load_backbone_into(self, source, strict=strict)

    def load_adapter(self, source):
        """Load MoCA adapter weights (a path to an adapter/combined file, or a MoCAAdapter). The adapter's
        backbone fields (dim, layers, ...) must match this model; its MoCA fields may differ, in which case
        the adapter is rebuilt with the file's config."""
        from .checkpoint import CheckpointError, read_moca
        if isinstance(source, MoCAAdapter):
            config, state = source.config, source.state_dict()
        else:
            f = read_moca(source)
            config, state = f.config, f.adapter_state
        mine, theirs = self.config.backbone_fields(), config.backbone_fields()
        diff = {k: (theirs[k], mine[k]) for k in mine if k != "eps" and mine[k] != theirs[k]}
        if diff or config.num_layers != self.config.num_layers:
            raise CheckpointError("This MoCA adapter was trained for another backbone: " + ", ".join(
                f"{k}: adapter {a} vs model {b}" for k, (a, b) in diff.items()) +
                ". Use an adapter made for this Wan 2.1 size.")
        p = self.text_embedding[0].weight
        if config != self.config:
            self.config = config
            self.adapter = MoCAAdapter(config, device=p.device, dtype=p.dtype)
        self.adapter.load_state_dict({k: v.to(p.dtype) for k, v in state.items()})
        return self

    def num_parameters(self, part: str = "backbone") -> int:
        if part == "adapter":
            return self.adapter.num_parameters()
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("adapter."))

    # ------------------------------------------------------------------ forward
    def embed_time(self, timestep: torch.Tensor, dtype):
        """timestep [B] on Wan's 0..1000 scale -> e [B, 1, D] (head) and e0 [B, 1, 6, D] (blocks)."""
        e = self.time_embedding(sinusoidal_embedding_1d(self.config.freq_dim, timestep.flatten()).to(dtype))
        e = e.reshape(timestep.shape[0], -1, e.shape[-1])
        return e, self.time_projection(e).unflatten(2, (6, self.config.dim))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                identity: torch.Tensor | None = None, moca_options=None,
                identity_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, 16, T, H, W] latents; timestep [B] in 0..1000; context [B, L, text_dim];
        identity [B|1, M, D_id] tokens, a RegionalIdentity (several people, each bound to a region) or None
        (exactly the backbone); identity_mask [B] optional per-sample
        on/off (float or bool). Returns the flow velocity, shaped like x."""
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_dim:
            raise ValueError(f"MoCADiT: x must be [B, {c.in_dim}, T, H, W] latents, got {list(x.shape)}")
        if context.ndim != 3 or context.shape[-1] != c.text_dim:
            raise ValueError(f"MoCADiT: context must be [B, L, {c.text_dim}] text states, got {list(context.shape)}")
        B, _, T, H, W = x.shape
        timestep = timestep.reshape(-1).expand(B) if timestep.numel() == 1 else timestep
        dtype = self.text_embedding[0].weight.dtype                              # the model's compute dtype
        xp = pad_to_patch_size(x, c.patch_size)
        tokens = self.patch_embedding(xp.float()).to(dtype)                     # [B, D, T', h, w]
        grid = tuple(tokens.shape[2:])
        h = tokens.flatten(2).transpose(1, 2)                                   # [B, L, D]
        freqs = rope_frequencies(c.head_dim, grid, device=x.device)      # cached per grid
        e, e0 = self.embed_time(timestep, dtype)
        ctx = self.text_embedding(context.to(dtype))

        opts = MoCAOptions.coerce(moca_options).resolve(c)
        use_moca = identity is not None and opts.active
        gate = None                                                             # per-sample identity on/off [B, 1, 1]
        if use_moca:
            if isinstance(identity, RegionalIdentity):                          # several people, each in a region
                identity = identity.resolve(grid, device=x.device, dtype=dtype)
            else:
                identity = identity.to(device=x.device, dtype=dtype)
            if identity_mask is not None:
                gate = identity_mask.to(device=x.device, dtype=dtype).reshape(B, 1, 1)

        for i, block in enumerate(self.blocks):
            layer = self.adapter.layers[i] if use_moca else None
            args = (block, layer, h, e0, freqs, ctx, identity, grid, opts, gate)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(self._block, *args, use_reentrant=False)
            else:
                h = self._block(*args)

        out = self.head(h, e)
        return unpatchify(out, grid, c.patch_size, c.out_dim)[:, :, :T, :H, :W].to(x.dtype)

    @staticmethod
    def _block(block, layer, h, e0, freqs, ctx, identity, grid, opts, gate):
        h = block(h, e0, freqs, ctx)
        if layer is not None:
            delta = layer(h, e0, identity, grid, opts)
            h = h + (delta if gate is None else delta * gate)
        return h
