"""The engine loop: requests in, continuous batching over the paged KV pool, outputs out.

`LLMEngine.add_request` validates and tokenizes a prompt and hands one scheduler request per
completion to the `Scheduler`; `step()` schedules, runs the model (`ModelRunner`), feeds the
sampled tokens back (`Scheduler.update`), detokenizes and returns `RequestOutput`s of the
requests that finished, and of streaming requests that made progress.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np

from models.config import ModelConfig
from models.loader import load_params, resolve_dtype, resolve_model_path
from models.presets import PRESETS, preset_config, random_params
from models.sharding import check_tensor_parallel, make_mesh, param_sharding_fn, pool_kv_heads
from pagedjax.config import EngineConfig
from pagedjax.detokenizer import IncrementalDetokenizer
from pagedjax.outputs import CompletionOutput, Logprob, RequestOutput
from pagedjax.runner import ModelRunner, SampleRows, SamplingRow
from pagedjax.sampling_params import SamplingParams
from scheduler.request import Request, StopCriteria, check_stop
from scheduler.scheduler import Scheduler, SchedulerConfig

logger = logging.getLogger("pagedjax")
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


@dataclasses.dataclass(eq=False)
class _Completion:
    """Engine-side state of one completion (one scheduler request)."""

    seq_id: str
    group: "_Group"
    index: int
    row: SamplingRow
    detok: IncrementalDetokenizer | None  # live when streaming or stop strings need text
    suppress_ids: tuple[int, ...]  # forbidden while fewer than min_tokens were generated
    token_ids: list[int] = dataclasses.field(default_factory=list)
    cumulative_logprob: float = 0.0
    logprobs: list | None = None
    pending_children: list = dataclasses.field(default_factory=list)  # completions forking at the first sample
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclasses.dataclass(eq=False)
class _Group:
    """One user request: a prompt and its completions."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    stream: bool
    stop: StopCriteria | None = None
    completions: list[_Completion] = dataclasses.field(default_factory=list)
    num_cached_tokens: int = 0
    arrival_time: float = 0.0
    first_token_time: float | None = None
    special: bool = False  # uses min_tokens or penalties
    prompt_logprobs: list | None = None  # [None, {token: Logprob}, ...] when asked for

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.completions)


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache (under pagedjax's cache dir) unless the user
    configured one, so a second start-up skips compilation."""
    from pagedjax.default_model import cache_dir

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache_dir(), "xla"))


def device_memory_stats(devices) -> list[dict | None]:
    """Each device's `memory_stats()` (None where the platform reports none, e.g. CPU)."""
    return [d.memory_stats() if hasattr(d, "memory_stats") else None for d in devices]


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _generation_eos_ids(model_dir: str) -> tuple[int, ...]:
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.exists(path):
        return ()
    with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


class EngineStepError(RuntimeError):
    """A step failed on the device or while preparing it; every request was aborted (ids in
    `aborted_request_ids`) and the engine is ready for new requests."""

    def __init__(self, message: str, aborted_request_ids: list[str]):
        super().__init__(message)
        self.aborted_request_ids = aborted_request_ids


class LLMEngine:
    """The paged, continuously batching inference engine (offline `LLM` and the server use it)."""

    def __init__(self, config: EngineConfig):
        start = time.perf_counter()
        enable_compilation_cache()
        self.config = config
        is_preset = config.model in PRESETS and not os.path.isdir(config.model)
        if is_preset:  # real shapes, random weights made on the device, no tokenizer
            model_dir = None
            self.model_config = cfg = preset_config(config.model)
        else:
            model_dir = resolve_model_path(config.model)
            self.model_config = cfg = ModelConfig.from_pretrained(model_dir)
        # Tensor parallelism: the mesh and the parameters' shardings (None on one device).
        self.mesh, sharding_for = self._tensor_parallel(cfg, config.tensor_parallel_size)
        tokenizer_path = resolve_model_path(config.tokenizer) if config.tokenizer else model_dir
        load_tokenizer = tokenizer_path and not config.skip_tokenizer_init
        self.tokenizer = _load_tokenizer(tokenizer_path) if load_tokenizer else None
        self.max_model_len = self._resolve_max_model_len(cfg, config.max_model_len)
        self.max_num_batched_tokens = config.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
        dtype = resolve_dtype(config.dtype, cfg)
        self.platform = jax.default_backend()
        self.backend = config.resolved_backend(self.platform)
        if is_preset:
            graphdef, params = random_params(cfg, dtype, seed=config.seed, sharding_for=sharding_for)
        else:  # safetensors, or an orbax checkpoint of `pagedjax convert`
            graphdef, params = load_params(cfg, model_dir, dtype, sharding_for=sharding_for)
        self.load_seconds = time.perf_counter() - start
        self.profile: dict = {}
        num_blocks = config.num_kv_blocks or self._profile_num_blocks(graphdef, params, cfg, dtype)
        if num_blocks * config.block_size < self.max_model_len:
            raise ValueError(
                f"The model's max seq len ({self.max_model_len}) is larger than the maximum number of tokens "
                f"that can be stored in KV cache ({num_blocks * config.block_size} = {num_blocks} blocks of "
                f"{config.block_size}). Try increasing gpu_memory_utilization or num_kv_blocks, or decreasing "
                f"max_model_len.")
        self.runner = ModelRunner(
            graphdef, params, cfg, num_blocks=num_blocks, block_size=config.block_size,
            max_model_len=self.max_model_len, max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens, backend=self.backend, kv_dtype=dtype,
            seed=config.seed, mesh=self.mesh)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len, block_size=config.block_size, num_blocks=num_blocks,
            enable_prefix_caching=config.enable_prefix_caching))
        self.num_kv_blocks = num_blocks
        tok_eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        self.eos_token_id = tok_eos if tok_eos is not None else (cfg.eos_token_ids or (None,))[0]
        extra = set(_generation_eos_ids(model_dir) if model_dir else ()) | set(cfg.eos_token_ids)
        self.extra_eos_ids = tuple(sorted(extra - {self.eos_token_id}))
        self._groups: dict[str, _Group] = {}
        self._completions: dict[str, _Completion] = {}
        self._counter = itertools.count()
        self._num_special_rows = 0  # live groups using min_tokens or penalties (slower row set-up)
        # Callables run with each step's SchedulerOutput right after scheduling (metrics, benchmarks).
        self.step_observers: list = []
        self.num_steps = 0
        self.host_seconds = 0.0  # schedule + input preparation + output processing
        self.startup_seconds = time.perf_counter() - start

    # --------------------------------------------------------------------------- set-up

    @staticmethod
    def _tensor_parallel(cfg: ModelConfig, tp: int):
        """(mesh, sharding_for) for `tp` devices; (None, None) for one. ValueError when `cfg` cannot
        be split `tp` ways or there are fewer than `tp` devices."""
        if tp == 1:
            return None, None
        mesh = make_mesh(tp)
        check_tensor_parallel(cfg, tp)
        return mesh, param_sharding_fn(cfg, mesh)

    @staticmethod
    def _resolve_max_model_len(cfg: ModelConfig, requested: int | None) -> int:
        derived = cfg.max_position_embeddings
        if cfg.sliding_window is not None and cfg.sliding_window < derived:
            # NOTE: the kernels attend to the whole context; beyond the window that would differ
            # from the model's definition, so the context is capped at the window (as vLLM once did).
            logger.warning("sliding_window %d < max_position_embeddings %d: capping max_model_len to %d",
                           cfg.sliding_window, derived, cfg.sliding_window)
            derived = cfg.sliding_window
        if requested is None:
            return derived
        if requested > derived:
            raise ValueError(f"max_model_len ({requested}) is larger than the model's maximum context "
                             f"({derived}: max_position_embeddings or sliding window)")
        return requested

    def _profile_num_blocks(self, graphdef, params, cfg: ModelConfig, dtype) -> int:
        """KV blocks that fit in device memory: `gpu_memory_utilization` of the memory JAX may use,
        minus what is in use (the weights) and the largest step's temporaries (from its compiled
        memory analysis against a one-block pool). Devices that report no memory (CPU) get
        `cpu_kv_cache_bytes` for the whole pool, and never more blocks than `max_num_seqs`
        full-length sequences need.

        With tensor parallelism every device holds 1/N of each block and the tightest device
        decides (and, over several hosts, the tightest host: every process must build the same pool).
        """
        tp = self.config.tensor_parallel_size
        # whole-pool bytes of one block (replicated KV heads included), and one device's share
        bytes_per_block = (2 * cfg.num_layers * pool_kv_heads(cfg, tp) * cfg.head_dim * np.dtype(dtype).itemsize
                           * self.config.block_size)
        device_bytes_per_block = bytes_per_block // tp
        max_useful = -(-self.max_model_len // self.config.block_size) * self.config.max_num_seqs
        devices = [jax.devices()[0]] if self.mesh is None else [
            d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        stats = device_memory_stats(devices)
        if not all(st and "bytes_limit" in st for st in stats):
            return max(1, min(self.config.cpu_kv_cache_bytes // bytes_per_block, max_useful))
        probe = ModelRunner(graphdef, params, cfg, num_blocks=1, block_size=self.config.block_size,
                            max_model_len=self.max_model_len, max_num_seqs=self.config.max_num_seqs,
                            max_num_batched_tokens=self.max_num_batched_tokens, backend=self.backend,
                            kv_dtype=dtype, mesh=self.mesh)
        largest = probe.step_shape(probe.token_buckets[-1], 1, probe.max_blocks_per_seq, False)
        temp = probe.step_memory(largest)["temp_bytes"]  # per device for a partitioned step
        del probe
        stats = device_memory_stats(devices)
        usable = [st["bytes_limit"] * self.config.gpu_memory_utilization - st["bytes_in_use"] for st in stats]
        tightest = stats[int(np.argmin(usable))]
        free = min(usable) - temp
        self.profile = dict(bytes_limit=tightest["bytes_limit"], bytes_in_use=tightest["bytes_in_use"],
                            step_temp_bytes=temp, bytes_per_block=device_bytes_per_block)
        num_blocks = max(0, min(int(free // device_bytes_per_block), max_useful))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            num_blocks = int(np.min(multihost_utils.process_allgather(np.int64(num_blocks))))
        return num_blocks

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
        if request_id in self._groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not isinstance(params, SamplingParams):
            raise ValueError(f"expected SamplingParams, got {type(params).__name__}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none")
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
        group = _Group(request_id, prompt, ids, params, stream, arrival_time=time.perf_counter(), stop=stop)
        if params.prompt_logprobs is not None:
            group.prompt_logprobs = [None]
        live_text = params.detokenize and self.tokenizer is not None and (stream or bool(params.stop))
        for index in range(params.num_samples):
            seq_id = request_id if params.num_samples == 1 else f"{request_id}#{index}"
            seed = params.seed
            if seed is not None and index:
                seed = hash((seed, index)) & 0x7FFFFFFF  # distinct, reproducible stream per completion
            row = SamplingRow(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                              min_p=params.min_p, presence_penalty=params.presence_penalty,
                              frequency_penalty=params.frequency_penalty,
                              repetition_penalty=params.repetition_penalty, seed=seed,
                              wants_logprobs=params.logprobs is not None)
            detok = self._detokenizer(ids, params) if live_text else None
            group.completions.append(_Completion(seq_id, group, index, row, detok, suppress,
                                                 logprobs=[] if params.logprobs is not None else None))
        parent = group.completions[0]
        parent.pending_children = group.completions[1:]
        request = Request(parent.seq_id, ids, stop)
        # NOTE: prompt logprobs need every prompt position computed: no prefix-cache hit.
        request.skip_prefix_cache = params.prompt_logprobs is not None
        self.scheduler.add_request(request)
        self._groups[request_id] = group
        for comp in group.completions:
            self._completions[comp.seq_id] = comp
        if suppress or group.completions[0].row.uses_penalties:
            group.special = True
            self._num_special_rows += 1

    def _detokenizer(self, prompt_ids, params: SamplingParams) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, prompt_ids, skip_special_tokens=params.skip_special_tokens,
                                      stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output)

    def abort_request(self, request_id: str) -> bool:
        """Stops a request (all its completions) and frees its KV blocks. False if unknown."""
        group = self._groups.get(request_id)
        if group is None:
            return False
        for comp in group.completions:
            self.scheduler.abort_request(comp.seq_id)
            if comp.finish_reason is None:
                comp.finish_reason = "abort"
        self._forget(group)
        return True

    def _forget(self, group: _Group) -> None:
        """Drops a finished or aborted request's engine-side state."""
        if self._groups.pop(group.request_id, None) is None:
            return
        for comp in group.completions:
            self._completions.pop(comp.seq_id, None)
        if group.special:
            self._num_special_rows -= 1

    def has_unfinished_requests(self) -> bool:
        return bool(self._groups)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._groups)

    # --------------------------------------------------------------------------- the loop

    def step(self) -> list[RequestOutput]:
        """Runs one engine step; returns outputs of finished requests and of streaming ones that
        made progress (cumulative text and tokens)."""
        t0 = time.perf_counter()
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            self.scheduler.update(sched, {})
            return []
        for observe in self.step_observers:
            observe(sched)
        comps = self._completions
        batch = [comps[s.request_id] for s in sched.scheduled]
        try:
            rows, forks = self._sample_rows(sched.scheduled, batch)
            next_after = self._prompt_logprob_targets(sched.scheduled, batch)
            self.runner.copy_blocks(sched.blocks_to_copy)
            shape, inputs, sampling = self.runner.prepare_inputs(sched.scheduled, rows, next_after)
            t1 = time.perf_counter()
            result = self.runner.execute(shape, inputs, sampling, len(rows.params), sched.num_batched_tokens)
        except Exception as error:
            aborted = self._reset_after_failure(sched)
            raise EngineStepError(f"engine step failed ({error!r}); aborted {len(aborted)} requests",
                                  aborted) from error
        t2 = time.perf_counter()
        sampled = {s.request_id: [tok] for s, tok in zip(sched.scheduled, result.token_ids.tolist()) if s.sample}
        update = self.scheduler.update(sched, sampled)
        if next_after is not None:
            self._record_prompt_logprobs(sched.scheduled, batch, result)
        outputs = self._process(sched, batch, result, update, forks)
        self.num_steps += 1
        self.host_seconds += (t1 - t0) + (time.perf_counter() - t2)
        return outputs

    def _reset_after_failure(self, sched) -> list[str]:
        """A step failed between scheduling and its results: the KV pool may be lost (it was
        donated), so every request is aborted, the scheduler starts afresh (no prefix cache over
        lost contents) and the runner gets a fresh pool. Returns the aborted request ids."""
        aborted = list(self._groups)
        for request_id in aborted:
            self.abort_request(request_id)
        self.scheduler.update(sched, {})  # closes the step: its requests are all aborted
        self.scheduler = Scheduler(self.scheduler.config)
        self.runner.reset_after_failure()
        return aborted

    def reset_prefix_cache(self) -> bool:
        """Empties the prefix cache (vLLM's `reset_prefix_cache`); False while requests hold blocks."""
        return self.scheduler.reset_prefix_cache()

    def _sample_rows(self, scheduled, batch) -> tuple[SampleRows, list]:
        """One sampler row per scheduled sequence, plus one per child of a request forking now."""
        n = len(batch)
        rows = SampleRows(seq_index=list(range(n)), params=[c.row for c in batch],
                          sample_index=[len(c.token_ids) for c in batch])
        forks = []  # (sampler row, parent completion, child completion)
        for i, (s, comp) in enumerate(zip(scheduled, batch)):
            if s.sample and comp.pending_children:
                for child in comp.pending_children:
                    forks.append((len(rows.params), comp, child))
                    rows.seq_index.append(i)
                    rows.params.append(child.row)
                    rows.sample_index.append(0)
        members = batch + [child for _, _, child in forks] if forks else batch
        if self._num_special_rows:  # some live request uses min_tokens or penalties
            if any(c.suppress_ids for c in members):
                rows.suppress = [c.suppress_ids if len(c.token_ids) < c.group.params.min_tokens else ()
                                 for c in members]
            if any(c.row.uses_penalties for c in members):
                rows.histories = [(c.group.prompt_token_ids, c.token_ids) if c.row.uses_penalties else None
                                  for c in members]
        return rows, forks

    def _prompt_logprob_targets(self, scheduled, batch) -> list[int] | None:
        """For steps computing prompt logprobs: each sequence's token after its chunk (0 if none)."""
        if not any(c.group.prompt_logprobs is not None for c in batch):
            return None
        out = []
        for s in scheduled:
            tokens = self.scheduler.get_request(s.request_id).all_token_ids
            end = s.start_position + len(s.token_ids)
            out.append(tokens[end] if end < len(tokens) else 0)
        return out

    def _record_prompt_logprobs(self, scheduled, batch, result) -> None:
        top_ids, top_lp, target_lp, ranks = result.prompt
        offset = 0
        for s, comp in zip(scheduled, batch):
            group, n = comp.group, len(s.token_ids)
            plp = group.prompt_logprobs
            if plp is not None and comp.index == 0:
                k = group.params.prompt_logprobs
                num_prompt = len(group.prompt_token_ids)
                for j in range(n):
                    p = s.start_position + j  # this position's logits predict prompt token p + 1
                    if p + 1 < num_prompt and p + 1 == len(plp):  # each position once (recompute-safe)
                        token = group.prompt_token_ids[p + 1]
                        plp.append(self._logprob_entry(top_ids[offset + j], top_lp[offset + j], token,
                                                       float(target_lp[offset + j]), int(ranks[offset + j]), k))
            offset += n

    def _process(self, sched, batch, result, update, forks) -> list[RequestOutput]:
        now = None
        touched: dict[str, _Group] = {}
        new_tokens = update.new_token_ids
        for i, (s, comp) in enumerate(zip(sched.scheduled, batch)):
            tokens = new_tokens.get(s.request_id)
            if not tokens:
                continue
            group = comp.group
            if group.first_token_time is None:
                now = now or time.perf_counter()
                group.first_token_time = now
                req = self.scheduler.get_request(comp.seq_id)
                group.num_cached_tokens = req.num_cached_tokens if req is not None else group.num_cached_tokens
            try:
                self._append(comp, tokens, result, i)
            except Exception:  # one request's output processing must not fail the others
                logger.exception("output processing failed for request %s; aborting it", comp.seq_id)
                comp.finish_reason, comp.stop_reason = "abort", None
                self.scheduler.abort_request(comp.seq_id)
            if group.stream or comp.finish_reason is not None:
                touched[group.request_id] = group
        for req in update.finished:
            comp = self._completions.get(req.request_id)
            if comp is None or comp.finish_reason is not None:
                continue
            comp.finish_reason, comp.stop_reason = req.finish_reason, req.stop_reason
            touched[comp.group.request_id] = comp.group
        for row, parent, child in forks:
            self._fork(row, parent, child, result)
            touched[child.group.request_id] = child.group
        outputs = []
        for group in touched.values():
            finished = group.finished
            if finished:
                self._forget(group)
            if group.stream or finished:
                outputs.append(self._request_output(group, finished))
        return outputs

    def _append(self, comp: _Completion, tokens: list[int], result, row: int) -> None:
        """Records a completion's new token(s): logprobs, text, stop strings."""
        comp.token_ids.extend(tokens)
        comp.cumulative_logprob += result.logprob_list[row]
        if comp.logprobs is not None:
            comp.logprobs.append(self._logprob_entry(
                result.top_ids[row], result.top_logprobs[row], tokens[0], float(result.logprobs[row]),
                int(result.ranks[row]), comp.group.params.logprobs))
        if comp.detok is not None:
            comp.detok.push(tokens)
            if comp.detok.stop_string is not None and comp.finish_reason is None:
                comp.finish_reason, comp.stop_reason = "stop", comp.detok.stop_string
                self.scheduler.abort_request(comp.seq_id)

    def _fork(self, row: int, parent: _Completion, child: _Completion, result) -> None:
        """Starts `child` from the parent's prompt with its own first token, sharing the parent's
        KV blocks when the parent still holds them (else it recomputes, hitting the prefix cache)."""
        parent.pending_children = []
        group = child.group
        token = int(result.token_ids[row])
        request = Request(child.seq_id, group.prompt_token_ids, group.stop, output_token_ids=[token])
        if self.scheduler.get_request(parent.seq_id) is not None:
            finished = self.scheduler.fork_request(parent.seq_id, request)
        else:  # the parent finished on its first token
            finished = check_stop(request, self.max_model_len)
            if not finished:
                self.scheduler.add_request(request)
        self._append(child, [token], result, row)
        if finished and child.finish_reason is None:
            child.finish_reason, child.stop_reason = request.finish_reason, request.stop_reason
        elif child.finish_reason is not None and not finished:
            self.scheduler.abort_request(child.seq_id)  # a stop string on its first token

    def _logprob_entry(self, top_ids, top_lp, token: int, token_lp: float, rank: int, k: int) -> dict:
        """{token id: Logprob} with the top `k` tokens and the given token (always included)."""
        decode = (lambda t: self.tokenizer.decode([t])) if self.tokenizer is not None else (lambda t: None)
        entry = {}
        for r, (tid, lp) in enumerate(zip(top_ids[:k], top_lp[:k]), start=1):
            entry[int(tid)] = Logprob(float(lp), r, decode(int(tid)))
        if token not in entry:
            entry[token] = Logprob(token_lp, rank, decode(token))
        return entry

    def _completion_text(self, comp: _Completion) -> str:
        if not comp.group.params.detokenize or self.tokenizer is None:
            return ""
        if comp.detok is None:  # decode once, at the end
            comp.detok = self._detokenizer(comp.group.prompt_token_ids, comp.group.params)
            comp.detok.push(comp.token_ids)
        return comp.detok.text

    def _request_output(self, group: _Group, finished: bool) -> RequestOutput:
        comps = group.completions
        if finished and len(comps) > group.params.n:  # best_of: keep the n most likely
            comps = sorted(comps, key=lambda c: c.cumulative_logprob, reverse=True)[: group.params.n]
        outs = [CompletionOutput(index=i if finished else c.index, text=self._completion_text(c),
                                 token_ids=list(c.token_ids), cumulative_logprob=c.cumulative_logprob,
                                 logprobs=c.logprobs, finish_reason=c.finish_reason, stop_reason=c.stop_reason)
                for i, c in enumerate(comps)]
        return RequestOutput(group.request_id, group.prompt, group.prompt_token_ids, outs, finished,
                             prompt_logprobs=group.prompt_logprobs, num_cached_tokens=group.num_cached_tokens)

    def next_request_id(self) -> str:
        return str(next(self._counter))

    # --------------------------------------------------------------------------- stats

    def stats(self) -> dict:
        """Counters: KV blocks, preemptions, prefix-cache queries/hits (tokens), compiles, timing."""
        s = dict(self.scheduler.stats())
        s.update(num_compiles=self.runner.num_compiles, compile_seconds=self.runner.compile_seconds,
                 num_steps=self.num_steps, host_seconds=self.host_seconds, attention_backend=self.backend,
                 max_model_len=self.max_model_len, startup_seconds=self.startup_seconds,
                 load_seconds=self.load_seconds, tensor_parallel_size=self.config.tensor_parallel_size)
        return s
