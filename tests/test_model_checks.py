"""Friendly errors for models that cannot be loaded, from Python (the CLI's are in tests/cli), the
names of the built-in model, and empty prompts."""

from __future__ import annotations

import os
import shutil

import pytest

from pagedjax.config import EngineConfig
from pagedjax.default_model import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, resolve_default_model
from pagedjax.llm import LLM, parse_prompt
from pagedjax.model_checks import ModelNotFoundError, check_checkpoint_dir, load_tokenizer, resolve_checkpoint
from pagedjax.model_setup import load_model

TOKENIZER_NAMES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _copy_default(dst, *, skip=()):
    """A copy of the shipped checkpoint directory without the files named in `skip`."""
    os.makedirs(dst)
    for name in os.listdir(DEFAULT_MODEL_DIR):
        if name not in skip:
            shutil.copy(os.path.join(DEFAULT_MODEL_DIR, name), dst)
    return str(dst)


def test_a_missing_path_says_no_directory_and_no_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match=r"no such directory, and not a hub id we could reach: '.*nope' "
                                                 r"\(not a valid hub id either\)") as info:
        LLM(missing)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    # a well-formed hub id that is not in the cache, offline: the reason says so
    with pytest.raises(ModelNotFoundError, match=r"'someone/not-a-model' \(offline \(HF_HUB_OFFLINE is set\)"):
        resolve_checkpoint("someone/not-a-model")
    with pytest.raises(ModelNotFoundError, match="no such directory"):  # the tokenizer option too
        LLM(tokenizer=missing)


def test_a_file_is_not_a_checkpoint_directory(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; expected a checkpoint directory"):
        resolve_checkpoint(str(path))


def test_a_directory_without_config_json(tmp_path):
    model_dir = _copy_default(tmp_path / "m", skip=("config.json",))
    with pytest.raises(ModelNotFoundError, match=r"no config\.json in '.*m': a model directory needs"):
        LLM(model_dir)


def test_a_directory_without_weights_names_the_formats_we_read(tmp_path):
    model_dir = _copy_default(tmp_path / "m", skip=("model.safetensors",))
    formats = (r"pagedjax reads safetensors \(model\.safetensors, or shards listed in "
               r"model\.safetensors\.index\.json\) or an orbax checkpoint written by `pagedjax convert`")
    with pytest.raises(ModelNotFoundError, match=r"no weights in '.*m': " + formats + "$"):
        LLM(model_dir)
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(ModelNotFoundError, match=r"found pytorch_model\.bin, a format we do not read: convert it"):
        check_checkpoint_dir(model_dir)
    (tmp_path / "m" / "pagedjax_orbax.json").write_text("{}")  # an orbax checkpoint passes the check
    check_checkpoint_dir(model_dir)


def test_a_directory_without_a_tokenizer_suggests_the_options(tmp_path):
    model_dir = _copy_default(tmp_path / "m", skip=TOKENIZER_NAMES)
    with pytest.raises(ModelNotFoundError, match=r"no tokenizer in '.*m' .*--tokenizer .*--skip-tokenizer-init"):
        LLM(model_dir)
    loaded = load_model(EngineConfig(model=model_dir, skip_tokenizer_init=True))  # what the advice says works
    assert loaded.tokenizer is None
    loaded = load_model(EngineConfig(model=model_dir, tokenizer=DEFAULT_MODEL_DIR))
    assert loaded.tokenizer is not None and len(loaded.tokenizer) == loaded.model_config.vocab_size


def test_a_tokenizer_that_does_not_load_is_one_value_error(tmp_path):
    model_dir = _copy_default(tmp_path / "m", skip=TOKENIZER_NAMES)
    (tmp_path / "m" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"the tokenizer in '.*m' did not load \(\w+: .*\): pass a tokenizer "
                                         r"directory or hub id with --tokenizer") as info:
        load_tokenizer(model_dir)
    assert not isinstance(info.value, FileNotFoundError) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", [None, "default", DEFAULT_MODEL_NAME])
def test_the_built_in_model_answers_to_its_names(name):
    assert resolve_default_model(name) == DEFAULT_MODEL_DIR
    loaded = load_model(EngineConfig(model=name))
    assert loaded.model_dir == DEFAULT_MODEL_DIR and loaded.tokenizer is not None


def test_a_directory_named_like_the_default_model_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("default")
    assert resolve_default_model("default") == "default"
    assert resolve_default_model("other") == "other"


@pytest.mark.parametrize("prompt,field", [("", r"\(''\)"), ({"prompt": ""}, r"\(''\)"),
                                          ({"prompt_token_ids": []}, r"\(prompt_token_ids=\[\]\)")])
def test_empty_prompts_are_value_errors_naming_the_field(prompt, field):
    with pytest.raises(ValueError, match="prompt is empty " + field):
        parse_prompt(prompt)
    assert parse_prompt(" ") == (" ", None)  # whitespace is a prompt (vLLM takes it too)
