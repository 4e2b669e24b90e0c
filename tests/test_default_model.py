"""The shipped default model: present instantly, well-formed, and writing readable, printable text."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pagedjax import docs_corpus
from pagedjax.default_model import DEFAULT_MODEL_DIR, default_model_dir
from pagedjax.train_default_model import SCORE_PROMPTS, TRAINING_RECORD, completion_params

PROMPTS = SCORE_PROMPTS[:3]  # "The quick brown fox", "Return a new", "The module"
MAX_TOKENS = 40
_CONTROL = {chr(c) for c in range(32) if chr(c) not in "\n\t"} | {"\x7f"}


@pytest.fixture(scope="module")
def reference_pairs():
    return docs_corpus.training_word_pairs()


@pytest.fixture(scope="module")
def llm():
    from pagedjax.llm import LLM

    return LLM(max_model_len=128, num_kv_blocks=64, seed=0)  # no model: the built-in one


def test_default_model_dir_is_shipped_with_no_build_and_no_torch(tmp_path):
    code = ("import json, sys, time\n"
            "from pagedjax.default_model import default_model_dir\n"
            "t = time.perf_counter(); d = default_model_dir()\n"
            "print(json.dumps(dict(dir=d, seconds=time.perf_counter() - t, torch='torch' in sys.modules)))")
    env = {**os.environ, "PAGEDJAX_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out == dict(out, dir=DEFAULT_MODEL_DIR, torch=False) and out["seconds"] < 1
    assert not (tmp_path / "cache").exists()  # nothing built or cached
    assert os.path.dirname(os.path.dirname(DEFAULT_MODEL_DIR)) == os.path.dirname(docs_corpus.__file__)


def test_shipped_checkpoint_is_a_small_float16_llama_with_its_tokenizer():
    from transformers import AutoTokenizer

    from models.config import ModelConfig
    from models.loader import load_params, resolve_dtype
    from models.safetensors_io import SafetensorsFile

    weights = os.path.join(DEFAULT_MODEL_DIR, "model.safetensors")
    assert os.path.getsize(weights) <= 8 * 2**20
    cfg = ModelConfig.from_pretrained(DEFAULT_MODEL_DIR)
    assert cfg.architecture == "LlamaForCausalLM" and 1_000_000 < cfg.num_params() < 8_000_000
    assert {str(SafetensorsFile(weights).dtype(n)) for n in SafetensorsFile(weights).names()} == {"float16"}
    assert resolve_dtype("auto", cfg).dtype == np.float32  # computed in float32
    load_params(cfg, DEFAULT_MODEL_DIR, np.float32)  # strict: every tensor used, every shape right
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    assert len(tok) == cfg.vocab_size and (tok.bos_token_id, tok.eos_token_id) == (1, 2) == (
        cfg.bos_token_id, cfg.eos_token_ids[0])
    assert tok("The module")["input_ids"][0] == 1
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>\nHi</s>\n<|assistant|>\n"


def test_training_record_names_the_shipped_corpus_and_scores():
    with open(os.path.join(DEFAULT_MODEL_DIR, TRAINING_RECORD)) as f:
        record = json.load(f)
    assert record["corpus_sha256"] == docs_corpus.corpus_fingerprint(docs_corpus.shipped_corpus())
    assert record["final_heldout_loss"] < record["curve"][0]["heldout_loss"] - 1.0
    assert min(record["scores"]["greedy"]["mean_pair_share"], record["scores"]["sampled"]["mean_pair_share"]) > 0.4


def test_greedy_and_sampled_text_reads_like_the_docs(llm, reference_pairs):
    for name, params in completion_params(len(PROMPTS), MAX_TOKENS).items():
        texts = [out.outputs[0].text for out in llm.generate(PROMPTS, params, use_tqdm=False)]
        shares = [docs_corpus.pair_share(t, reference_pairs) for t in texts]
        assert np.mean(shares) > 0.4, (name, shares, texts)
        assert all(len(docs_corpus.words(t)) >= 10 for t in texts), (name, texts)  # words, not punctuation
        assert len({w for t in texts for w in docs_corpus.words(t)}) >= 10, (name, texts)  # not one word over


def test_random_tokens_of_the_same_tokenizer_score_low(llm, reference_pairs):
    tok = llm.get_tokenizer()
    rng = np.random.default_rng(0)
    texts = [tok.decode(rng.integers(6, len(tok), MAX_TOKENS).tolist()) for _ in range(len(PROMPTS))]
    assert np.mean([docs_corpus.pair_share(t, reference_pairs) for t in texts]) < 0.2


def test_sampled_output_is_printable(llm):
    from pagedjax.sampling_params import SamplingParams

    prompts = ["The", "import os", "\u00e9t\u00e9 \u2014 caf\u00e9"]  # same batch shape as above: no new compile
    params = [SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, ignore_eos=True, seed=seed) for seed in range(3)]
    texts = [out.outputs[0].text for out in llm.generate(prompts, params, use_tqdm=False)]
    assert all(texts)
    assert not {ch for t in texts for ch in t} & _CONTROL, [t for t in texts if set(t) & _CONTROL]


def test_package_data_carries_every_shipped_file():
    """`pip install .` (non-editable) copies only what pyproject's package-data names."""
    import fnmatch
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["pagedjax"]
    package = os.path.join(root, "pagedjax")
    shipped = [os.path.relpath(os.path.join(d, name), package)
               for d, _, names in os.walk(os.path.join(package, "assets")) for name in names]
    assert "assets/default_model/model.safetensors" in shipped and "assets/python_docs_corpus.json.xz" in shipped
    assert [p for p in shipped if not any(fnmatch.fnmatch(p, g) for g in globs)] == []
    ignored = subprocess.run(["git", "check-ignore", "-q", os.path.join(DEFAULT_MODEL_DIR, "model.safetensors")],
                             cwd=root, capture_output=True)
    assert ignored.returncode == 1  # not ignored: the weights are committed


def test_llm_without_a_model_is_the_shipped_one_and_rejects_empty_prompts(llm):
    from pagedjax.sampling_params import SamplingParams

    assert llm.engine.loaded.model_dir == default_model_dir()
    for prompts in ("", ["The module", ""], [{"prompt": ""}], [{"prompt_token_ids": []}]):
        with pytest.raises(ValueError, match="prompt is empty"):
            llm.generate(prompts, SamplingParams(max_tokens=2), use_tqdm=False)
        assert not llm.engine.has_unfinished_requests()  # nothing was queued
