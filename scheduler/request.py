"""Requests as the scheduler sees them: token state, counters, stop criteria.

A `Request` is plain mutable state owned by the `Scheduler` once added: only the
scheduler (and, for `block_hashes`, the `BlockManager`) writes to it. Everyone else
reads it. It is the one owner of a sequence's token ids and finish state.

Tokens in flight: with asynchronous scheduling the next step is scheduled before the
previous one's sampled token is known. A scheduled step that samples adds an output
*placeholder* (`num_output_placeholders`); `Scheduler.update` turns it into a real token.
The KV of a placeholder position is computed by a later step whose input token the runner
takes from the device-side result of the step that sampled it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class RequestStatus(enum.Enum):
    """Where a request is in its life."""

    WAITING = "waiting"  # queued, never scheduled
    RUNNING = "running"  # admitted: holds blocks, scheduled every step it fits in
    PREEMPTED = "preempted"  # was running; blocks freed; queued again to recompute
    FINISHED_STOPPED = "finished_stopped"  # sampled eos or a stop token, or its text hit a stop string
    FINISHED_LENGTH = "finished_length"  # hit max_tokens or max_model_len
    FINISHED_ABORTED = "finished_aborted"  # aborted by the engine / client

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset(
    {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED}
)
_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class StopCriteria:
    """When a request stops generating (the token-level part of SamplingParams).

    Checked after every sampled token, in vLLM v1's order: length first
    (`max_tokens` outputs, or `max_model_len` total tokens), then, once at least
    `min_tokens` outputs exist, `eos_token_id`, then `stop_token_ids`.
    """

    max_tokens: int  # >= 1: the most output tokens to generate
    min_tokens: int = 0  # eos / stop tokens do not stop the request before this many outputs
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)  # any of these stops it
    eos_token_id: int | None = None  # None: eos is ignored (ignore_eos=True)

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be an int in [0, max_tokens={self.max_tokens}], "
                f"got {self.min_tokens!r}"
            )
        stop_ids = frozenset(self.stop_token_ids)
        if not all(_is_int(t) and t >= 0 for t in stop_ids):
            raise ValueError(f"stop_token_ids must be ints >= 0, got {sorted(stop_ids, key=str)}")
        object.__setattr__(self, "stop_token_ids", stop_ids)
        if self.eos_token_id is not None and (not _is_int(self.eos_token_id) or self.eos_token_id < 0):
            raise ValueError(f"eos_token_id must be None or an int >= 0, got {self.eos_token_id!r}")


def _token_list(token_ids: Iterable[int], what: str) -> list[int]:
    tokens = [int(t) for t in token_ids]
    if tokens and min(tokens) < 0:
        raise ValueError(f"{what} must be >= 0, got {min(tokens)}")
    return tokens


class Request:
    """One sequence: its tokens, how many of them have KV computed, and its status.

    NOTE: `all_token_ids` is the single growing list of prompt + output tokens; decode
    steps slice and append it, nothing copies it per step. `prompt_token_ids`,
    `output_token_ids` and `all_token_ids` are read-only outside the scheduler.
    """

    __slots__ = (
        "request_id",
        "prompt_token_ids",
        "output_token_ids",
        "all_token_ids",
        "stop",
        "status",
        "num_computed_tokens",
        "num_cached_tokens",
        "stop_reason",
        "arrival_index",
        "num_preemptions",
        "block_hashes",
        "skip_prefix_cache",
        "num_output_placeholders",
        "sampling_params",
        "fork_children",
        "new_to_runner",
        "num_failed_steps",
        "needs_host_feedback",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Iterable[int],
        stop: StopCriteria,
        *,
        output_token_ids: Iterable[int] = (),
        sampling_params: object = None,
        fork_children: Iterable["Request"] = (),
    ) -> None:
        """`output_token_ids` is only for forks (`Scheduler.fork_request`): a child that
        continues a parent's generation starts with the parent's outputs.

        `sampling_params` is carried to the runner untouched (the scheduler never reads it).
        `fork_children`: requests (same prompt, no outputs) that fork from this one when it
        samples its first token, each with its own first token sampled from the same logits
        (parallel sampling, n > 1): they share its KV blocks (copy-on-write)."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty str, got {request_id!r}")
        if not isinstance(stop, StopCriteria):
            raise TypeError(f"stop must be a StopCriteria, got {type(stop).__name__}")
        self.request_id = request_id
        self.prompt_token_ids: list[int] = _token_list(prompt_token_ids, "prompt token ids")
        if not self.prompt_token_ids:
            raise ValueError(f"request {request_id!r}: the prompt must have at least one token")
        self.output_token_ids: list[int] = _token_list(output_token_ids, "output token ids")
        self.all_token_ids: list[int] = self.prompt_token_ids + self.output_token_ids
        self.stop = stop
        self.status = RequestStatus.WAITING
        # Tokens whose KV is in the cache (0 again after a preemption).
        self.num_computed_tokens = 0
        # Prefix-cache hit (tokens) when it was first scheduled.
        self.num_cached_tokens = 0
        # The stop token id or stop string that finished it (None for eos, length, abort).
        self.stop_reason: int | str | None = None
        # FCFS order, set by Scheduler.add_request / fork_request (-1: not added).
        self.arrival_index = -1
        self.num_preemptions = 0
        # Chained hashes of its full blocks, a cache derived from all_token_ids.
        # NOTE: owned by BlockManager, which extends it lazily (tokens only append,
        # so a full block's hash never changes).
        self.block_hashes: list[bytes] = []
        # Compute every token even if the prefix cache holds it (e.g. for prompt logprobs).
        self.skip_prefix_cache = False
        # Sampled tokens of scheduled steps whose value is not known yet (async scheduling).
        self.num_output_placeholders = 0
        self.sampling_params = sampling_params
        self.fork_children: list[Request] = list(fork_children)
        # The runner has no state for it (admitted, readmitted after preemption, or forked):
        # the next SchedulerOutput that schedules it carries all its tokens.
        self.new_to_runner = True
        # Engine steps that failed while this request was in them (see Scheduler.recover).
        self.num_failed_steps = 0
        # Its next step's inputs depend on host work over its last token (a grammar's bitmask):
        # never scheduled while a sample of it is in flight (the engine drains the step first).
        self.needs_host_feedback = False

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_tokens_with_placeholders(self) -> int:
        """Known tokens plus the sampled tokens still in flight."""
        return len(self.all_token_ids) + self.num_output_placeholders

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def finish_reason(self) -> str | None:
        """"stop", "length", "abort", or None while unfinished (OpenAI's names)."""
        return _FINISH_REASONS.get(self.status)

    def append_output_token(self, token_id: int) -> None:
        """Append one generated token (the scheduler's `update` calls this)."""
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def will_finish_by_length(self, max_model_len: int) -> bool:
        """True when the tokens in flight already reach `max_tokens` or `max_model_len`: the
        request finishes once they are known, so it needs no further step."""
        return (len(self.output_token_ids) + self.num_output_placeholders >= self.stop.max_tokens
                or len(self.all_token_ids) + self.num_output_placeholders >= max_model_len)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, "
            f"tokens={self.num_prompt_tokens}+{self.num_output_tokens}, "
            f"computed={self.num_computed_tokens})"
        )


def check_stop(request: Request, max_model_len: int) -> bool:
    """Apply `request.stop` after a token was appended; on a stop, set `status`
    (and `stop_reason` for a stop token) and return True.

    Order as vLLM v1: the length limits first (`max_tokens` outputs, or
    `num_tokens >= max_model_len`; never deferred by `min_tokens`, so a request is
    never scheduled past `max_model_len`), then, once `min_tokens` outputs exist,
    `eos_token_id` (stop_reason None), then `stop_token_ids` (stop_reason = the token).
    """
    stop = request.stop
    num_output = len(request.output_token_ids)
    if num_output >= stop.max_tokens or len(request.all_token_ids) >= max_model_len:
        request.status = RequestStatus.FINISHED_LENGTH
        return True
    if num_output == 0 or num_output < stop.min_tokens:
        return False
    last = request.output_token_ids[-1]
    if last == stop.eos_token_id:
        request.status = RequestStatus.FINISHED_STOPPED
        return True
    if last in stop.stop_token_ids:
        request.status = RequestStatus.FINISHED_STOPPED
        request.stop_reason = last
        return True
    return False
