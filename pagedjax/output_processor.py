"""`OutputProcessor`: from engine steps to `RequestOutput`s.

It owns what the scheduler does not: detokenization (incremental, for streaming and stop
strings), stop-string detection, logprob entries (sampled and prompt), n / best_of
aggregation of a request's completions, and building `RequestOutput`s. Token ids and finish
state stay with the scheduler's `Request` objects (read here, never copied into another
owner); a stop string is reported back (`ProcessedStep.stopped`) so the engine finishes the
request through the scheduler.
"""

from __future__ import annotations

import dataclasses
import time

from pagedjax.detokenizer import IncrementalDetokenizer
from pagedjax.outputs import CompletionOutput, Logprob, RequestOutput
from pagedjax.sampling_params import SamplingParams
from scheduler.request import Request, RequestStatus


@dataclasses.dataclass(eq=False)
class _Completion:
    """Output-side state of one completion (one scheduler request)."""

    request: Request  # the scheduler's: token ids, finish state
    group: "_Group"
    index: int
    detok: IncrementalDetokenizer | None  # live when streaming or stop strings need text
    cumulative_logprob: float = 0.0
    logprobs: list | None = None
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
    completions: list[_Completion] = dataclasses.field(default_factory=list)
    num_cached_tokens: int = 0
    arrival_time: float = 0.0
    first_token_time: float | None = None
    prompt_logprobs: list | None = None  # [None, {token: Logprob}, ...] when asked for

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.completions)


@dataclasses.dataclass
class ProcessedStep:
    outputs: list[RequestOutput]  # finished requests, and streaming ones that progressed
    stopped: list[tuple[str, str]]  # (scheduler request id, stop string) to finish as stopped


