"""The built-in default model, and the tokenizer and checkpoint helpers the tests share.

`default_model_dir()` returns the checkpoint that ships inside the package
(`pagedjax/assets/default_model/`): a small Llama (4 layers, hidden 192, 2048-token byte-level
BPE vocabulary, float16 safetensors) trained by `python -m pagedjax.train_default_model` on
Python's own documentation (`pagedjax.docs_corpus`), so it writes Python-documentation-like
English. No training, no network and no PyTorch are needed to use it. The checkpoint's
config says float32, so `dtype="auto"` computes in float32 (the stored float16 is cast on load).

The tests build their own tiny random-weight checkpoints of every architecture with
`train_tokenizer()` (512 tokens trained on a few standard-library modules' docstrings) and
`write_random_checkpoint`-style helpers; those stay as they were.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import inspect
import json
import os
import warnings

import numpy as np

DEFAULT_MODEL_NAME = "pydoc-llama"  # what `LLM()` and the server's /v1/models call the built-in model
DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "default_model")
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
    """The test tokenizer's text: the Zen of Python and the docstrings of a few imported
    standard-library modules (the default model's own corpus is `docs_corpus.shipped_corpus`)."""
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


def train_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None):
    """A byte-level BPE `PreTrainedTokenizerFast` with `<s>`/`</s>` and a small chat template,
    trained on `corpus` (default: `training_corpus()`, the tests' tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_corpus() if corpus is None else corpus, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   chat_template=CHAT_TEMPLATE)


def tiny_llama_config(vocab_size: int, **overrides) -> dict:
    """The HF config dict of the tests' tiny Llama (2 layers, GQA 4:2, head_dim 16)."""
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
    from flax import nnx
    from models.config import ModelConfig
    from models.loader import abstract_model, param_name
    from models.transformer import init_constant

    cfg = ModelConfig.from_hf_dict(hf_config)
    _, state = abstract_model(cfg, np.float32)
    rng = np.random.default_rng(seed)
    params = {}
    for path, var in nnx.to_flat_state(state):
        shape = var.get_value().shape
        constant = init_constant(cfg, path)
        params[param_name(path)] = (np.full(shape, constant, np.float32) if constant is not None
                                    else (rng.standard_normal(shape) * std).astype(np.float32))
    save_checkpoint(out_dir, hf_config, params)


def save_checkpoint(out_dir: str, hf_config: dict, params, *, dtype: str = "float32") -> None:
    """Writes `config.json` and `model.safetensors` (tensors cast to `dtype`) from our parameters:
    an `nnx.State` or a `{dotted parameter name: array}` dict, in the checkpoint layout of the
    config's architecture (`models.loader.weight_map`)."""
    from flax import nnx
    from models.config import ModelConfig
    from models.loader import DTYPES, param_name, weight_map
    from models.safetensors_io import save_file
    from models.weights import export_hf_tensors

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(params, dict):
        params = {param_name(path): var.get_value() for path, var in nnx.to_flat_state(params)}
    cast = {}
    for name, value in params.items():
        with np.errstate(over="ignore"):  # checked just below
            cast[name] = np.asarray(value, np.float32).astype(DTYPES[dtype])
        if not np.all(np.isfinite(cast[name])):
            raise ValueError(f"parameter {name} does not fit {dtype} (non-finite after the cast)")
    tensors = export_hf_tensors(weight_map(ModelConfig.from_hf_dict(hf_config)), cast)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)


DEFAULT_MODEL_ALIASES = ("default", DEFAULT_MODEL_NAME)  # names `LLM(...)` / `--model` accept for it


def resolve_default_model(model: str | None) -> str:
    """`model` itself, or the shipped checkpoint's directory for None, "default" or
    DEFAULT_MODEL_NAME (a directory of that name, if there is one, wins)."""
    if model is None or (model in DEFAULT_MODEL_ALIASES and not os.path.isdir(model)):
        return default_model_dir()
    return model


def default_model_dir() -> str:
    """The directory of the built-in checkpoint shipped with the package (nothing is built)."""
    if not os.path.exists(os.path.join(DEFAULT_MODEL_DIR, "model.safetensors")):
        raise FileNotFoundError(
            f"the default model's weights are missing from {DEFAULT_MODEL_DIR} (an incomplete install?); "
            f"rebuild them with: python -m pagedjax.train_default_model --out {DEFAULT_MODEL_DIR}")
    return DEFAULT_MODEL_DIR
