"""The built-in default model: a tiny random-weight Llama with a trained byte-level BPE tokenizer.

It needs no network and no PyTorch: the tokenizer is trained with `tokenizers` on text that
ships with Python (module docstrings of the standard library), the config is written through
`transformers.LlamaConfig`, and the weights are drawn with numpy (std 0.15, so greedy output
does not collapse into one repeated token) and saved as safetensors. It is built once and
cached under `$PAGEDJAX_CACHE` or the user's cache directory (`~/.cache/pagedjax`).
The tests build their own checkpoints of every architecture with the same tokenizer.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import inspect
import json
import os
import shutil
import tempfile
import warnings

import numpy as np

DEFAULT_MODEL_NAME = "tiny-llama-default"
_FORMAT_VERSION = 1  # bump when the default checkpoint changes, so caches are rebuilt
_CORPUS_MODULES = (
    "os", "json", "collections", "itertools", "functools", "re", "string", "textwrap", "pathlib",
    "typing", "dataclasses", "argparse", "logging", "asyncio", "subprocess", "threading", "random",
    "statistics", "decimal", "fractions", "heapq", "bisect", "csv", "email", "http", "urllib",
    "unittest", "doctest", "pdb", "pickle", "shutil", "tempfile", "datetime", "calendar", "zipfile",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def cache_dir() -> str:
    """Where pagedjax keeps built artefacts ($PAGEDJAX_CACHE, else ~/.cache/pagedjax)."""
    root = os.environ.get("PAGEDJAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pagedjax")
    return root


def training_corpus() -> list[str]:
    """Paragraphs of English and code-ish text from the standard library's docstrings."""
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen of Python
        import this
    zen = "".join(this.d.get(c, c) for c in this.s)
    texts = [zen]
    with warnings.catch_warnings():  # some docstring lookups touch deprecated aliases (typing.io)
        warnings.simplefilter("ignore")
        texts += _module_docstrings()
    return [t for t in texts if t]


def _module_docstrings() -> list[str]:
    texts = []
    for name in _CORPUS_MODULES:
        module = importlib.import_module(name)
        texts.append(inspect.getdoc(module) or "")
        for _, obj in sorted(vars(module).items()):
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == name:
                texts.append(inspect.getdoc(obj) or "")
    return texts


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE `PreTrainedTokenizerFast` with `<s>`/`</s>` and a small chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   chat_template=CHAT_TEMPLATE)


def tiny_llama_config(vocab_size: int, **overrides) -> dict:
    """The HF config dict of the default tiny Llama (2 layers, GQA 4:2, head_dim 16)."""
    from transformers import LlamaConfig

    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                  initializer_range=0.15)
    fields.update(overrides)
    cfg = LlamaConfig(**fields)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = "float32"
    return cfg.to_dict()


def write_random_checkpoint(out_dir: str, hf_config: dict, *, std: float = 0.15, seed: int = 0) -> None:
    """Writes `config.json` and `model.safetensors` with N(0, std) weights (norms at their identity),
    in the checkpoint layout of the config's architecture."""
    from models.config import ModelConfig
    from models.loader import abstract_model, param_name, weight_map
    from models.transformer import init_constant
    from models.safetensors_io import save_file
    from models.weights import export_hf_tensors
    from flax import nnx

    cfg = ModelConfig.from_hf_dict(hf_config)
    _, state = abstract_model(cfg, np.float32)
    rng = np.random.default_rng(seed)
    params = {}
    for path, var in nnx.to_flat_state(state):
        shape = var.get_value().shape
        constant = init_constant(cfg, path)
        params[param_name(path)] = (np.full(shape, constant, np.float32) if constant is not None
                                    else (rng.standard_normal(shape) * std).astype(np.float32))
    tensors = export_hf_tensors(weight_map(cfg), params)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)


def default_model_dir() -> str:
    """Builds (once) and returns the directory of the built-in default checkpoint."""
    target = os.path.join(cache_dir(), f"{DEFAULT_MODEL_NAME}-v{_FORMAT_VERSION}")
    if os.path.exists(os.path.join(target, "model.safetensors")):
        return target
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir(), prefix=".building-")
    try:
        tokenizer = train_tokenizer()
        tokenizer.save_pretrained(tmp)
        write_random_checkpoint(tmp, tiny_llama_config(len(tokenizer)))
        try:
            os.rename(tmp, target)  # atomic: concurrent builders race harmlessly
        except OSError:
            if not os.path.exists(os.path.join(target, "model.safetensors")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
