"""A small DDPM UNet in Flax NNX (Ho et al. 2020; Dhariwal & Nichol 2021), ε-prediction.

Conditioning enters in two places, so a text path can be added without a rewrite:
  * a vector `emb` [B, D] (time embedding + class embedding) that every ResBlock adds, and
  * an optional `context` of token embeddings (None for the class model) that the
    `CrossAttentionBlock`s at `cross_attention_resolutions` attend to.
`conditioning = "class"`: the class embedding has `num_classes + 1` rows; id `num_classes` is the
null condition for CFG. `conditioning = "text"`: token ids [B, L] (minidiff.data.tokenizer) go through a
transformer text encoder (minidiff.nn.text_encoder) trained jointly; its pooled vector joins `emb` and
its token features are the cross-attention context, padding masked. The null condition is the
empty caption.

`fused_layers = True` builds every GroupNorm as `layers.GroupNorm` (one float32 statistics pass, then
one multiply-add) and computes self-attention with `layers.self_attention` (two einsums, no head
transposes for one head), the faster formulations on XLA:CPU. The parameters (names, shapes,
initial values) are those of the plain layers, so a checkpoint loads into either; the outputs agree
to float32 rounding, not bit for bit (tests/test_fused_layers.py).

The condition may also be given as a continuous embedding, which `UNet.embed_condition(cond)`
returns: {"embedding": [B, emb_dim]} for the class model (its class-embedding row), or
{"embedding": [B, L, text_dim], "mask": [B, L]} for the text model (the text encoder's output
features). The output is then the same as for the ids or tokens it came from, bit for bit; the
inference-time mitigations (minidiff.core.mitigations) move or noise that embedding.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from minidiff.nn import layers, text_encoder
from minidiff.nn.text_encoder import TextEncoder


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of the UNet. `attention_resolutions` are feature-map sizes that get self-attention."""

  resolution: int = 16
  in_channels: int = 1
  base_channels: int = 32
  channel_mults: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 1
  attention_resolutions: tuple[int, ...] = (8,)
  dropout: float = 0.0
  num_groups: int = 8
  num_heads: int = 1
  num_classes: int = 10
  # Text conditioning (conditioning="text"); the class model ignores these fields.
  conditioning: str = "class"  # "class" | "text"
  vocab_size: int = 0  # rows of the token embedding: capacity ≥ the tokenizer's vocabulary
  max_tokens: int = 16  # token positions, the leading <null> included
  text_dim: int = 64
  text_layers: int = 2
  text_heads: int = 2
  cross_attention_resolutions: tuple[int, ...] = ()  # feature-map sizes that cross-attend to tokens
  fused_layers: bool = False  # layers.GroupNorm and layers.self_attention (see the module doc)

  @property
  def null_id(self) -> int:
    """The class id that means "no condition" (classifier-free guidance)."""
    return self.num_classes

  @property
  def emb_dim(self) -> int:
    return 4 * self.base_channels

  def validate(self, *, names: Mapping[str, str] | None = None) -> None:
    """Raises ValueError when the architecture cannot be built, naming the field, value and fix.

    The one place of the architecture's checks: the config layer calls it with `names`, which maps
    a field to what the message calls it (e.g. resolution → "config.data.resolution"); a field not
    in `names` is called "model.<field>".
    """
    name = lambda f: (names or {}).get(f, f"model.{f}")  # noqa: E731
    def check(cond: bool, msg: str) -> None:
      if not cond:
        raise ValueError(msg)

    for f in ("base_channels", "num_res_blocks", "num_groups", "num_heads", "num_classes"):
      check(getattr(self, f) >= 1, f"{name(f)}={getattr(self, f)} must be ≥ 1.")
    check(0.0 <= self.dropout < 1.0, f"{name('dropout')}={self.dropout} must lie in [0, 1).")
    mults = tuple(self.channel_mults)
    check(len(mults) >= 1 and min(mults) >= 1,
          f"{name('channel_mults')}={mults} must be one or more integers ≥ 1, e.g. (1, 2, 2).")
    levels = len(mults)
    check(self.resolution % 2 ** (levels - 1) == 0,
          f"{name('resolution')}={self.resolution} is not divisible by 2^{levels - 1} = "
          f"{2 ** (levels - 1)} (each of the {levels} levels of {name('channel_mults')}={mults} "
          f"after the first halves it); change the resolution or use fewer channel_mults.")
    sizes = [self.resolution // 2**i for i in range(levels)]
    bad = [r for r in self.attention_resolutions if r not in sizes]
    check(not bad, f"{name('attention_resolutions')}={tuple(self.attention_resolutions)} contains "
          f"{bad}, which no level has; the feature-map sizes are {sizes}.")
    for c in sorted({self.base_channels * k for k in mults}):
      check(c % self.num_groups == 0, f"{name('num_groups')}={self.num_groups} does not divide the "
            f"channel count {c} (base_channels × channel_mults); choose a divisor of it.")
    attended = {self.base_channels * mults[i] for i, r in enumerate(sizes) if r in self.attention_resolutions}
    for c in sorted(attended | {self.base_channels * mults[-1]}):  # the middle block always attends
      check(c % self.num_heads == 0, f"{name('num_heads')}={self.num_heads} does not divide the "
            f"channel count {c} of an attention block; choose a divisor of it.")
    check(self.conditioning in ("class", "text"),
          f"{name('conditioning')}={self.conditioning!r}: use 'class' or 'text'.")
    if self.conditioning == "text":
      bad = [r for r in self.cross_attention_resolutions if r not in sizes]
      check(not bad, f"{name('cross_attention_resolutions')}={tuple(self.cross_attention_resolutions)} "
            f"contains {bad}, which no level has; the feature-map sizes are {sizes}.")
      check(self.vocab_size >= 4 and self.max_tokens >= 2,
            f"{name('vocab_size')}={self.vocab_size} must be ≥ 4 and {name('max_tokens')}="
            f"{self.max_tokens} ≥ 2 for a text model.")
      check(self.text_layers >= 1 and self.text_heads >= 1 and self.text_dim % self.text_heads == 0,
            f"{name('text_dim')}={self.text_dim} must be divisible by {name('text_heads')}="
            f"{self.text_heads}, and {name('text_layers')}={self.text_layers} ≥ 1.")


def group_norm(channels: int, groups: int, *, fused: bool, rngs: nnx.Rngs) -> nnx.Module:
  """GroupNorm over `channels` in `groups`: flax's `nnx.GroupNorm`, or `layers.GroupNorm` when fused.

  Both have the parameters `scale` and `bias` [channels] and draw the same keys from `rngs`.
  """
  return (layers.GroupNorm if fused else nnx.GroupNorm)(channels, groups, rngs=rngs)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout with an explicit key; identity when key is None or rate is 0."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


class ResBlock(nnx.Module):
  """GroupNorm → SiLU → conv → + emb → GroupNorm → SiLU → dropout → conv, plus a skip."""

  def __init__(self, c_in: int, c_out: int, emb_dim: int, *, groups: int, dropout: float,
               rngs: nnx.Rngs, fused: bool = False):
    self.norm1 = group_norm(c_in, groups, fused=fused, rngs=rngs)
    self.conv1 = layers.conv(c_in, c_out, 3, rngs=rngs)
    self.emb_proj = layers.linear(emb_dim, c_out, rngs=rngs)
    self.norm2 = group_norm(c_out, groups, fused=fused, rngs=rngs)
    self.conv2 = layers.conv(c_out, c_out, 3, rngs=rngs, zero=True)
    self.skip = layers.conv(c_in, c_out, 1, rngs=rngs) if c_in != c_out else None
    self.dropout = dropout

  def __call__(self, x: jax.Array, emb: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
    h = self.conv1(nnx.silu(self.norm1(x)))
    h = h + self.emb_proj(nnx.silu(emb))[:, None, None, :]
    h = _dropout(nnx.silu(self.norm2(h)), self.dropout, dropout_key)
    h = self.conv2(h)
    return h + (x if self.skip is None else self.skip(x))


class AttentionBlock(nnx.Module):
  """Multi-head self-attention over the H·W positions, residual.

  `context` (token embeddings) is accepted for the text path; the class model passes None.
  `fused`: the attention through `layers.self_attention` instead of `jax.nn.dot_product_attention`.
  """

  def __init__(self, channels: int, *, groups: int, num_heads: int, rngs: nnx.Rngs,
               fused: bool = False):
    self.norm = group_norm(channels, groups, fused=fused, rngs=rngs)
    self.qkv = layers.linear(channels, 3 * channels, rngs=rngs)
    self.out = layers.linear(channels, channels, rngs=rngs, zero=True)
    self.num_heads = num_heads
    self.fused = fused

  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    b, hgt, wid, c = x.shape
    q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, hgt * wid, 3 * c), 3, axis=-1)
    if self.fused:
      h = layers.self_attention(q, k, v, self.num_heads)  # softmax(qkᵀ/√d) v
    else:
      heads = lambda a: a.reshape(b, hgt * wid, self.num_heads, c // self.num_heads)  # noqa: E731
      h = jax.nn.dot_product_attention(heads(q), heads(k), heads(v))  # softmax(qkᵀ/√d) v
    return x + self.out(h.reshape(b, hgt, wid, c))


class CrossAttentionBlock(nnx.Module):
  """Residual cross-attention from the H·W positions to the caption's tokens, padding masked.

  q from GroupNorm(x), k and v from the text encoder's features; zero-initialised output, so a fresh
  block is the identity (like the self-attention block). `fused`: its GroupNorm is `layers.GroupNorm`
  (the masked attention is `jax.nn.dot_product_attention` either way).
  """

  def __init__(self, channels: int, context_dim: int, *, groups: int, num_heads: int, rngs: nnx.Rngs,
               fused: bool = False):
    self.norm = group_norm(channels, groups, fused=fused, rngs=rngs)
    self.q = layers.linear(channels, channels, rngs=rngs)
    self.kv = layers.linear(context_dim, 2 * channels, rngs=rngs)
    self.out = layers.linear(channels, channels, rngs=rngs, zero=True)
    self.num_heads = num_heads

  def __call__(self, x: jax.Array, context: tuple[jax.Array, jax.Array]) -> jax.Array:
    features, mask = context
    b, hgt, wid, c = x.shape
    q = self.q(self.norm(x)).reshape(b, hgt * wid, c)
    k, v = jnp.split(self.kv(features), 2, axis=-1)
    h = layers.masked_attention(q, k, v, mask, self.num_heads)  # softmax(qkᵀ/√d, pad keys excluded) v
    return x + self.out(h.reshape(b, hgt, wid, c))


class Downsample(nnx.Module):
  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = layers.conv(channels, channels, 3, strides=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


def upsample_nearest(x: jax.Array) -> jax.Array:
  """2× nearest-neighbour upsampling [B, H, W, C] → [B, 2H, 2W, C] by broadcasting.

  Equal to `jax.image.resize(x, ..., "nearest")`, whose gather lowers to a scatter-add in the
  backward pass; a broadcast's gradient is a plain reduction (faster on XLA:CPU).
  """
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class Upsample(nnx.Module):
  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = layers.conv(channels, channels, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(upsample_nearest(x))


def _is_embedding(cond) -> bool:
  return isinstance(cond, Mapping) and "embedding" in cond


class ClassConditioner(nnx.Module):
  """Class id (null id = num_classes) → embedding vector; no token context.

  `cond` is class ids [B], or {"embedding": [B, emb_dim]} (a continuous class embedding).
  """

  def __init__(self, num_classes: int, emb_dim: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(num_classes + 1, emb_dim, embedding_init=layers.embed_normal_host, rngs=rngs)

  def embedding(self, cond) -> dict[str, jax.Array]:
    """{"embedding": [B, emb_dim]}: the rows of the class ids [B] (an embedding dict unchanged)."""
    return dict(cond) if _is_embedding(cond) else {"embedding": self.embed(cond)}

  def __call__(self, cond) -> tuple[jax.Array, jax.Array | None]:
    return (cond["embedding"] if _is_embedding(cond) else self.embed(cond)), None


class TextConditioner(nnx.Module):
  """Token ids → (pooled text vector projected to emb_dim, (token features, padding mask)).

  `cond` is token ids [B, L], or a dict with "tokens" [B, L] and "noise" [B, L, text_dim], the
  Gaussian text-embedding perturbation added to the encoder's output (minidiff.study.perturbation),
  or {"embedding": [B, L, text_dim], "mask": [B, L]}, the encoder's output given directly.
  """

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    self.encoder = TextEncoder(config.vocab_size, config.max_tokens, config.text_dim,
                               num_layers=config.text_layers, num_heads=config.text_heads, rngs=rngs)
    self.proj = layers.linear(config.text_dim, config.emb_dim, rngs=rngs)

  def embedding(self, cond) -> dict[str, jax.Array]:
    """{"embedding": features [B, L, text_dim], "mask": [B, L] bool} of tokens (or their dict)."""
    if _is_embedding(cond):
      return dict(cond)
    tokens, noise = (cond["tokens"], cond.get("noise")) if isinstance(cond, dict) else (cond, None)
    features, mask = self.encoder.encode(tokens, noise=noise)
    return {"embedding": features, "mask": mask}

  def __call__(self, cond) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    emb = self.embedding(cond)
    features, mask = emb["embedding"], emb["mask"]
    return self.proj(text_encoder.pool(features, mask)), (features, mask)


class UNet(nnx.Module):
  """ε_θ(x_t, t, cond): images [B, H, W, C] in, predicted noise of the same shape out."""

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    config.validate()
    self.config = config
    c0, emb_dim, g = config.base_channels, config.emb_dim, config.num_groups
    self.time_mlp1 = layers.linear(c0, emb_dim, rngs=rngs)
    self.time_mlp2 = layers.linear(emb_dim, emb_dim, rngs=rngs)
    if config.conditioning == "text":
      self.conditioner = TextConditioner(config, rngs=rngs)
    else:
      self.conditioner = ClassConditioner(config.num_classes, emb_dim, rngs=rngs)
    self.conv_in = layers.conv(config.in_channels, c0, 3, rngs=rngs)

    fused = config.fused_layers
    res_kw = dict(groups=g, dropout=config.dropout, rngs=rngs, fused=fused)
    attn = lambda c: AttentionBlock(c, groups=g, num_heads=config.num_heads, rngs=rngs,  # noqa: E731
                                    fused=fused)
    cross = lambda c: CrossAttentionBlock(c, config.text_dim, groups=g, num_heads=config.num_heads,  # noqa: E731
                                          rngs=rngs, fused=fused)
    crosses = config.cross_attention_resolutions if config.conditioning == "text" else ()
    down, skips_c, c, res = [], [c0], c0, config.resolution
    for level, mult in enumerate(config.channel_mults):
      for _ in range(config.num_res_blocks):
        block = [ResBlock(c, c0 * mult, emb_dim, **res_kw)]
        c = c0 * mult
        if res in config.attention_resolutions:
          block.append(attn(c))
        if res in crosses:
          block.append(cross(c))
        down.append(nnx.List(block))
        skips_c.append(c)
      if level != len(config.channel_mults) - 1:
        down.append(nnx.List([Downsample(c, rngs=rngs)]))
        skips_c.append(c)
        res //= 2
    self.down = nnx.List(down)
    mid = [ResBlock(c, c, emb_dim, **res_kw), attn(c)] + ([cross(c)] if res in crosses else [])
    self.mid = nnx.List(mid + [ResBlock(c, c, emb_dim, **res_kw)])

    up = []
    for level, mult in reversed(list(enumerate(config.channel_mults))):
      for _ in range(config.num_res_blocks + 1):
        block = [ResBlock(c + skips_c.pop(), c0 * mult, emb_dim, **res_kw)]
        c = c0 * mult
        if res in config.attention_resolutions:
          block.append(attn(c))
        if res in crosses:
          block.append(cross(c))
        up.append(nnx.List(block))
      if level != 0:
        up.append(nnx.List([Upsample(c, rngs=rngs)]))
        res *= 2
    self.up = nnx.List(up)
    self.norm_out = group_norm(c, g, fused=fused, rngs=rngs)
    self.conv_out = layers.conv(c, config.in_channels, 3, rngs=rngs, zero=True)

  def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array, *,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Predicts ε. `t` [B] int timesteps; dropout only when a key is given.

    `cond` is class ids [B] for the class model, token ids [B, L] (or TextConditioner's dict) for
    the text model, or the continuous embedding dict of `embed_condition`.
    """
    emb = self.time_mlp2(nnx.silu(self.time_mlp1(layers.timestep_embedding(t, self.config.base_channels))))
    cond_emb, context = self.conditioner(cond)
    emb = (emb + cond_emb).astype(x.dtype)  # a bf16 x (mixed precision) keeps the blocks in bf16
    counter = iter(range(10_000))
    key = lambda: None if dropout_key is None else jax.random.fold_in(dropout_key, next(counter))  # noqa: E731

    def run(block: nnx.List, h: jax.Array) -> jax.Array:
      for layer in block:
        if isinstance(layer, ResBlock):
          h = layer(h, emb, key())
        elif isinstance(layer, AttentionBlock):
          h = layer(h, context)
        elif isinstance(layer, CrossAttentionBlock):
          h = layer(h, context)
        else:
          h = layer(h)
      return h

    h = self.conv_in(x)
    skips = [h]
    for block in self.down:
      h = run(block, h)
      skips.append(h)
    h = run(self.mid, h)
    for block in self.up:
      if isinstance(block[0], Upsample):
        h = run(block, h)
      else:
        h = run(block, jnp.concatenate([h, skips.pop()], axis=-1))
    return self.conv_out(nnx.silu(self.norm_out(h)))

  def embed_condition(self, cond) -> dict[str, jax.Array]:
    """The continuous embedding of `cond` that `__call__` also accepts (see the module doc)."""
    return self.conditioner.embedding(cond)


def count_params(model: nnx.Module) -> int:
  """Number of trainable scalars."""
  return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
