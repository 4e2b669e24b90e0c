"""Pieces of the HF transformers references the quantized engine is compared with: fp8
activation quantization as vLLM runs W8A8 (a torch forward pre-hook on a layer), per-channel
on-load quantization re-derived in numpy, and greedy decoding of a reference model."""

from __future__ import annotations

import ml_dtypes
import numpy as np

FP8_MAX, FP8_MIN_SCALE = 448.0, 1.0 / (448.0 * 512.0)


def fp8_input_hook(dynamic: bool, group_size: int | None = None, input_scale=None):
    """A forward pre-hook quantizing a layer's float32 input to float8_e4m3fn and back: dynamic
    scales amax / 448 (at least 1 / (448 * 512)) per token, or per token and group of
    `group_size` features; else the static per-tensor `input_scale`. Clip to +-448, round."""
    import torch

    def hook(module, args):
        (x,) = args
        if not dynamic:
            scale = torch.tensor(np.asarray(input_scale, np.float32).item(), dtype=torch.float32)
            x_q = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return (x_q.to(torch.float32) * scale,)
        group = group_size or x.shape[-1]
        xg = x.reshape(*x.shape[:-1], -1, group)  # [..., groups, group]
        scale = (xg.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=FP8_MIN_SCALE)
        x_q = (xg / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return ((x_q.to(torch.float32) * scale).reshape(x.shape),)

    return hook


def per_channel_dequantized(w: np.ndarray, method: str, out_axis: int = 0) -> np.ndarray:
    """`quantization="int8" | "fp8"` re-derived: symmetric per output channel (float32 math),
    scale = amax / 127 (int8, q = round(w / scale) in [-127, 127]) or amax / 448 (fp8, q =
    w / scale rounded to float8_e4m3fn); returns q * scale in float32."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1 - out_axis, keepdims=True)
    if method == "int8":
        scale = np.maximum(amax / np.float32(127), np.finfo(np.float32).tiny)
        return np.clip(np.rint(w / scale), -127, 127).astype(np.float32) * scale
    scale = np.maximum(amax / np.float32(FP8_MAX), np.float32(FP8_MIN_SCALE))
    q = np.clip(w / scale, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)
    return q.astype(np.float32) * scale


def greedy(model, prompts, max_new_tokens: int, suppressed=None) -> list[list[int]]:
    """HF `generate` greedy continuations, EOS neither stopping nor suppressed."""
    import torch

    model.generation_config.eos_token_id = None
    with torch.no_grad():
        return [model.generate(torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
                               suppress_tokens=suppressed or None)[0, len(p):].tolist() for p in prompts]
