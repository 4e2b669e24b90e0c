"""Trains the built-in default model: a small Llama on Python's own documentation.

    taskset -c 1 python -m pagedjax.train_default_model --out pagedjax/assets/default_model

(see benchmarks/README.md for the flags the shipped run used and its wall time). Everything is
JAX on the CPU: the model is `models.layers.CausalLM` itself (the engine's Flax layers, with a
dense causal attention over the training window in place of a KV cache), optimised with
optax's AdamW. The corpus is the shipped snapshot (`docs_corpus.shipped_corpus`), so the same
seed gives the same tokenizer and the same weights on the same jax version and CPU; the
figures of the run (losses, tokens seen, wall time, pair shares) go to `training.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models.config import ModelConfig
from models.layers import CausalLM


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Shape of the model and schedule of its training run."""

    seed: int = 0
    vocab_size: int = 2048  # of the byte-level BPE tokenizer trained first
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    max_position_embeddings: int = 1024  # the context the engine allows; training windows are seq_len
    seq_len: int = 256  # tokens per training window
    batch_size: int = 8  # windows per step
    steps: int = 1000
    peak_lr: float = 5e-3
    warmup_steps: int = 60
    final_lr_fraction: float = 0.05  # cosine decay from peak_lr to peak_lr * this
    weight_decay: float = 0.1
    eval_every: int = 50  # steps between held-out evaluations (and log lines)
    save_dtype: str = "float16"  # dtype of the shipped safetensors

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "max_position_embeddings", "seq_len", "batch_size", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 bytes + special tokens), got {self.vocab_size}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(f"seq_len ({self.seq_len}) must be <= max_position_embeddings "
                             f"({self.max_position_embeddings})")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")
        if self.peak_lr <= 0 or not 0 < self.final_lr_fraction <= 1 or self.weight_decay < 0:
            raise ValueError("peak_lr must be > 0, final_lr_fraction in (0, 1], weight_decay >= 0")
        if self.save_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"save_dtype must be float16, bfloat16 or float32, got {self.save_dtype!r}")

    def hf_config(self) -> dict:
        """The checkpoint's `config.json` (a LlamaForCausalLM with tied embeddings)."""
        from pagedjax.default_model import tiny_llama_config

        return tiny_llama_config(
            self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, head_dim=self.hidden_size // self.num_heads,
            max_position_embeddings=self.max_position_embeddings, tie_word_embeddings=True,
            initializer_range=0.02)


class WindowAttention:
    """The `attend` protocol of models/attention.py for training: causal attention over the
    window's own keys (nothing cached; key j is at position j, positions are 0..T-1).

    NOTE: the same result as `models.contiguous_cache.dense_attention` for plain attention, laid
    out for the CPU: K/V repeated to the query heads and heads-major batched matmuls (XLA's CPU
    backend runs the grouped 5-D einsums of `dense_attention` about twice as slowly).
    """

    def attend(self, layer: int, q, k, v, positions, spec, *, alibi_slopes=None, sinks=None):
        del layer, positions
        if not spec.is_plain or alibi_slopes is not None or sinks is not None:
            raise NotImplementedError("training attention supports plain causal attention only")
        seq, group = q.shape[1], q.shape[2] // k.shape[2]
        qh = q.transpose(0, 2, 1, 3)  # [B, Hq, T, D]
        kh = jnp.repeat(k, group, axis=2).transpose(0, 2, 1, 3)  # [B, Hq, T, D]
        vh = jnp.repeat(v, group, axis=2).transpose(0, 2, 1, 3)  # [B, Hq, T, D]
        scores = jnp.einsum("bhtd,bhsd->bhts", qh, kh, preferred_element_type=jnp.float32) * spec.sm_scale
        causal = jnp.tril(jnp.ones((seq, seq), bool))  # [T, S]
        probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)  # [B, Hq, T, S]
        out = jnp.einsum("bhts,bhsd->bhtd", probs.astype(vh.dtype), vh)  # [B, Hq, T, D]
        return out.transpose(0, 2, 1, 3).astype(q.dtype), self  # [B, T, Hq, D]


