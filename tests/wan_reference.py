"""An independent Wan 2.1 T2V forward pass, written the way the original Wan2.1 code is written
(complex-number RoPE over a 1024-position table, per-sample loops), used to check MoCADiT's backbone.
It reads a plain Wan state dict, so it shares no code with moca_model."""
import math

import torch
import torch.nn.functional as F


def rope_params(max_len, dim, theta=10000):
    freqs = torch.outer(torch.arange(max_len), 1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
    return torch.polar(torch.ones_like(freqs), freqs)


def rope_apply(x, grid, freqs):                     # x [B, L, n, d]
    n, c = x.size(2), x.size(3) // 2
    freqs = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f, h, w = grid
    out = []
    for i in range(x.size(0)):
        xi = torch.view_as_complex(x[i].to(torch.float64).reshape(f * h * w, n, -1, 2))
        fi = torch.cat([freqs[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                        freqs[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                        freqs[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
        out.append(torch.view_as_real(xi * fi).flatten(2))
    return torch.stack(out).float()


def linear(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def rms(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def attn(q, k, v):                                  # [B, L, n, d]
    s = torch.einsum("blnd,bmnd->bnlm", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bnlm,bmnd->blnd", s.softmax(-1), v).flatten(2)


def wan_forward(sd, x, t, context, num_heads, num_layers, freq_dim=256, eps=1e-6):
    """x [B, 16, T, H, W] with H, W even; t [B]; context [B, L, 4096]. Returns the velocity."""
    B = x.shape[0]
    dim = sd["patch_embedding.weight"].shape[0]
    d = dim // num_heads
    freqs = torch.cat([rope_params(1024, d - 4 * (d // 6)), rope_params(1024, 2 * (d // 6)),
                       rope_params(1024, 2 * (d // 6))], dim=1)
    h = F.conv3d(x, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=(1, 2, 2))
    grid = h.shape[2:]
    h = h.flatten(2).transpose(1, 2)
    half = freq_dim // 2
    sinus = torch.outer(t.double(), torch.pow(10000, -torch.arange(half).double().div(half)))
    temb = torch.cat([torch.cos(sinus), torch.sin(sinus)], dim=1).float()
    e = linear(sd, "time_embedding.2", F.silu(linear(sd, "time_embedding.0", temb)))
    e0 = linear(sd, "time_projection.1", F.silu(e)).unflatten(1, (6, dim))
    ctx = linear(sd, "text_embedding.2", F.gelu(linear(sd, "text_embedding.0", context), approximate="tanh"))
    for i in range(num_layers):
        p = f"blocks.{i}."
        m = (sd[p + "modulation"] + e0).chunk(6, dim=1)
        y = F.layer_norm(h, (dim,), eps=eps) * (1 + m[1]) + m[0]
        q = rms(linear(sd, p + "self_attn.q", y), sd[p + "self_attn.norm_q.weight"]).view(B, -1, num_heads, d)
        k = rms(linear(sd, p + "self_attn.k", y), sd[p + "self_attn.norm_k.weight"]).view(B, -1, num_heads, d)
        v = linear(sd, p + "self_attn.v", y).view(B, -1, num_heads, d)
        y = linear(sd, p + "self_attn.o", attn(rope_apply(q, grid, freqs), rope_apply(k, grid, freqs), v))
        h = h + y * m[2]
        y = F.layer_norm(h, (dim,), sd[p + "norm3.weight"], sd[p + "norm3.bias"], eps)
        q = rms(linear(sd, p + "cross_attn.q", y), sd[p + "cross_attn.norm_q.weight"]).view(B, -1, num_heads, d)
        k = rms(linear(sd, p + "cross_attn.k", ctx), sd[p + "cross_attn.norm_k.weight"]).view(B, -1, num_heads, d)
        v = linear(sd, p + "cross_attn.v", ctx).view(B, -1, num_heads, d)
        h = h + linear(sd, p + "cross_attn.o", attn(q, k, v))
        y = F.layer_norm(h, (dim,), eps=eps) * (1 + m[4]) + m[3]
        y = linear(sd, p + "ffn.2", F.gelu(linear(sd, p + "ffn.0", y), approximate="tanh"))
        h = h + y * m[5]
    m = (sd["head.modulation"] + e.unsqueeze(1)).chunk(2, dim=1)
    out = linear(sd, "head.head", F.layer_norm(h, (dim,), eps=eps) * (1 + m[1]) + m[0])
    f, gh, gw = grid
    c = sd["head.head.weight"].shape[0] // 4
    out = out.view(B, f, gh, gw, 1, 2, 2, c)
    return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(B, c, f, gh * 2, gw * 2)


def wan21_t2v_keys(dim, ffn_dim, num_layers, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256):
    """Every parameter name and shape of a Wan 2.1 T2V checkpoint, written out from the Wan2.1 release."""
    keys = {"patch_embedding.weight": (dim, in_dim, 1, 2, 2), "patch_embedding.bias": (dim,),
            "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
            "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
            "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
            "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
            "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
            "head.head.weight": (4 * out_dim, dim), "head.head.bias": (4 * out_dim,),
            "head.modulation": (1, 2, dim)}
    for i in range(num_layers):
        p = f"blocks.{i}."
        keys[p + "modulation"] = (1, 6, dim)
        for a in ("self_attn", "cross_attn"):
            for n in "qkvo":
                keys[f"{p}{a}.{n}.weight"] = (dim, dim)
                keys[f"{p}{a}.{n}.bias"] = (dim,)
            keys[f"{p}{a}.norm_q.weight"] = (dim,)
            keys[f"{p}{a}.norm_k.weight"] = (dim,)
        keys[p + "norm3.weight"] = (dim,)
        keys[p + "norm3.bias"] = (dim,)
        keys[p + "ffn.0.weight"] = (ffn_dim, dim)
        keys[p + "ffn.0.bias"] = (ffn_dim,)
        keys[p + "ffn.2.weight"] = (dim, ffn_dim)
        keys[p + "ffn.2.bias"] = (dim,)
    return keys
