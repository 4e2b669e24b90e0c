"""The `pagedjax` command line, run as a user would (a subprocess, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _run(args, tmp_path, **env):
    full_env = {**os.environ, "PAGEDJAX_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "pagedjax", *args], capture_output=True, text=True, env=full_env,
                          timeout=600)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


def test_generate_default_model_json(cache):
    res = _run(["generate", "--prompt", "Hello there", "--max-tokens", "7", "--ignore-eos", "--json"], cache)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out) == {"prompt_token_ids", "token_ids", "text"}
    assert len(out["token_ids"]) == 7 and out["prompt_token_ids"][0] == 1  # <s> first
    assert "tokens/s" in res.stderr and "PyTorch was not found" not in res.stderr
    # the module's cache starts cold: a line on stderr says what the wait is; stdout holds the completion alone
    assert "pagedjax: compiling the model's steps (the first run; later runs load them from the cache) ...\n" in (
        res.stderr)
    # greedy: the same command gives the same tokens; the default model is cached after the first run
    again = json.loads(_run(["generate", "--prompt", "Hello there", "--max-tokens", "7", "--ignore-eos", "--json"],
                            cache).stdout)
    assert again == out


def test_generate_matches_llm_api(cache, monkeypatch):
    res = _run(["generate", "--prompt", "Simple is better", "--max-tokens", "5", "--ignore-eos", "--json"], cache)
    out = json.loads(res.stdout)
    monkeypatch.setenv("PAGEDJAX_CACHE", str(cache / "cache"))
    from pagedjax import LLM, SamplingParams
    from pagedjax.default_model import default_model_dir

    (ref,) = LLM(default_model_dir()).generate("Simple is better", SamplingParams(
        temperature=0.0, max_tokens=5, ignore_eos=True), use_tqdm=False)
    assert out["token_ids"] == ref.outputs[0].token_ids and out["text"] == ref.outputs[0].text


def _broken_dir(tmp_path, skip):
    """A copy of the shipped checkpoint without the files in `skip`."""
    import shutil

    from pagedjax.default_model import DEFAULT_MODEL_DIR

    out = tmp_path / "model"
    out.mkdir()
    for name in os.listdir(DEFAULT_MODEL_DIR):
        if name not in skip:
            shutil.copy(os.path.join(DEFAULT_MODEL_DIR, name), out)
    return str(out)


@pytest.mark.parametrize("case,expected", [
    ("missing", "no such directory, and not a hub id we could reach: '{dir}' (not a valid hub id either)"),
    ("no-config", "no config.json in '{dir}'"),
    ("no-weights", "no weights in '{dir}': pagedjax reads safetensors"),
    ("no-tokenizer", "no tokenizer in '{dir}'"),
    ("empty-prompt", "prompt is empty (--prompt '')"),
])
def test_friendly_errors_are_one_line_with_exit_code_2(case, expected, tmp_path, capsys):
    """In-process (`main` returns the exit code); the subprocess below shows the same for a user."""
    from pagedjax.cli import main

    skip = {"no-config": ("config.json",), "no-weights": ("model.safetensors",),
            "no-tokenizer": ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")}.get(case)
    model = str(tmp_path / "nope") if case == "missing" else _broken_dir(tmp_path, skip) if skip else None
    code = main(["generate", "--prompt", "" if case == "empty-prompt" else "x"] + (["--model", model] if model else []))
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith("pagedjax: error: ")
    assert expected.format(dir=model) in err, err
    if case == "no-tokenizer":
        assert "--tokenizer" in err and "--skip-tokenizer-init" in err


def test_a_friendly_error_from_the_shell_has_no_traceback(cache, tmp_path):
    res = _run(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"], cache)
    assert res.returncode == 2 and res.stdout == ""
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("pagedjax: error:")]
    assert errors == [f"pagedjax: error: no such directory, and not a hub id we could reach: "
                      f"'{tmp_path / 'nope'}' (not a valid hub id either)"]
