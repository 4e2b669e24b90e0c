"""GPTQ and AWQ checkpoints packed from a tiny float checkpoint's known weights, and the float
checkpoint of the weights they dequantize to.

GPTQ's and AWQ's tools need CUDA, so the integers come from round-to-nearest quantization
(GPTQ's own quantizer rule: sym -> zero 2**(b-1), scale 2 max|w| / (2**b - 1); asym -> scale
(max - min) / (2**b - 1), zero round(-min / scale)), per group of input features, along an act
order when `desc_act` (g_idx: a random permutation's groups). They are packed by the package's
packers (their word layouts are pinned in test_formats.py), and the float weights
W = (q - zero) * scale are computed here in float64 from the integers and the float16 scales the
checkpoint stores. Which tensors are linear weights comes from the HF model's own modules
(`nn.Linear` [out, in] and GPT-2's `Conv1D` [in, out]), as the tools find them; lm_head stays
float unless `lm_head`. Fused layers (q|k|v, gate|up, grouped qkv) are quantized whole, as
the tools quantize the checkpoint's modules.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from models.quantization.awq import pack_awq
from models.quantization.gptq import pack_gptq
from models.safetensors_io import SafetensorsFile, save_file


@dataclasses.dataclass(frozen=True)
class PackedSpec:
    """How to quantize a float checkpoint: method gptq | awq and its settings."""

    method: str
    bits: int = 4
    group_size: int = 32  # -1: one group (per output channel)
    sym: bool = True
    desc_act: bool = False
    version: int = 1  # GPTQ checkpoint format: 1 ("gptq", zeros stored minus one) or 2 ("gptq_v2")
    lm_head: bool = False
    seed: int = 0

    def quantization_config(self) -> dict:
        if self.method == "awq":
            return {"quant_method": "awq", "bits": self.bits, "group_size": self.group_size, "zero_point": True,
                    "version": "gemm", "modules_to_not_convert": None}
        return {"quant_method": "gptq", "bits": self.bits, "group_size": self.group_size, "sym": self.sym,
                "desc_act": self.desc_act, "lm_head": self.lm_head,
                "checkpoint_format": "gptq" if self.version == 1 else "gptq_v2"}


def linear_weights(model_dir: str) -> dict[str, bool]:
    """{module name: is Conv1D ([in, out])} of every linear layer of the HF model in `model_dir`."""
    import torch
    import transformers
    from transformers.pytorch_utils import Conv1D

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {name: isinstance(m, Conv1D) for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}


def rtn_quantize(w: np.ndarray, spec: PackedSpec, rng: np.random.Generator):
    """w [K, N] -> (unsigned q [K, N], unsigned zeros [G, N], float16 scales [G, N], g_idx [K],
    the float64 weight [K, N] they stand for)."""
    k, n = w.shape
    maxq = (1 << spec.bits) - 1
    size = k if spec.group_size == -1 else spec.group_size
    g_idx = np.arange(k) // size
    if spec.desc_act:
        g_idx = g_idx[np.argsort(rng.permutation(k))]  # group j = the j-th run of a random act order
    groups = int(g_idx.max()) + 1
    q, zeros, scales = np.zeros((k, n), np.int64), np.zeros((groups, n), np.int64), np.zeros((groups, n))
    for g in range(groups):
        rows = w[g_idx == g].astype(np.float64)  # [rows, N]
        lo, hi = np.minimum(rows.min(axis=0), 0), np.maximum(rows.max(axis=0), 0)
        if spec.sym:
            hi = np.maximum(-lo, hi)
            scale, zero = 2 * hi / maxq, np.full(n, (maxq + 1) // 2)
        else:
            scale = (hi - lo) / maxq
            zero = np.clip(np.round(-lo / np.where(scale > 0, scale, 1)), 1, maxq).astype(np.int64)  # v1: >= 1
        scale = np.where(scale > 0, scale, 1e-3).astype(np.float16).astype(np.float64)
        q[g_idx == g] = np.clip(np.round(rows / scale) + zero, 0, maxq)
        zeros[g], scales[g] = zero, scale
    w64 = (q - zeros[g_idx]) * scales[g_idx]
    return q, zeros, scales.astype(np.float16), g_idx, w64


def pack(spec: PackedSpec, q, zeros, scales, g_idx) -> dict[str, np.ndarray]:
    if spec.method == "awq":
        return pack_awq(q, zeros, scales)
    return pack_gptq(q, zeros, scales, g_idx, bits=spec.bits, group_size=spec.group_size, version=spec.version)


def write_packed_checkpoint(float_dir: str, out_dir: str, spec: PackedSpec) -> tuple[str, str]:
    """(quantized checkpoint dir, float checkpoint dir of its dequantized weights), both under
    `out_dir`, each with `float_dir`'s tokenizer files."""
    quant_dir, float_out = os.path.join(out_dir, "quantized"), os.path.join(out_dir, "dequantized")
    rng = np.random.default_rng(spec.seed)
    st = SafetensorsFile(os.path.join(float_dir, "model.safetensors"))
    tensors = {name: np.array(st.get(name)) for name in st.names()}
    quantized, dequantized = {}, dict(tensors)
    for module, conv1d in linear_weights(float_dir).items():
        if module == "lm_head" and not spec.lm_head or f"{module}.weight" not in tensors:
            continue  # (a tied head has no tensor of its own)
        weight = tensors.pop(f"{module}.weight")
        w = weight if conv1d else weight.T  # [K, N]
        q, zeros, scales, g_idx, w64 = rtn_quantize(w, spec, rng)
        quantized.update({f"{module}.{role}": a for role, a in pack(spec, q, zeros, scales, g_idx).items()})
        dequantized[f"{module}.weight"] = (w64 if conv1d else w64.T).astype(weight.dtype)
    quantized.update(tensors)
    with open(os.path.join(float_dir, "config.json")) as f:
        config = json.load(f)
    for directory, ts, cfg in ((quant_dir, quantized, {**config, "quantization_config": spec.quantization_config()}),
                               (float_out, dequantized, config)):
        os.makedirs(directory, exist_ok=True)
        save_file(ts, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        for name in os.listdir(float_dir):
            if name.startswith(("tokenizer", "special_tokens", "generation_config")):
                shutil.copy(os.path.join(float_dir, name), directory)
    return quant_dir, float_out
