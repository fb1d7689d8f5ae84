"""The released MDLM layout for tests: random non-zero weights, and the forward pass restated from its facts.

``reference_logits`` is a plain restatement of the reference DiT's forward pass, written from the
layout's facts (issue 12, item 1) and not from unmask's model: it is what unmask's logits must equal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

FREQUENCIES = 256


def released_config(*, vocab_size: int, length: int = 16, hidden: int = 32, n_heads: int = 4, cond_dim: int = 16,
                    n_blocks: int = 2) -> dict:
    return {"model_type": "mdlm", "vocab_size": vocab_size, "model_length": length, "hidden_dim": hidden,
            "cond_dim": cond_dim, "n_blocks": n_blocks, "n_heads": n_heads, "dropout": 0.1,
            "time_conditioning": False}


def released_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the layout (names without ``backbone.``) in the reference's parameter order."""
    v, h, c = config["vocab_size"], config["hidden_dim"], config["cond_dim"]
    shapes = {"vocab_embed.embedding": (v, h), "sigma_map.mlp.0.weight": (c, FREQUENCIES),
              "sigma_map.mlp.0.bias": (c,), "sigma_map.mlp.2.weight": (c, c), "sigma_map.mlp.2.bias": (c,)}
    for i in range(config["n_blocks"]):
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in [
            ("norm1.weight", (h,)), ("attn_qkv.weight", (3 * h, h)), ("attn_out.weight", (h, h)),
            ("norm2.weight", (h,)), ("mlp.0.weight", (4 * h, h)), ("mlp.0.bias", (4 * h,)),
            ("mlp.2.weight", (h, 4 * h)), ("mlp.2.bias", (h,)), ("adaLN_modulation.weight", (6 * h, c)),
            ("adaLN_modulation.bias", (6 * h,))]})
    shapes.update({"output_layer.norm_final.weight": (h,), "output_layer.linear.weight": (v, h),
                   "output_layer.linear.bias": (v,), "output_layer.adaLN_modulation.weight": (2 * h, c),
                   "output_layer.adaLN_modulation.bias": (2 * h,)})
    return shapes


def random_released_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random, non-zero weights for every parameter (norm weights near 1), names without ``backbone.``."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in released_shapes(config).items():
        noise = torch.randn(shape, generator=generator)
        if "norm" in name:
            tensors[name] = 1 + 0.2 * noise
        else:
            fan_in = shape[-1] if len(shape) > 1 else 4
            tensors[name] = noise / math.sqrt(fan_in)
    head_dim = config["hidden_dim"] // config["n_heads"]
    tensors["rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    return tensors


def write_released_folder(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({f"backbone.{name}": value.contiguous() for name, value in tensors.items()}, folder / "model.safetensors")
    return folder


def _layer_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + 1e-5) * weight


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _linear(x: torch.Tensor, tensors: dict, name: str) -> torch.Tensor:
    out = x @ tensors[f"{name}.weight"].T
    return out + tensors[f"{name}.bias"] if f"{name}.bias" in tensors else out


def reference_logits(tensors: dict[str, torch.Tensor], config: dict, ids: torch.Tensor,
                     sigma: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, L, V] of the released architecture on ``ids`` (float64 throughout), conditioned on the noise
    level ``sigma`` [B] (the reference feeds it unscaled; sigma = 0 without time conditioning, as MDLM)."""
    t = {name: value.double() for name, value in tensors.items()}
    b, length = ids.shape
    h, heads = config["hidden_dim"], config["n_heads"]
    head_dim = h // heads
    x = t["vocab_embed.embedding"][ids]
    # Conditioning: cos|sin features of sigma, MLP with SiLU, then SiLU.
    half = FREQUENCIES // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    sigma = torch.zeros(b, dtype=torch.float64) if sigma is None else sigma.double()
    angles = sigma[:, None] * freqs[None]
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    c = F.silu(_linear(F.silu(_linear(features, t, "sigma_map.mlp.0")), t, "sigma_map.mlp.2"))
    # Rotary (non-interleaved, rotate-half) tables.
    positions = torch.arange(length, dtype=torch.float64)
    rotation = torch.outer(positions, t["rotary_emb.inv_freq"])
    cos, sin = torch.cat([rotation.cos()] * 2, dim=-1), torch.cat([rotation.sin()] * 2, dim=-1)

    def rotate(q: torch.Tensor) -> torch.Tensor:
        q1, q2 = q[..., : head_dim // 2], q[..., head_dim // 2 :]
        return q * cos + torch.cat([-q2, q1], dim=-1) * sin

    for i in range(config["n_blocks"]):
        p = f"blocks.{i}."
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = _linear(c, t, p + "adaLN_modulation")[:, None].chunk(6, -1)
        a = _layer_norm(x, t[p + "norm1.weight"]) * (1 + scale_a) + shift_a
        qkv = (a @ t[p + "attn_qkv.weight"].T).view(b, length, 3, heads, head_dim)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # [B, heads, L, head_dim]
        weights = torch.softmax(rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(b, length, h)
        x = x + gate_a * (attended @ t[p + "attn_out.weight"].T)
        m = _layer_norm(x, t[p + "norm2.weight"]) * (1 + scale_m) + shift_m
        x = x + gate_m * _linear(_gelu_tanh(_linear(m, t, p + "mlp.0")), t, p + "mlp.2")
    shift, scale = _linear(c, t, "output_layer.adaLN_modulation")[:, None].chunk(2, -1)
    final = _layer_norm(x, t["output_layer.norm_final.weight"]) * (1 + scale) + shift
    return _linear(final, t, "output_layer.linear")
