"""`LLMEngine`: requests in, continuous batching over the paged KV pool, outputs out.

Construction is one pipeline: `EngineConfig` -> `LoadedModel` (model config, tokenizer, mesh,
dtype, parameters; pagedjax/model_setup.py) -> `ModelRunner` (which profiles the memory and
allocates the KV pool) -> `Scheduler` -> `EngineCore` (the step loop) and `OutputProcessor`
(text, stop strings, logprobs, RequestOutputs). `add_request` validates and tokenizes a prompt
and hands the scheduler one request per completion (the others fork from the first at its
first sample); `step()` runs the core one step and returns the `RequestOutput`s of requests
that finished, and of streaming ones that made progress.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Sequence

import jax

from models.quantization.linear import param_bytes
from pagedjax.config import EngineConfig
from pagedjax.engine_core import EngineCore, StepFailed
from pagedjax.logit_controls import ConstraintFactory
from pagedjax.model_setup import LoadedModel, every_layer_window, load_model
from pagedjax.output_processor import OutputProcessor
from pagedjax.outputs import RequestOutput
from pagedjax.runner import ModelRunner
from pagedjax.sampler import CompletionSampling
from pagedjax.sampling_params import SamplingParams
from scheduler.request import Request, StopCriteria
from scheduler.scheduler import Scheduler, SchedulerConfig

logger = logging.getLogger("pagedjax")


class EngineStepError(RuntimeError):
    """A step failed on the device or while preparing it while one request ran alone: that
    request was aborted (`aborted_request_ids`); every other request carries on."""

    def __init__(self, message: str, aborted_request_ids: list[str]):
        super().__init__(message)
        self.aborted_request_ids = aborted_request_ids


def completion_seed(seed: int | None, index: int) -> int | None:
    """Completion `index`'s own seed: the request's for the first, derived ones for the others
    (distinct, reproducible streams)."""
    if seed is None or index == 0:
        return seed
    return hash((seed, index)) & 0x7FFFFFFF


class LLMEngine:
    """The paged, continuously batching inference engine (offline `LLM` and the server use it)."""

    def __init__(self, config: EngineConfig):
        start = time.perf_counter()
        self.config = config
        loaded = load_model(config)
        self.loaded: LoadedModel = loaded
        self.model_config, self.tokenizer, self.mesh = loaded.model_config, loaded.tokenizer, loaded.mesh
        self.max_model_len = loaded.max_model_len
        self.max_num_batched_tokens = config.resolved_max_num_batched_tokens()
        self.platform = jax.default_backend()
        self.backend = config.resolved_backend(self.platform)
        self.eos_token_id, self.extra_eos_ids = loaded.eos_token_id, loaded.extra_eos_ids
        self.runner = ModelRunner(
            loaded.graphdef, loaded.params, loaded.model_config, block_size=config.block_size,
            max_model_len=self.max_model_len, max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens, backend=self.backend, kv_dtype=loaded.dtype,
            seed=config.seed, mesh=self.mesh, kv_cache_dtype=config.kv_cache_dtype, kv_scales=loaded.kv_scales)
        num_blocks = config.num_kv_blocks or self.runner.profile_num_blocks(config.gpu_memory_utilization,
                                                                            config.kv_cache_memory_bytes)
        if num_blocks * config.block_size < self.max_model_len:
            raise ValueError(
                f"The model's max seq len ({self.max_model_len}) is larger than the maximum number of tokens "
                f"that can be stored in KV cache ({num_blocks * config.block_size} = {num_blocks} blocks of "
                f"{config.block_size}). Try increasing gpu_memory_utilization, kv_cache_memory_bytes or "
                f"num_kv_blocks, or decreasing max_model_len.")
        self.runner.allocate_kv_cache(num_blocks)
        self.num_kv_blocks = num_blocks
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len, block_size=config.block_size, num_blocks=num_blocks,
            enable_prefix_caching=config.enable_prefix_caching, sliding_window=every_layer_window(self.model_config)))
        self.core = EngineCore(self.scheduler, self.runner, async_scheduling=config.async_scheduling)
        self.processor = OutputProcessor(self.tokenizer)
        self.constraints = ConstraintFactory(self.tokenizer, self.model_config.vocab_size,
                                             (self.eos_token_id, *self.extra_eos_ids))
        self._constraints: dict = {}  # scheduler request id -> its TokenConstraint (constrained ones)
        self._counter = itertools.count()
        self.load_seconds = loaded.load_seconds
        self.startup_seconds = time.perf_counter() - start

    # --------------------------------------------------------------------------- requests

    def tokenize(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"model {self.config.model!r} has no tokenizer: pass prompt_token_ids")
        return list(self.tokenizer(prompt).input_ids)

    def validate_prompt(self, token_ids: Sequence[int]) -> list[int]:
        """ValueError for an empty prompt, ids outside the vocabulary, or a prompt too long."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("the prompt is empty (0 tokens)")
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if len(ids) > self.max_model_len:
            raise ValueError(f"the prompt ({len(ids)} tokens) is longer than max_model_len ({self.max_model_len}); "
                             f"shorten it or raise max_model_len")
        return ids

    def add_request(self, request_id: str, prompt: str | None, params: SamplingParams, *,
                    prompt_token_ids: Sequence[int] | None = None, stream: bool = False) -> None:
        """Queues a request; its outputs come from `step()`. Invalid input raises ValueError and
        leaves the engine untouched.

        With `n` (or `best_of`) > 1, one scheduler request computes the prompt; when it samples
        its first token the sampler draws one token per completion from the same logits and the
        other completions fork from it, sharing its KV blocks (copy-on-write for the partly
        filled last block).
        """
        if self.processor.has(request_id):
            raise ValueError(f"request id {request_id!r} is already in use")
        if not isinstance(params, SamplingParams):
            raise ValueError(f"expected SamplingParams, got {type(params).__name__}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none")
        self._check_bounds(params)
        if prompt_token_ids is None:
            if prompt is None:
                raise ValueError("either a prompt or prompt_token_ids is required")
            prompt_token_ids = self.tokenize(prompt)
        ids = self.validate_prompt(prompt_token_ids)
        stop = StopCriteria(
            max_tokens=params.max_tokens, min_tokens=params.min_tokens,
            stop_token_ids=frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos
                                                               else frozenset(self.extra_eos_ids)),
            eos_token_id=None if params.ignore_eos else self.eos_token_id)
        suppress = tuple(sorted(stop.stop_token_ids | ({stop.eos_token_id} if stop.eos_token_id is not None
                                                        else set()))) if params.min_tokens else ()
        self.constraints.validate(params)
        requests = []
        for index in range(params.num_samples):
            seq_id = request_id if params.num_samples == 1 else f"{request_id}#{index}"
            constraint = self.constraints.build(params)
            sampling = CompletionSampling(params, completion_seed(params.seed, index), suppress, constraint)
            request = Request(seq_id, ids, stop, sampling_params=sampling)
            if constraint is not None:
                self._constraints[seq_id] = constraint
                request.needs_host_feedback = constraint.needs_host_feedback
            requests.append(request)
        parent = requests[0]
        parent.fork_children = requests[1:]
        # NOTE: prompt logprobs need every prompt position computed: no prefix-cache hit.
        parent.skip_prefix_cache = params.prompt_logprobs is not None
        self.scheduler.add_request(parent)
        self.processor.add_request(request_id, prompt, ids, params, requests, stream)

    def _check_bounds(self, params: SamplingParams) -> None:
        """ValueError naming the field for values the engine cannot serve: more completions than
        sequences per step (vLLM's rule), token ids outside the vocabulary, too many logprobs.
        Nothing a request sends may fail a shared step."""
        if params.num_samples > self.config.max_num_seqs:
            field = "best_of" if params.best_of is not None and params.best_of > params.n else "n"
            raise ValueError(f"SamplingParams.{field} ({params.num_samples}) must be <= max_num_seqs "
                             f"({self.config.max_num_seqs})")
        vocab = self.model_config.vocab_size
        bad = [t for t in params.stop_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"SamplingParams.stop_token_ids: {bad[0]} is outside the vocabulary [0, {vocab})")
        for field in ("logprobs", "prompt_logprobs"):
            value = getattr(params, field)
            if value is not None and value > self.config.max_logprobs:
                raise ValueError(f"SamplingParams.{field} ({value}) is larger than max_logprobs "
                                 f"({self.config.max_logprobs})")

    def abort_request(self, request_id: str) -> bool:
        """Stops a request (all its completions) and frees its KV blocks. False if unknown."""
        if not self.processor.has(request_id):
            return False
        for seq_id in self.processor.completion_ids(request_id):
            self.scheduler.abort_request(seq_id)
            self._constraints.pop(seq_id, None)
        self.processor.abort(request_id)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.processor.num_unfinished > 0

    @property
    def num_unfinished_requests(self) -> int:
        return self.processor.num_unfinished

    def next_request_id(self) -> str:
        return str(next(self._counter))

    # --------------------------------------------------------------------------- the loop

    @property
    def step_observers(self) -> list:
        """Callables run with each step's SchedulerOutput right after scheduling (metrics, benchmarks)."""
        return self.core.step_observers

    def step(self) -> list[RequestOutput]:
        """Runs one engine step; returns outputs of finished requests and of streaming ones that
        made progress (cumulative text and tokens)."""
        try:
            done = self.core.step()
        except StepFailed as failure:
            return self._after_failure(failure)
        if done is None:
            return []
        constraints = self._constraints
        if constraints:
            for seq_id, tokens in done.update.new_token_ids.items():
                if seq_id in constraints:
                    constraints[seq_id].accept(tokens[0])
            for request in done.update.finished:
                constraints.pop(request.request_id, None)
        processed = self.processor.process(done.update, done.runner_output)
        for seq_id, stop in processed.stopped:
            self._constraints.pop(seq_id, None)
            if stop is None:  # its output processing failed
                self.scheduler.abort_request(seq_id)
            else:
                self.scheduler.finish_request(seq_id, stop)
        return processed.outputs

    def _after_failure(self, failure: StepFailed) -> list[RequestOutput]:
        """A step failed and the core recovered: its requests recompute (nothing is lost), each
        alone first; a request that fails again, alone, is the culprit: it alone is aborted,
        with the error (EngineStepError)."""
        lost = [rid for rid in failure.lost_request_ids if self.processor.group_of(rid) is not None]
        request = self.scheduler.get_request(lost[0]) if len(lost) == 1 else None
        if request is None or request.num_failed_steps < 2:
            logger.warning("%s; recomputing its %d requests, each alone first", failure, len(lost))
            return []
        culprit = self.processor.group_of(lost[0])
        self.abort_request(culprit)
        raise EngineStepError(f"{failure} on request {culprit} alone; aborted it", [culprit]) from failure.error

    def reset_prefix_cache(self) -> bool:
        """Empties the prefix cache (vLLM's `reset_prefix_cache`); False while requests hold blocks."""
        return self.scheduler.reset_prefix_cache()

    # --------------------------------------------------------------------------- stats

    @property
    def num_steps(self) -> int:
        return self.core.num_steps

    @property
    def host_seconds(self) -> float:
        """Host time of the steps so far (scheduling, input preparation, output processing):
        step() time not spent waiting for the device."""
        return self.core.host_seconds

    @property
    def profile(self) -> dict:
        return self.runner.profile

    def stats(self) -> dict:
        """Counters: KV blocks, preemptions, prefix-cache queries/hits (tokens), compiles, timing,
        and `param_bytes`: the bytes of the model's parameters (quantized arrays as stored)."""
        s = dict(self.scheduler.stats())
        s.update(kv_cache_dtype=self.config.kv_cache_dtype, kv_bytes_per_block=self.runner.bytes_per_block(),
                 num_compiles=self.runner.steps.num_compiles, compile_seconds=self.runner.steps.compile_seconds,
                 num_steps=self.num_steps, host_seconds=self.host_seconds, attention_backend=self.backend,
                 max_model_len=self.max_model_len, startup_seconds=self.startup_seconds,
                 load_seconds=self.load_seconds, tensor_parallel_size=self.config.tensor_parallel_size,
                 async_scheduling=self.config.async_scheduling, param_bytes=param_bytes(self.loaded.params))
        return s
