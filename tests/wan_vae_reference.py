"""An independent, chunked Wan 2.1 VAE forward pass, written the way the original Wan2.1 code runs it: the
encoder sees the first frame alone and then chunks of 4 frames, the decoder one latent frame at a time, and
every causal conv carries the last two frames of its input from chunk to chunk in a cache (Wan's
`feat_cache`, including its 'Rep' marker for the first temporal upsample). Functional, on a plain state dict,
so it shares no code with moca_model.wan_vae (whose single full-sequence pass it checks)."""
import torch
import torch.nn.functional as F


def _cconv(x, sd, name, cache, pad=(1, 1, 1), stride=(1, 1, 1)):
    """Wan's CausalConv3d + feat_cache: cache[name] holds the last (up to) two input frames of earlier chunks."""
    pt, ph, pw = pad
    if pt:
        prev = cache.get(name)
        new = x[:, :, -2:].clone()
        if new.shape[2] < 2 and prev is not None:
            new = torch.cat([prev[:, :, -1:], new], 2)
        cache[name] = new
        front = 2 * pt
        if prev is not None:
            x = torch.cat([prev, x], 2)
            front -= prev.shape[2]
        x = F.pad(x, (pw, pw, ph, ph, front, 0))
    else:
        x = F.pad(x, (pw, pw, ph, ph, 0, 0))
    return F.conv3d(x, sd[name + ".weight"], sd[name + ".bias"], stride)


def _rms(x, gamma):
    return F.normalize(x, dim=1) * x.shape[1] ** 0.5 * gamma


def _res(x, sd, name, cache):
    h = _cconv(F.silu(_rms(x, sd[f"{name}.residual.0.gamma"])), sd, f"{name}.residual.2", cache)
    h = _cconv(F.silu(_rms(h, sd[f"{name}.residual.3.gamma"])), sd, f"{name}.residual.6", cache)
    if f"{name}.shortcut.weight" in sd:
        x = F.conv3d(x, sd[f"{name}.shortcut.weight"], sd[f"{name}.shortcut.bias"])
    return x + h


def _attn(x, sd, name):
    b, c, t, h, w = x.shape
    y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    y = F.conv2d(_rms(y, sd[f"{name}.norm.gamma"]), sd[f"{name}.to_qkv.weight"], sd[f"{name}.to_qkv.bias"])
    q, k, v = y.reshape(b * t, 3 * c, h * w).transpose(1, 2).chunk(3, dim=-1)       # [bt, hw, c]
    a = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1) @ v
    y = F.conv2d(a.transpose(1, 2).reshape(b * t, c, h, w), sd[f"{name}.proj.weight"], sd[f"{name}.proj.bias"])
    return x + y.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _per_frame(x, fn):
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


def _resample(x, sd, name, mode, cache):
    b, c, t, h, w = x.shape
    if mode == "upsample3d":
        state = cache.get(name)
        if state is None:
            cache[name] = "Rep"
        else:
            cache_x = x[:, :, -2:].clone()
            if cache_x.shape[2] < 2 and not isinstance(state, str):
                cache_x = torch.cat([state[:, :, -1:], cache_x], 2)
            if cache_x.shape[2] < 2 and isinstance(state, str):
                cache_x = torch.cat([torch.zeros_like(cache_x), cache_x], 2)
            inp = F.pad(x, (0, 0, 0, 0, 2, 0)) if isinstance(state, str) else torch.cat([state, x], 2)
            y = F.conv3d(inp, sd[f"{name}.time_conv.weight"], sd[f"{name}.time_conv.bias"])
            cache[name] = cache_x
            y = y.reshape(b, 2, c, t, h, w)
            x = torch.stack((y[:, 0], y[:, 1]), 3).reshape(b, c, t * 2, h, w)
    w1, b1 = sd[f"{name}.resample.1.weight"], sd[f"{name}.resample.1.bias"]
    if mode.startswith("up"):
        x = _per_frame(x, lambda f: F.conv2d(F.interpolate(f, scale_factor=2.0, mode="nearest-exact"), w1, b1, padding=1))
    else:
        x = _per_frame(x, lambda f: F.conv2d(F.pad(f, (0, 1, 0, 1)), w1, b1, stride=2))
    if mode == "downsample3d":
        state = cache.get(name)
        if state is None:
            cache[name] = x.clone()
        else:
            cache_x = x[:, :, -1:].clone()
            x = F.conv3d(torch.cat([state[:, :, -1:], x], 2), sd[f"{name}.time_conv.weight"],
                         sd[f"{name}.time_conv.bias"], stride=(2, 1, 1))
            cache[name] = cache_x
    return x


def _encoder(x, sd, cache, n_res=2, tdown=(False, True, True)):
    x = _cconv(x, sd, "encoder.conv1", cache)
    i = 0
    for stage in range(4):
        for _ in range(n_res):
            x = _res(x, sd, f"encoder.downsamples.{i}", cache)
            i += 1
        if stage < 3:
            x = _resample(x, sd, f"encoder.downsamples.{i}", "downsample3d" if tdown[stage] else "downsample2d", cache)
            i += 1
    x = _res(x, sd, "encoder.middle.0", cache)
    x = _attn(x, sd, "encoder.middle.1")
    x = _res(x, sd, "encoder.middle.2", cache)
    return _cconv(F.silu(_rms(x, sd["encoder.head.0.gamma"])), sd, "encoder.head.2", cache)


def _decoder(x, sd, cache, n_res=2, tup=(True, True, False)):
    x = _cconv(x, sd, "decoder.conv1", cache)
    x = _res(x, sd, "decoder.middle.0", cache)
    x = _attn(x, sd, "decoder.middle.1")
    x = _res(x, sd, "decoder.middle.2", cache)
    i = 0
    for stage in range(4):
        for _ in range(n_res + 1):
            x = _res(x, sd, f"decoder.upsamples.{i}", cache)
            i += 1
        if stage < 3:
            x = _resample(x, sd, f"decoder.upsamples.{i}", "upsample3d" if tup[stage] else "upsample2d", cache)
            i += 1
    return _cconv(F.silu(_rms(x, sd["decoder.head.0.gamma"])), sd, "decoder.head.2", cache)


@torch.no_grad()
def encode(sd, video):
    """video [B, 3, T, H, W] -> mu, Wan-style: frame 0 alone, then chunks of 4 frames."""
    cache, outs = {}, []
    for i in range(1 + (video.shape[2] - 1) // 4):
        chunk = video[:, :, :1] if i == 0 else video[:, :, 1 + 4 * (i - 1):1 + 4 * i]
        outs.append(_encoder(chunk, sd, cache))
    moments = F.conv3d(torch.cat(outs, 2), sd["conv1.weight"], sd["conv1.bias"])
    return moments.chunk(2, dim=1)[0]


@torch.no_grad()
def decode(sd, z):
    """z [B, 16, T, h, w] -> video, Wan-style: one latent frame at a time."""
    x = F.conv3d(z, sd["conv2.weight"], sd["conv2.bias"])
    cache = {}
    return torch.cat([_decoder(x[:, :, i:i + 1], sd, cache) for i in range(x.shape[2])], 2)
