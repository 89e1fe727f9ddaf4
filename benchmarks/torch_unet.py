"""The minidiff UNet written in PyTorch, layer for layer, for speed comparisons only (bench extra).

Same blocks, channel counts, attention placement and parameter count as `minidiff.nn.unet.UNet`
(benchmarks/bench.py checks the count); PyTorch's NCHW layout and eager execution. Not used by
minidiff itself: PyTorch is never needed to install, run or test it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from minidiff.nn.unet import UNetConfig

GN_EPS = 1e-6  # flax's GroupNorm epsilon


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
  half = dim // 2
  freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
  args = t.float()[:, None] * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
  def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
    super().__init__()
    self.norm1 = nn.GroupNorm(groups, c_in, eps=GN_EPS)
    self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
    self.emb_proj = nn.Linear(emb_dim, c_out)
    self.norm2 = nn.GroupNorm(groups, c_out, eps=GN_EPS)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
    self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

  def forward(self, x, emb):
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
    h = self.conv2(F.silu(self.norm2(h)))
    return h + (x if self.skip is None else self.skip(x))


class AttentionBlock(nn.Module):
  def __init__(self, channels: int, groups: int, heads: int):
    super().__init__()
    self.norm = nn.GroupNorm(groups, channels, eps=GN_EPS)
    self.qkv = nn.Linear(channels, 3 * channels)
    self.out = nn.Linear(channels, channels)
    self.heads = heads

  def forward(self, x):
    b, c, h, w = x.shape
    tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
    q, k, v = self.qkv(tokens).chunk(3, dim=-1)
    split = lambda a: a.reshape(b, h * w, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    o = self.out(o.transpose(1, 2).reshape(b, h * w, c))
    return x + o.transpose(1, 2).reshape(b, c, h, w)


class Upsample(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.conv = nn.Conv2d(channels, channels, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TorchUNet(nn.Module):
  """ε_θ(x_t, t, class) with minidiff's architecture; NCHW."""

  def __init__(self, config: UNetConfig):
    super().__init__()
    self.config = config
    c0, emb_dim, g = config.base_channels, config.emb_dim, config.num_groups
    self.time_mlp1 = nn.Linear(c0, emb_dim)
    self.time_mlp2 = nn.Linear(emb_dim, emb_dim)
    self.embed = nn.Embedding(config.num_classes + 1, emb_dim)
    self.conv_in = nn.Conv2d(config.in_channels, c0, 3, padding=1)
    attn = lambda c: AttentionBlock(c, g, config.num_heads)  # noqa: E731
    down, skips_c, c, res = [], [c0], c0, config.resolution
    for level, mult in enumerate(config.channel_mults):
      for _ in range(config.num_res_blocks):
        block = [ResBlock(c, c0 * mult, emb_dim, g)]
        c = c0 * mult
        if res in config.attention_resolutions:
          block.append(attn(c))
        down.append(nn.ModuleList(block))
        skips_c.append(c)
      if level != len(config.channel_mults) - 1:
        down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
        skips_c.append(c)
        res //= 2
    self.down = nn.ModuleList(down)
    self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, g), attn(c), ResBlock(c, c, emb_dim, g)])
    up = []
    for level, mult in reversed(list(enumerate(config.channel_mults))):
      for _ in range(config.num_res_blocks + 1):
        block = [ResBlock(c + skips_c.pop(), c0 * mult, emb_dim, g)]
        c = c0 * mult
        if res in config.attention_resolutions:
          block.append(attn(c))
        up.append(nn.ModuleList(block))
      if level != 0:
        up.append(nn.ModuleList([Upsample(c)]))
        res *= 2
    self.up = nn.ModuleList(up)
    self.norm_out = nn.GroupNorm(g, c, eps=GN_EPS)
    self.conv_out = nn.Conv2d(c, config.in_channels, 3, padding=1)

  def _run(self, block, h, emb):
    for layer in block:
      h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h

  def forward(self, x, t, cond):
    emb = self.time_mlp2(F.silu(self.time_mlp1(timestep_embedding(t, self.config.base_channels))))
    emb = emb + self.embed(cond)
    h = self.conv_in(x)
    skips = [h]
    for block in self.down:
      h = self._run(block, h, emb)
      skips.append(h)
    h = self._run(self.mid, h, emb)
    for block in self.up:
      if isinstance(block[0], Upsample):
        h = self._run(block, h, emb)
      else:
        h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
    return self.conv_out(F.silu(self.norm_out(h)))


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
