"""Checks that turn a model that cannot be loaded into one clear sentence, before loading starts.

`model_setup.load_model` runs them in order: the name resolves to a directory (or a reachable hub
repository), the directory has a `config.json` and weights in a format we read, and the
tokenizer loads. Each failure is a `ModelNotFoundError`, or a ValueError for a tokenizer that is
there but cannot be loaded, whose message says what was looked for and what to do instead; the
command line prints it as one line (`pagedjax: error: ...`, exit code 2).
"""

from __future__ import annotations

import os

from models.loader import ORBAX_MARKER, resolve_model_path

# Files any Hugging Face tokenizer directory has at least one of.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model",
                   "vocab.txt", "tekken.json")
# Weight files of other formats, named in the "no weights" message when a directory holds them.
_OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".npz")
_TOKENIZER_ADVICE = ("pass a tokenizer directory or hub id with --tokenizer (tokenizer=... in Python), or "
                     "--skip-tokenizer-init (skip_tokenizer_init=True) and give prompts as token ids")


class ModelNotFoundError(FileNotFoundError, ValueError):
    """A model or tokenizer that names no directory and no reachable hub repository, or a
    directory without what loading needs. Both a FileNotFoundError and a ValueError (the
    command line's one-line errors)."""


def _hub_reason(error: BaseException) -> str:
    """Why the hub did not give us `model`, in a few words."""
    from huggingface_hub import errors

    if isinstance(error, errors.HFValidationError):
        return "not a valid hub id either"
    if isinstance(error, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        return "offline (HF_HUB_OFFLINE is set) and not in the local hub cache"
    if isinstance(error, errors.GatedRepoError):
        return "a gated repository: accept its terms on the hub and log in (hf auth login)"
    if isinstance(error, errors.RepositoryNotFoundError):
        return "no such repository on the hub (or it is private: log in with hf auth login)"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return first_line if len(first_line) <= 160 else first_line[:157] + "..."


def resolve_checkpoint(name: str) -> str:
    """The local directory of `name` (a directory, or a hub id downloaded or found in the hub
    cache); ModelNotFoundError saying why neither worked."""
    try:
        return resolve_model_path(name)
    except ValueError as error:
        if os.path.exists(name):  # a file, not a directory: the loader's own message says so
            raise
        cause = error.__cause__ if error.__cause__ is not None else error
        raise ModelNotFoundError(f"no such directory, and not a hub id we could reach: {name!r} "
                                 f"({_hub_reason(cause)})") from None


def check_checkpoint_dir(model_dir: str) -> None:
    """ModelNotFoundError unless `model_dir` has a `config.json` and weights we can read:
    safetensors (one file or shards with an index) or an orbax checkpoint of `pagedjax convert`."""
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise ModelNotFoundError(f"no config.json in {model_dir!r}: a model directory needs the Hugging Face "
                                 f"checkpoint's config.json, its weights and (usually) its tokenizer files")
    names = os.listdir(model_dir)
    if ORBAX_MARKER in names or any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        return
    others = sorted(n for n in names if n.endswith(_OTHER_WEIGHT_SUFFIXES))
    found = f"; found {others[0]}, a format we do not read: convert it to safetensors" if others else ""
    raise ModelNotFoundError(f"no weights in {model_dir!r}: pagedjax reads safetensors (model.safetensors, or "
                             f"shards listed in model.safetensors.index.json) or an orbax checkpoint written by "
                             f"`pagedjax convert`{found}")


def load_tokenizer(path: str):
    """`AutoTokenizer.from_pretrained(path)`; ModelNotFoundError when `path` has no tokenizer files,
    ValueError naming the remedy when they do not load."""
    if not any(os.path.exists(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise ModelNotFoundError(f"no tokenizer in {path!r} (none of {', '.join(TOKENIZER_FILES[:3])}, ...): "
                                 f"{_TOKENIZER_ADVICE}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as error:  # a missing backend (sentencepiece, tiktoken), a broken file, ...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"the tokenizer in {path!r} did not load ({type(error).__name__}: {first_line}): "
                         f"{_TOKENIZER_ADVICE}") from error
