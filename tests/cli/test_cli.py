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
    assert "tokens/s" in res.stderr
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


def test_bad_model_path_is_a_clear_error(cache, tmp_path):
    res = _run(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"], cache)
    assert res.returncode == 2
    assert "pagedjax: error:" in res.stderr and "could not be fetched" in res.stderr
    assert "Traceback" not in res.stderr
