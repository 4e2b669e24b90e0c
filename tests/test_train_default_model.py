"""The default model's training script, on tiny shapes: attention, data, determinism, export."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.config import ModelConfig
from models.contiguous_cache import dense_attention
from models.layers import CausalLM
from pallas_kernels.attention_spec import AttentionSpec
from pagedjax import train_default_model as tdm

TINY = tdm.TrainConfig(vocab_size=512,  # the test tokenizer's
                       hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                       num_kv_heads=2, max_position_embeddings=64, seq_len=16, batch_size=2, steps=12,
                       warmup_steps=2, eval_every=4, peak_lr=1e-2)


@pytest.fixture(scope="module")
def tokenizer():
    from tests.checkpoints import tokenizer as test_tokenizer

    return test_tokenizer()


@pytest.fixture(scope="module")
def streams(tokenizer):
    docs = ["Return a new list of the items.", "The module provides functions for paths.",
            "If the file does not exist, raise an error."] * 8
    return tdm.token_stream(tokenizer, docs), tdm.token_stream(tokenizer, docs[:6])


@pytest.fixture(scope="module")
def trained(streams):
    """(graphdef, params, figures) of the tiny run."""
    return tdm.train(TINY, *streams, log=lambda _: None)


@pytest.mark.parametrize("seq,heads,kv_heads", [(1, 2, 2), (7, 4, 2), (16, 6, 2), (5, 4, 1)])
def test_window_attention_matches_dense_attention(seq, heads, kv_heads):
    rng = np.random.default_rng(seq)
    q = rng.standard_normal((2, seq, heads, 8))  # [B, T, Hq, D]
    k, v = (rng.standard_normal((2, seq, kv_heads, 8)) for _ in range(2))  # [B, T, Hkv, D]
    positions = np.broadcast_to(np.arange(seq), (2, seq))
    spec = AttentionSpec(sm_scale=8 ** -0.5)
    out, _ = tdm.WindowAttention().attend(0, *(jnp.asarray(x, jnp.float32) for x in (q, k, v)), positions, spec)
    want = dense_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(positions), spec)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-6)
    # float64 numpy reference of the last query row, over every key (causal: all are visible)
    g = heads // kv_heads
    scores = np.einsum("hd,shd->hs", q[1, -1], np.repeat(k[1], g, axis=1)) * 8 ** -0.5
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out)[1, -1], np.einsum("hs,shd->hd", p, np.repeat(v[1], g, axis=1)),
                               atol=1e-5)
    with pytest.raises(NotImplementedError):
        tdm.WindowAttention().attend(0, out, k, v, positions, AttentionSpec(sm_scale=1.0, sliding_window=4))


def test_token_stream_wraps_documents_and_windows_cover_it(tokenizer):
    stream = tdm.token_stream(tokenizer, ["a b", "c"])
    ids = tokenizer(["a b", "c"])["input_ids"]
    assert stream.dtype == np.int32 and stream.tolist() == ids[0] + [2] + ids[1] + [2] and ids[0][0] == 1
    long = np.arange(1000, dtype=np.int32)
    windows = tdm.epoch_windows(long, 15, np.random.default_rng(0))  # [N, 16]
    assert windows.shape[1] == 16 and len(windows) in (61, 62)
    assert all((np.diff(w) == 1).all() for w in windows) and len({int(w[0]) for w in windows}) == len(windows)


@pytest.mark.parametrize("field,value", [("hidden_size", 0), ("steps", 0), ("vocab_size", 100),
                                         ("seq_len", 128), ("warmup_steps", 12), ("peak_lr", 0.0),
                                         ("save_dtype", "int8"), ("num_kv_heads", 3)])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        dataclasses.replace(TINY, **{field: value})


def test_training_rejects_short_heldout_text_and_ids_outside_the_vocabulary(streams):
    with pytest.raises(ValueError, match="held-out text"):
        tdm.train(TINY, streams[0], streams[1][:20], log=lambda _: None)
    with pytest.raises(ValueError, match="vocab_size=300"):
        tdm.train(dataclasses.replace(TINY, vocab_size=300), *streams, log=lambda _: None)


def test_training_lowers_the_loss_and_is_reproducible_from_the_seed(streams, trained):
    _, params, figures = trained
    curve = figures["curve"]
    assert [p["step"] for p in curve] == [4, 8, 12] and figures["tokens_seen"] == 12 * 2 * 16
    assert curve[0]["train_loss"] < np.log(TINY.vocab_size) + 0.5  # starts near an untrained model's loss
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] - 1.0
    assert curve[-1]["heldout_loss"] < curve[0]["heldout_loss"] - 1.0
    _, again, _ = tdm.train(TINY, *streams, log=lambda _: None)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, again)))
    _, other, _ = tdm.train(dataclasses.replace(TINY, seed=1), *streams, log=lambda _: None)
    assert not any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, other)))


def test_exported_checkpoint_loads_with_the_trained_logits(streams, trained, tmp_path):
    from models.loader import load_params
    from pagedjax.default_model import save_checkpoint

    graphdef, params, _ = trained

    save_checkpoint(str(tmp_path), TINY.hf_config(), params, dtype="float16")
    cfg = ModelConfig.from_pretrained(str(tmp_path))
    assert cfg.tie_word_embeddings and cfg.head_dim == 8 and cfg.num_kv_heads == 2
    loaded = nnx.merge(*load_params(cfg, str(tmp_path), jnp.float32))
    tokens = jnp.asarray(streams[0][None, :17])  # [1, 17]
    trained = nnx.merge(graphdef, params)
    positions = jnp.arange(16)[None]
    want = trained.compute_logits(trained(tokens[:, :-1], positions, tdm.WindowAttention())[0])
    got = loaded.compute_logits(loaded(tokens[:, :-1], positions, tdm.WindowAttention())[0])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-2)  # float16 weights
    assert float(tdm.window_loss(loaded, tokens)) == pytest.approx(float(tdm.window_loss(trained, tokens)), abs=1e-2)


def test_save_checkpoint_rejects_values_float16_cannot_hold(tmp_path):
    from pagedjax.default_model import save_checkpoint

    cfg = ModelConfig.from_hf_dict(TINY.hf_config())
    _, state = nnx.split(CausalLM(cfg, rngs=nnx.Rngs(0)))
    big = jax.tree.map(lambda x: x * 1e6, state)
    with pytest.raises(ValueError, match="does not fit float16"):
        save_checkpoint(str(tmp_path), TINY.hf_config(), big, dtype="float16")
    with pytest.raises(ValueError, match="dtype"):
        save_checkpoint(str(tmp_path), TINY.hf_config(), state, dtype="int4")


@pytest.mark.slow
def test_build_default_model_end_to_end(tmp_path):
    """The whole script on a few documents: tokenizer, training, checkpoint, scores through `LLM`."""
    from pagedjax import docs_corpus

    documents = docs_corpus.shipped_corpus()[:50]  # two held out
    out = str(tmp_path / "model")
    code = tdm.main(["--out", out, "--results", str(tmp_path / "run.json"), "--vocab-size", "400",
                     "--hidden-size", "32", "--intermediate-size", "64", "--num-layers", "1", "--num-heads", "2",
                     "--num-kv-heads", "1", "--seq-len", "32", "--batch-size", "2", "--steps", "3",
                     "--warmup-steps", "1", "--eval-every", "3"], documents=documents)
    assert code == 0
    with open(tmp_path / "run.json") as f:
        run = json.load(f)
    with open(os.path.join(out, tdm.TRAINING_RECORD)) as f:
        assert json.load(f) == run
    assert run["config"]["hidden_size"] == 32 and run["tokens_seen"] == 3 * 2 * 32
    assert run["corpus_sha256"] == docs_corpus.corpus_fingerprint(documents)
    for name in ("greedy", "sampled"):
        assert len(run["scores"][name]["samples"]) == len(tdm.SCORE_PROMPTS)
        assert 0.0 <= run["scores"][name]["mean_pair_share"] <= 1.0
    assert sorted(os.listdir(out)) == sorted(["chat_template.jinja", "config.json", "model.safetensors",
                                              tdm.TRAINING_RECORD, "tokenizer.json", "tokenizer_config.json"])