def token_stream(tokenizer, documents: list[str]) -> np.ndarray:
    """i32[N]: every document as `<s> tokens </s>`, concatenated."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(documents)["input_ids"]  # <s> prepended by the post-processor
    return np.concatenate([np.asarray(doc + [eos], np.int32) for doc in ids])


def epoch_windows(stream: np.ndarray, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """i32[num_windows, seq_len + 1]: the stream cut at a random shift into windows, shuffled."""
    shift = int(rng.integers(0, seq_len))
    count = (len(stream) - shift) // (seq_len + 1)
    windows = stream[shift:shift + count * (seq_len + 1)].reshape(count, seq_len + 1)
    return windows[rng.permutation(count)]


def batches(stream: np.ndarray, cfg: TrainConfig, rng: np.random.Generator):
    """Endless `i32[batch_size, seq_len + 1]` batches, epoch after epoch."""
    while True:
        windows = epoch_windows(stream, cfg.seq_len, rng)
        for start in range(0, len(windows) - cfg.batch_size + 1, cfg.batch_size):
            yield windows[start:start + cfg.batch_size]


def window_loss(model: CausalLM, tokens):
    """Mean next-token cross-entropy of `tokens` i32[B, T + 1]."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # [B, T]
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
    hidden, _ = model(inputs, positions, WindowAttention())  # [B, T, hidden]
    logits = model.compute_logits(hidden)  # f32[B, T, vocab]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW (decay on matrices only) after global-norm clipping, warm-up then cosine decay."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.peak_lr, cfg.warmup_steps, cfg.steps,
                                                  end_value=cfg.peak_lr * cfg.final_lr_fraction)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay, mask=decay_mask))


def make_steps(graphdef, optimizer):
    """(train_step(params, opt_state, tokens) -> (params, opt_state, loss), eval_loss(params, tokens))."""

    def loss_of(params, tokens):
        return window_loss(nnx.merge(graphdef, params), tokens)

    @jax.jit
    def train_step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_of)(params, tokens)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step, jax.jit(loss_of)


def heldout_loss(eval_loss, params, windows: np.ndarray, batch_size: int) -> float:
    """Mean loss over held-out windows `i32[N, T + 1]` (whole batches only; N >= batch_size)."""
    losses = [float(eval_loss(params, windows[i:i + batch_size]))
              for i in range(0, len(windows) - batch_size + 1, batch_size)]
    return float(np.mean(losses))


def train(cfg: TrainConfig, train_stream: np.ndarray, heldout_stream: np.ndarray, log=print):
    """Trains from `cfg.seed`; returns (graphdef, params, figures dict with the loss curve)."""
    for name, stream in (("training", train_stream), ("held-out", heldout_stream)):
        if len(stream) and not 0 <= int(stream.min()) <= int(stream.max()) < cfg.vocab_size:
            raise ValueError(f"{name} token ids must lie in [0, vocab_size={cfg.vocab_size})")
    model_cfg = ModelConfig.from_hf_dict(cfg.hf_config())
    graphdef, params = nnx.split(CausalLM(model_cfg, dtype=jnp.float32, rngs=nnx.Rngs(cfg.seed)))
    optimizer = make_optimizer(cfg)
    opt_state = optimizer.init(params)
    train_step, eval_loss = make_steps(graphdef, optimizer)
    rng = np.random.default_rng(cfg.seed)
    heldout = epoch_windows(heldout_stream, cfg.seq_len, np.random.default_rng(cfg.seed + 1))
    if len(heldout) < cfg.batch_size:
        raise ValueError(f"the held-out text ({len(heldout_stream)} tokens) fills fewer than batch_size "
                         f"({cfg.batch_size}) windows of seq_len + 1 ({cfg.seq_len + 1}) tokens")
    curve, recent, start = [], [], time.perf_counter()
    for step, tokens in zip(range(1, cfg.steps + 1), batches(train_stream, cfg, rng)):
        params, opt_state, loss = train_step(params, opt_state, tokens)
        recent.append(loss)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            train_loss = float(np.mean([float(x) for x in recent]))
            recent = []
            point = dict(step=step, train_loss=round(train_loss, 4),
                         heldout_loss=round(heldout_loss(eval_loss, params, heldout, cfg.batch_size), 4),
                         tokens_seen=step * cfg.batch_size * cfg.seq_len,
                         seconds=round(time.perf_counter() - start, 1))
            curve.append(point)
            log(json.dumps(point))
    figures = dict(curve=curve, final_train_loss=curve[-1]["train_loss"], final_heldout_loss=curve[-1]["heldout_loss"],
                   tokens_seen=cfg.steps * cfg.batch_size * cfg.seq_len,
                   train_seconds=round(time.perf_counter() - start, 1), num_params=model_cfg.num_params())
    return graphdef, params, figures


