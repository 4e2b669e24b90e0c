"""`LLM`: the offline entry point, with vLLM's constructor and `generate`."""

from __future__ import annotations

import time
from typing import Any, Sequence

from pagedjax.config import EngineConfig
from pagedjax.engine import LLMEngine
from pagedjax.beam_search import BeamSearchStats, beam_search
from pagedjax.outputs import BeamSearchOutput, RequestOutput
from pagedjax.sampling_params import BeamSearchParams, SamplingParams, as_list


def parse_prompt(prompt: Any) -> tuple[str | None, list[int] | None]:
    """A prompt as (text, token ids): a non-empty string, or a `{"prompt_token_ids": [...]}` dict.
    An empty prompt is a ValueError, as in vLLM (and the server's 400, and the CLI's exit 2)."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty (''): give at least one character, or prompt_token_ids")
        return prompt, None
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
                raise ValueError("prompt_token_ids must be a list of integers")
            if not ids:
                raise ValueError("prompt is empty (prompt_token_ids=[]): give at least one token id")
            return prompt.get("prompt"), list(ids)
        if "prompt" in prompt and isinstance(prompt["prompt"], str):
            return parse_prompt(prompt["prompt"])
    raise ValueError(f"a prompt must be a string or a {{'prompt_token_ids': [...]}} dict, got {type(prompt).__name__}")


class LLM:
    """An offline LLM over the paged engine (vLLM's `LLM`).

    `LLM(model, **options)`: `model` is a checkpoint directory, a Hugging Face hub id, a preset
    (random weights) or None for the built-in default model; `options` are any `EngineConfig`
    fields (vLLM's names and defaults; an unknown one is a TypeError naming it), e.g.:

        dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16".
        block_size: tokens per KV block (8, 16, 32 or 64).
        num_kv_blocks / kv_cache_memory_bytes: the KV pool's size (default: sized from free
            device memory; 1 GiB where the device reports none).
        gpu_memory_utilization: fraction of device memory the weights, activations and KV pool may use.
        max_model_len: context length (default: the model's); prompts longer than it are rejected.
        max_num_seqs, max_num_batched_tokens: sequences / tokens per step at most (default 256 / 8192);
            longer prompts are chunked.
        enable_prefix_caching: reuse KV blocks of identical prompt prefixes (default on).
        async_scheduling: prepare step N+1 on the host while step N runs (default on).
        attention_backend: "auto" (Pallas on GPU, jnp reference elsewhere), "pallas", "reference",
            or "pallas_interpret" (the kernels in interpret mode, for testing on CPU).
        seed, tokenizer, skip_tokenizer_init, tensor_parallel_size, max_logprobs.
    See `pagedjax.config.EngineConfig` for all of them.
    """

    def __init__(self, model: str | None = None, **options: Any):
        unknown = sorted(set(options) - set(EngineConfig.field_names()) - {"model"})
        if unknown:
            raise TypeError(f"LLM() got an unexpected keyword argument {unknown[0]!r} "
                            f"(engine options: {', '.join(EngineConfig.field_names()[1:])})")
        self.engine = LLMEngine(EngineConfig(model=model, **options))

    def get_tokenizer(self):
        return self.engine.tokenizer

    def stats(self) -> dict:
        """Engine counters: num_kv_blocks, num_free_kv_blocks, num_preemptions, prefix_cache_queries,
        prefix_cache_hits (tokens), num_compiles, ..."""
        return self.engine.stats()

    def reset_prefix_cache(self) -> bool:
        """Empties the prefix cache (e.g. between benchmark runs); False while requests run."""
        return self.engine.reset_prefix_cache()

    def precompile(self) -> int:
        """Compiles every step bucket now (start-up warm-up); returns the number compiled."""
        return self.engine.runner.steps.precompile()

    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Generates completions for `prompts` (a prompt or a list of them); outputs in input order."""
        single = isinstance(prompts, (str, dict))
        prompt_list = [prompts] if single else list(prompts)
        params = as_list(sampling_params, len(prompt_list), SamplingParams())
        parsed = [parse_prompt(p) for p in prompt_list]
        engine = self.engine
        # Validate everything before queueing anything, so a bad prompt leaves nothing behind.
        token_ids = [engine.validate_prompt(ids if ids is not None else engine.tokenize(text))
                     for text, ids in parsed]
        for p in params:
            if not isinstance(p, SamplingParams):
                raise ValueError(f"expected SamplingParams, got {type(p).__name__}")
        ids = []
        try:
            for (text, _), toks, p in zip(parsed, token_ids, params):
                rid = engine.next_request_id()
                engine.add_request(rid, text, p, prompt_token_ids=toks)
                ids.append(rid)
            return self._run(ids, use_tqdm)
        except BaseException:
            for rid in ids:
                engine.abort_request(rid)
            raise

    def chat(self, messages, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, *, chat_template: str | None = None, add_generation_prompt: bool = True,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """Generates replies to a conversation (a list of `{"role", "content"}` messages) or a list
        of conversations, through the tokenizer's chat template."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise ValueError("chat needs a tokenizer with a chat template; this model has none")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = []
        for conv in conversations:
            if not isinstance(conv, (list, tuple)) or not all(isinstance(m, dict) and "role" in m for m in conv):
                raise ValueError("a conversation must be a list of {'role': ..., 'content': ...} messages")
            ids = tokenizer.apply_chat_template(list(conv), chat_template=chat_template, tokenize=True,
                                                add_generation_prompt=add_generation_prompt,
                                                **(chat_template_kwargs or {}))
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            prompts.append({"prompt_token_ids": list(ids)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def beam_search(self, prompts, params: BeamSearchParams, *, stats: BeamSearchStats | None = None
                    ) -> list[BeamSearchOutput]:
        """Beam search (vLLM's `LLM.beam_search`): one output per prompt, `.sequences` best first.
        Pass a `BeamSearchStats` to get the peak KV blocks held against beams without sharing."""
        if not isinstance(params, BeamSearchParams):
            raise ValueError(f"expected BeamSearchParams, got {type(params).__name__}")
        single = isinstance(prompts, (str, dict))
        parsed = [parse_prompt(p) for p in ([prompts] if single else list(prompts))]
        engine = self.engine
        token_ids = [engine.validate_prompt(ids if ids is not None else engine.tokenize(text)) for text, ids in parsed]
        return beam_search(engine, token_ids, [text for text, _ in parsed], params, stats)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        wanted = set(request_ids)
        done: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(request_ids), desc="Processed prompts", dynamic_ncols=True)
        start, out_tokens = time.perf_counter(), 0
        while len(done) < len(wanted):
            for out in self.engine.step():
                if out.finished and out.request_id in wanted:
                    done[out.request_id] = out
                    out_tokens += sum(len(c.token_ids) for c in out.outputs)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"output: {out_tokens / (time.perf_counter() - start):.1f} toks/s")
            if not self.engine.has_unfinished_requests() and len(done) < len(wanted):
                raise RuntimeError("engine has no work left but requests did not finish")
        if bar is not None:
            bar.close()
        return [done[rid] for rid in request_ids]
