"""Engine behaviour beyond parity: input validation, abort, compile counts, memory, outputs."""

from __future__ import annotations

import pytest

from pagedjax import LLM, CompletionOutput, RequestOutput, SamplingParams


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, num_kv_blocks=64, max_model_len=128, max_num_seqs=8, max_num_batched_tokens=64)


def test_clear_value_errors(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=4)
    with pytest.raises(ValueError, match=r"prompt \(129 tokens\) is longer than max_model_len \(128\)"):
        llm.generate({"prompt_token_ids": [5] * 129}, greedy, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate({"prompt_token_ids": []}, greedy, use_tqdm=False)
    with pytest.raises(ValueError, match=r"token id 512 is outside the vocabulary \[0, 512\)"):
        llm.generate({"prompt_token_ids": [1, 512]}, greedy, use_tqdm=False)
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        llm.generate({"prompt_token_ids": [-1]}, greedy, use_tqdm=False)
    with pytest.raises(ValueError, match=r"SamplingParams.max_tokens must be an integer >= 1, got 0"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="got 1 sampling params for 2 prompts"):
        llm.generate(["a", "b"], [greedy], use_tqdm=False)
    with pytest.raises(ValueError, match="a prompt must be a string"):
        llm.generate([3.5], greedy, use_tqdm=False)
    # a bad prompt in a batch queues nothing; the engine keeps serving afterwards
    with pytest.raises(ValueError):
        llm.generate([{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": []}], greedy, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    (out,) = llm.generate("still serving", greedy, use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 4
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


def test_output_objects(llm):
    outs = llm.generate(["Hello", {"prompt_token_ids": [1, 40, 41]}],
                        SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True), use_tqdm=False)
    assert [type(o) for o in outs] == [RequestOutput, RequestOutput]
    assert outs[0].prompt == "Hello" and outs[1].prompt is None
    assert outs[1].prompt_token_ids == [1, 40, 41]
    for o in outs:
        (c,) = o.outputs
        assert isinstance(c, CompletionOutput) and o.finished
        assert c.index == 0 and len(c.token_ids) == 5 and c.finish_reason == "length" and c.stop_reason is None
        assert c.text == llm.get_tokenizer().decode(c.token_ids) or c.text  # decoded with prompt context
        assert c.cumulative_logprob < 0


def test_abort_frees_blocks(llm):
    engine = llm.engine
    engine.add_request("a", None, SamplingParams(max_tokens=50, ignore_eos=True), prompt_token_ids=list(range(1, 40)))
    engine.add_request("b", None, SamplingParams(max_tokens=50, ignore_eos=True), prompt_token_ids=list(range(2, 60)))
    for _ in range(3):
        engine.step()
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] < stats["num_kv_blocks"]
    assert engine.abort_request("a") and engine.abort_request("b")
    assert not engine.abort_request("a")
    assert not engine.has_unfinished_requests()
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


def test_stop_token_and_eos(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    (base,) = llm.generate({"prompt_token_ids": [1, 77, 78, 79]}, greedy, use_tqdm=False)
    tokens = base.outputs[0].token_ids
    stop_at = tokens[5]
    first = tokens.index(stop_at)
    params = SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop_at])
    (out,) = llm.generate({"prompt_token_ids": [1, 77, 78, 79]}, params, use_tqdm=False)
    c = out.outputs[0]
    assert c.token_ids == tokens[: first + 1] and c.finish_reason == "stop" and c.stop_reason == stop_at


def test_precompiled_buckets_cover_new_lengths(llama_dir):
    llm = LLM(llama_dir, num_kv_blocks=32, max_model_len=64, max_num_seqs=4, max_num_batched_tokens=32)
    n = llm.precompile()
    assert n == llm.stats()["num_compiles"] > 0
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    llm.generate([{"prompt_token_ids": [1] * k} for k in (3, 17, 30)], greedy, use_tqdm=False)
    llm.generate([{"prompt_token_ids": [2] * k} for k in (1, 9, 25, 40)], greedy, use_tqdm=False)
    assert llm.stats()["num_compiles"] == n  # nothing compiled after warm-up


def test_step_temporaries_do_not_scale_with_kv_pool(llama_dir):
    # The pool is donated and updated in place: a copy of it would show up as temporaries that
    # grow with the pool. Compare the compiled steps' memory analyses for two pool sizes.
    temps = {}
    for blocks in (1024, 4096):
        llm = LLM(llama_dir, num_kv_blocks=blocks, max_model_len=256, max_num_seqs=8, max_num_batched_tokens=64)
        runner = llm.engine.runner
        for shape in (runner.steps.shape(8, 8, runner.max_blocks_per_seq, True),
                      runner.steps.shape(64, 2, runner.max_blocks_per_seq, False)):
            mem = runner.steps.memory(shape)
            temps[blocks, shape.decode_only] = mem["temp_bytes"]
            pool_bytes = mem["kv_pool_bytes"]
    assert temps[1024, True] == temps[4096, True] and temps[1024, False] == temps[4096, False], temps
    assert max(temps.values()) < 0.1 * pool_bytes, (temps, pool_bytes)


def _requests(engine, n=5):
    params = [SamplingParams(temperature=0.0, max_tokens=6 + i, ignore_eos=True) for i in range(n - 1)]
    params.append(SamplingParams(temperature=0.8, seed=11, n=2, max_tokens=5, ignore_eos=True))
    return [([3 + i, 7, 9 + 2 * i] * (i + 1), p) for i, p in enumerate(params)]


def _run(engine, requests):
    for k, (ids, p) in enumerate(requests):
        engine.add_request(f"r{k}", None, p, prompt_token_ids=ids)
    done, errors = {}, []
    while engine.has_unfinished_requests():
        try:
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = [c.token_ids for c in out.outputs]
        except Exception as error:  # noqa: BLE001 (EngineStepError: recorded, the loop goes on)
            errors.append(error)
    return done, errors


def test_a_step_failing_once_loses_nothing(llm, monkeypatch):
    engine = llm.engine
    requests = _requests(engine)
    reference, _ = _run(engine, requests)
    real, calls = engine.runner.execute_model, []

    def flaky(output):
        calls.append(1)
        if len(calls) == 3:  # mid-generation: prefills done, decodes in flight
            raise RuntimeError("device fell over")
        return real(output)

    monkeypatch.setattr(engine.runner, "execute_model", flaky)
    done, errors = _run(engine, requests)
    assert not errors and done == reference  # every request recomputed, same tokens
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


def test_only_the_request_that_fails_again_is_aborted(llm, monkeypatch):
    from pagedjax.engine import EngineStepError

    engine = llm.engine
    requests = _requests(engine)
    reference, _ = _run(engine, requests)
    poison = [99, 98, 97]
    real = engine.runner.execute_model

    def fails_with_poison(output):
        if any(engine.scheduler.get_request(s.request_id).prompt_token_ids == poison for s in output.scheduled):
            raise RuntimeError("poisoned step")
        return real(output)

    monkeypatch.setattr(engine.runner, "execute_model", fails_with_poison)
    done, errors = _run(engine, requests[:2] + [(poison, SamplingParams(max_tokens=4))] + requests[2:])
    (error,) = errors
    assert isinstance(error, EngineStepError) and "poisoned step" in str(error)
    assert error.aborted_request_ids == ["r2"]  # the poison alone
    assert done == {f"r{k if k < 2 else k + 1}": v for k, v in
                    [(int(r[1:]), v) for r, v in reference.items()]}
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


def test_reset_prefix_cache(llm):
    prompt = {"prompt_token_ids": list(range(3, 60))}
    greedy = SamplingParams(temperature=0.0, max_tokens=2)
    llm.generate(prompt, greedy, use_tqdm=False)
    hits = llm.stats()["prefix_cache_hits"]
    llm.generate(prompt, greedy, use_tqdm=False)
    assert llm.stats()["prefix_cache_hits"] > hits
    assert llm.reset_prefix_cache()
    hits = llm.stats()["prefix_cache_hits"]
    llm.generate(prompt, greedy, use_tqdm=False)
    assert llm.stats()["prefix_cache_hits"] == hits


def test_skip_tokenizer_init(llama_dir):
    llm = LLM(llama_dir, num_kv_blocks=16, max_model_len=64, skip_tokenizer_init=True)
    assert llm.get_tokenizer() is None
    (out,) = llm.generate({"prompt_token_ids": [1, 5, 9]}, SamplingParams(temperature=0.0, max_tokens=3),
                          use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 3 and out.outputs[0].text == ""
    with pytest.raises(ValueError, match="no tokenizer"):
        llm.generate("text needs a tokenizer", use_tqdm=False)
