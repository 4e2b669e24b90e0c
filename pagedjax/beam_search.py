"""Beam search over the paged engine (vLLM v1's method: one engine step per beam step).

Every beam step submits each live beam as a one-token request asking for the top `2 *
beam_width` logprobs; the candidates of all beams of a prompt are ranked by cumulative logprob
and the best `beam_width` continue. Beams share their common prefix's KV blocks through the
prefix cache (reference counts on the same blocks), and a pruned beam's blocks are freed back
to the cache, where a surviving beam that shares them keeps them alive: only the partly
filled last block of a beam is recomputed each step.

Ranking of finished beams follows vLLM: `cumulative_logprob / len(prompt + generated) **
length_penalty`, with a final EOS not counted. Logprobs are the model's raw ones (temperature
does not change the ranking, as in vLLM).
"""

from __future__ import annotations

import dataclasses

from pagedjax.outputs import BeamSearchOutput, BeamSequence
from pagedjax.sampling_params import BeamSearchParams, SamplingParams

MAX_BEAM_WIDTH = 10  # 2 * beam_width candidates must fit in the sampler's top logprobs (20)


@dataclasses.dataclass
class _Beam:
    tokens: list[int]  # generated
    cumulative_logprob: float = 0.0
    finished: bool = False


def _score(beam: _Beam, prompt_len: int, eos: int | None, length_penalty: float) -> float:
    length = prompt_len + len(beam.tokens)
    if beam.tokens and beam.tokens[-1] == eos:
        length -= 1
    return beam.cumulative_logprob / (max(length, 1) ** length_penalty)


@dataclasses.dataclass
class BeamSearchStats:
    """KV blocks held at the peak with sharing, against every beam holding its own blocks."""

    peak_shared_blocks: int = 0
    peak_unshared_blocks: int = 0

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.peak_shared_blocks / max(self.peak_unshared_blocks, 1)


def beam_search(engine, prompts: list[list[int]], texts: list[str | None], params: BeamSearchParams,
                stats: BeamSearchStats | None = None) -> list[BeamSearchOutput]:
    """Runs beam search for every prompt (token ids) at once; outputs in input order."""
    if params.beam_width > MAX_BEAM_WIDTH:
        raise ValueError(f"BeamSearchParams.beam_width must be <= {MAX_BEAM_WIDTH}, got {params.beam_width}")
    eos = None if params.ignore_eos else engine.eos_token_id
    width = params.beam_width
    step_params = SamplingParams(max_tokens=1, logprobs=min(2 * width, SamplingParams.MAX_LOGPROBS),
                                 temperature=0.0, ignore_eos=True, detokenize=False)
    live = [[_Beam([])] for _ in prompts]
    done: list[list[_Beam]] = [[] for _ in prompts]
    for _ in range(params.max_tokens):
        ids = {}
        for p, beams in enumerate(live):
            for b, beam in enumerate(beams):
                rid = f"beam-{engine.next_request_id()}"
                engine.add_request(rid, None, step_params, prompt_token_ids=prompts[p] + beam.tokens)
                ids[rid] = (p, b)
        results = {}
        observer = None
        if stats is not None:
            table_of = engine.scheduler.block_manager.block_table

            def observer(sched):  # the step's beams: distinct blocks held vs each beam's own table
                tables = [table_of(s.request_id) for s in sched.scheduled if s.request_id in ids]
                stats.peak_shared_blocks = max(stats.peak_shared_blocks, len({b for t in tables for b in t}))
                stats.peak_unshared_blocks = max(stats.peak_unshared_blocks, sum(len(t) for t in tables))
            engine.step_observers.append(observer)
        try:
            while len(results) < len(ids):
                for out in engine.step():
                    if out.request_id in ids:
                        results[out.request_id] = out
        finally:
            if observer is not None:
                engine.step_observers.remove(observer)
        candidates: list[list[_Beam]] = [[] for _ in prompts]
        for rid, (p, b) in ids.items():
            beam = live[p][b]
            (entries,) = results[rid].outputs[0].logprobs
            for token, lp in entries.items():
                candidates[p].append(_Beam(beam.tokens + [token], beam.cumulative_logprob + lp.logprob))
        for p in range(len(prompts)):
            ranked = sorted(candidates[p], key=lambda c: c.cumulative_logprob, reverse=True)
            live[p] = []
            for cand in ranked:
                if eos is not None and cand.tokens[-1] == eos:
                    cand.finished = True
                    done[p].append(cand)
                else:
                    live[p].append(cand)
                if len(live[p]) == width:
                    break
        if not any(live):
            break
    outputs = []
    for p, prompt in enumerate(prompts):
        beams = sorted(done[p] + live[p], key=lambda c: _score(c, len(prompt), eos, params.length_penalty),
                       reverse=True)[:width]
        sequences = [BeamSequence(b.tokens, _decode(engine, b.tokens), b.cumulative_logprob,
                                  "stop" if b.finished else "length") for b in beams]
        outputs.append(BeamSearchOutput(texts[p], prompt, sequences))
    return outputs


def _decode(engine, tokens: list[int]) -> str:
    if engine.tokenizer is None:
        return ""
    return engine.tokenizer.decode(tokens, skip_special_tokens=True)