def completion_params(num_prompts: int, max_tokens: int = 48) -> dict:
    """The sampling settings the default model is scored with: greedy, and temperature 0.8
    with one seed per prompt; both run `max_tokens` tokens past any end of sequence."""
    from pagedjax.sampling_params import SamplingParams

    return dict(greedy=[SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)] * num_prompts,
                sampled=[SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True, seed=seed)
                         for seed in range(num_prompts)])


def score_samples(model_dir: str, reference_pairs, prompts: list[str], max_tokens: int = 48) -> dict:
    """Greedy and sampled completions of `prompts` through `LLM`, with their pair shares."""
    from pagedjax.docs_corpus import pair_share
    from pagedjax.llm import LLM

    llm = LLM(model_dir, max_model_len=256, num_kv_blocks=64, seed=0)
    result = {}
    for name, params in completion_params(len(prompts), max_tokens).items():
        texts = [out.outputs[0].text for out in llm.generate(prompts, params, use_tqdm=False)]
        shares = [pair_share(t, reference_pairs) for t in texts]
        result[name] = dict(mean_pair_share=round(float(np.mean(shares)), 4),
                            samples=[dict(prompt=p, text=t, pair_share=round(s, 4))
                                     for p, t, s in zip(prompts, texts, shares)])
    return result


TRAINING_RECORD = "training.json"  # the run's figures, written next to the checkpoint
SCORE_PROMPTS = ["The quick brown fox", "Return a new", "The module", "If the", "This function"]


def main(argv=None, documents: list[str] | None = None) -> int:
    """The command line; `documents` replaces the shipped corpus (for tests)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--results", default=None, help="also write the run's figures to this JSON file")
    for field in dataclasses.fields(TrainConfig):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    figures = build_default_model(cfg, args.out, documents=documents)
    if args.results:
        with open(args.results, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def build_default_model(cfg: TrainConfig, out_dir: str, log=print, documents: list[str] | None = None) -> dict:
    """Tokenizer, training, checkpoint in `out_dir` and its scores; returns the run's figures.
    `documents` replaces the shipped corpus (tests train on a few documents)."""
    from pagedjax import docs_corpus
    from pagedjax.default_model import save_checkpoint, train_tokenizer

    start = time.perf_counter()
    documents = docs_corpus.shipped_corpus() if documents is None else documents
    train_docs, heldout_docs = docs_corpus.split_corpus(documents)
    tokenizer = train_tokenizer(cfg.vocab_size, corpus=train_docs)
    if len(tokenizer) != cfg.vocab_size:
        raise ValueError(f"the corpus yields {len(tokenizer)} tokens, not vocab_size={cfg.vocab_size}")
    train_stream, heldout_stream = token_stream(tokenizer, train_docs), token_stream(tokenizer, heldout_docs)
    log(f"corpus {docs_corpus.corpus_fingerprint(documents)[:16]}: {len(train_docs)} training documents, "
        f"{len(train_stream):,} tokens; {len(heldout_docs)} held out, {len(heldout_stream):,} tokens")
    graphdef, params, figures = train(cfg, train_stream, heldout_stream, log=log)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    save_checkpoint(out_dir, cfg.hf_config(), params, dtype=cfg.save_dtype)
    pairs = docs_corpus.word_pairs(train_docs)
    figures = dict(config=dataclasses.asdict(cfg), jax_version=jax.__version__, python_version=sys.version.split()[0],
                   corpus_sha256=docs_corpus.corpus_fingerprint(documents), train_tokens=int(len(train_stream)),
                   heldout_tokens=int(len(heldout_stream)),
                   epochs=round(figures["tokens_seen"] / len(train_stream), 2), **figures,
                   heldout_docs_pair_share=round(float(np.mean([docs_corpus.pair_share(d, pairs)
                                                                for d in heldout_docs])), 4),
                   scores=score_samples(out_dir, pairs, SCORE_PROMPTS))
    figures["build_seconds"] = round(time.perf_counter() - start, 1)  # tokenizer, training, export, scoring
    with open(os.path.join(out_dir, TRAINING_RECORD), "w") as f:
        json.dump(figures, f, indent=2)
    log(json.dumps({k: figures["scores"][k]["mean_pair_share"] for k in ("greedy", "sampled")}))
    return figures


if __name__ == "__main__":
    sys.exit(main())