class OutputProcessor:
    """Builds RequestOutputs from each step's scheduler update and runner output."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._groups: dict[str, _Group] = {}
        self._completions: dict[str, _Completion] = {}  # scheduler request id -> completion

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                    requests: list[Request], stream: bool) -> None:
        """Tracks a user request whose completions are the scheduler `requests` (in order)."""
        group = _Group(request_id, prompt, prompt_token_ids, params, stream, arrival_time=time.perf_counter())
        if params.prompt_logprobs is not None:
            group.prompt_logprobs = [None]
        live_text = params.detokenize and self.tokenizer is not None and (stream or bool(params.stop))
        for index, request in enumerate(requests):
            detok = self._detokenizer(prompt_token_ids, params) if live_text else None
            comp = _Completion(request, group, index, detok, logprobs=[] if params.logprobs is not None else None)
            group.completions.append(comp)
            self._completions[request.request_id] = comp
        self._groups[request_id] = group

    def request_ids(self) -> list[str]:
        return list(self._groups)

    def group_of(self, seq_id: str) -> str | None:
        """The user request a scheduler request (completion) belongs to, or None."""
        comp = self._completions.get(seq_id)
        return None if comp is None else comp.group.request_id

    def has(self, request_id: str) -> bool:
        return request_id in self._groups

    def completion_ids(self, request_id: str) -> list[str]:
        group = self._groups.get(request_id)
        return [] if group is None else [c.request.request_id for c in group.completions]

    def abort(self, request_id: str) -> None:
        group = self._groups.pop(request_id, None)
        if group is None:
            return
        for comp in group.completions:
            comp.finish_reason = comp.finish_reason or "abort"
            self._completions.pop(comp.request.request_id, None)

    @property
    def num_unfinished(self) -> int:
        return len(self._groups)

    def _detokenizer(self, prompt_ids, params: SamplingParams) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, prompt_ids, skip_special_tokens=params.skip_special_tokens,
                                      stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output)

    # --------------------------------------------------------------------------- steps

    def process(self, update, runner_output) -> ProcessedStep:
        """One step: `update` (SchedulerUpdate) and `runner_output` (ModelRunnerOutput)."""
        touched: dict[str, _Group] = {}
        stopped: list[tuple[str, str]] = []
        completions = self._completions
        if runner_output.prompt:
            self._record_prompt_logprobs(runner_output)
        now = None
        for seq_id, tokens in update.new_token_ids.items():
            comp = completions.get(seq_id)
            if comp is None:
                continue
            group = comp.group
            if group.first_token_time is None:
                now = now or time.perf_counter()
                group.first_token_time = now
                group.num_cached_tokens = group.completions[0].request.num_cached_tokens
            try:
                stop = self._append(comp, tokens, runner_output)
            except Exception:  # one request's output processing must not fail the others
                import logging

                logging.getLogger("pagedjax").exception("output processing failed for %s; aborting it", seq_id)
                comp.finish_reason, comp.stop_reason = "abort", None
                stopped.append((seq_id, None))
                stop = None
            if stop is not None:
                stopped.append((seq_id, stop))
            if group.stream or comp.finish_reason is not None:
                touched[group.request_id] = group
        for request in update.finished:
            comp = completions.get(request.request_id)
            if comp is None or comp.finish_reason is not None:
                continue
            comp.finish_reason, comp.stop_reason = request.finish_reason, request.stop_reason
            touched[comp.group.request_id] = comp.group
        outputs = []
        for group in touched.values():
            finished = group.finished
            if finished:
                self._forget(group)
            if group.stream or finished:
                outputs.append(self._request_output(group, finished))
        return ProcessedStep(outputs, stopped)

    def _forget(self, group: _Group) -> None:
        self._groups.pop(group.request_id, None)
        for comp in group.completions:
            self._completions.pop(comp.request.request_id, None)

    def _append(self, comp: _Completion, tokens: list[int], out) -> str | None:
        """Records a completion's new token: logprobs, text; returns a stop string it hit."""
        i = out.index[comp.request.request_id]
        comp.cumulative_logprob += float(out.logprobs[i])
        if comp.logprobs is not None:
            comp.logprobs.append(self._logprob_entry(out.top_ids[i], out.top_logprobs[i], tokens[0],
                                                     float(out.logprobs[i]), int(out.ranks[i]),
                                                     comp.group.params.logprobs))
        if comp.detok is not None and comp.finish_reason is None:
            comp.detok.push(_text_tokens(comp, tokens))
            if comp.detok.stop_string is not None:
                comp.finish_reason, comp.stop_reason = "stop", comp.detok.stop_string
                return comp.detok.stop_string
        return None

    def _record_prompt_logprobs(self, out) -> None:
        for seq_id, (start, top_ids, top_lp, target_lp, ranks) in out.prompt.items():
            comp = self._completions.get(seq_id)
            if comp is None or comp.index != 0 or comp.group.prompt_logprobs is None:
                continue
            group = comp.group
            plp, k, prompt = group.prompt_logprobs, group.params.prompt_logprobs, group.prompt_token_ids
            for j in range(len(target_lp)):
                p = start + j  # this position's logits predict prompt token p + 1
                if p + 1 < len(prompt) and p + 1 == len(plp):  # each position once (recompute-safe)
                    plp.append(self._logprob_entry(top_ids[j], top_lp[j], prompt[p + 1], float(target_lp[j]),
                                                   int(ranks[j]), k))

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
            comp.detok.push(_text_tokens(comp, list(comp.request.output_token_ids)))
        return comp.detok.text

    def _request_output(self, group: _Group, finished: bool) -> RequestOutput:
        comps = group.completions
        if finished and len(comps) > group.params.n:  # best_of: keep the n most likely
            comps = sorted(comps, key=lambda c: c.cumulative_logprob, reverse=True)[: group.params.n]
        outs = [CompletionOutput(index=i if finished else c.index, text=self._completion_text(c),
                                 token_ids=list(c.request.output_token_ids), cumulative_logprob=c.cumulative_logprob,
                                 logprobs=c.logprobs, finish_reason=c.finish_reason, stop_reason=c.stop_reason)
                for i, c in enumerate(comps)]
        return RequestOutput(group.request_id, group.prompt, group.prompt_token_ids, outs, finished,
                             prompt_logprobs=group.prompt_logprobs, num_cached_tokens=group.num_cached_tokens)


def _text_tokens(comp: _Completion, tokens: list[int]) -> list[int]:
    """The tokens whose text joins the output. NOTE: the stop token (EOS or one of
    `stop_token_ids`) that ended a completion stays in `token_ids` but not in the text, even
    when special tokens are kept (vLLM's rule), unless `include_stop_str_in_output`."""
    request = comp.request
    if (tokens and request.status == RequestStatus.FINISHED_STOPPED and not isinstance(request.stop_reason, str)
            and not comp.group.params.include_stop_str_in_output and request.output_token_ids
            and tokens[-1] == request.output_token_ids[-1]):
        return tokens[:-1]
    return tokens
