"""The benchmark's pieces: workloads, shared weights, agreement, KV figures, roofline arithmetic, combine."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from pagedjax.bench import datasets
from pagedjax.bench.baselines import agreement, parse_baselines
from pagedjax.bench.combine import combine
from pagedjax.bench.engine_run import kv_figures
from pagedjax.bench.report import compute_ratios
from pagedjax.bench.roofline import step_floor_s, step_roofline


def test_synthetic_sharegpt_is_seeded_filtered_and_sharegpt_shaped():
    a = datasets.synthetic_sharegpt(2000, vocab_size=1000, seed=3)
    b = datasets.synthetic_sharegpt(2000, vocab_size=1000, seed=3)
    c = datasets.synthetic_sharegpt(2000, vocab_size=1000, seed=4)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    p, o = np.array(a.prompt_lens), np.array(a.output_lens)
    assert p.min() >= 4 and o.min() >= 4 and p.max() <= 1024 and (p + o).max() <= 2048
    assert 190 < p.mean() < 250 and 165 < o.mean() < 215  # ShareGPT's means are about 220 / 190
    assert max(max(x) for x in a.prompts) < 1000
    short = datasets.synthetic_sharegpt(300, vocab_size=50, seed=0, max_model_len=256)
    assert short.max_total_len <= 256


def test_fixed_lengths_head_and_fingerprint():
    w = datasets.fixed_lengths(5, 7, 3, vocab_size=20, seed=1)
    assert w.prompt_lens == [7] * 5 and w.output_lens == (3,) * 5 and w.num_prompt_tokens == 35
    head = w.head(2)
    assert head.prompts == w.prompts[:2] and head.fingerprint() != w.fingerprint()
    with pytest.raises(ValueError):
        w.head(6)
    with pytest.raises(ValueError):
        datasets.fixed_lengths(0, 7, 3, vocab_size=20)


def test_sharegpt_file_filters_like_vllm(tmp_path, checkpoint_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint_factory("llama"))
    long = "word " * 1500
    data = [{"conversations": [{"from": "human", "value": "Tell me about the os module please"},
                               {"from": "gpt", "value": "It provides portable operating system functions"}]},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello there, how are you"}]},
            {"conversations": [{"from": "human", "value": long}, {"from": "gpt", "value": "ok then fine"}]},
            {"conversations": [{"from": "human", "value": "only one turn"}]}]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    w = datasets.load_sharegpt(str(path), tok, 1, seed=0)
    assert len(w) == 1 and w.kind == "sharegpt"
    assert list(w.prompts[0]) == tok("Tell me about the os module please").input_ids
    assert w.output_lens[0] == len(tok("It provides portable operating system functions",
                                       add_special_tokens=False).input_ids)
    with pytest.raises(ValueError, match="pass the filters"):  # "hi" is too short, the long one too long
        datasets.load_sharegpt(str(path), tok, 2, seed=0)
    with pytest.raises(ValueError, match="tokenizer"):
        datasets.load_sharegpt(str(path), None, 1)


TINY_PRESET = dict(architectures=["LlamaForCausalLM"], vocab_size=96, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                   max_position_embeddings=128, rms_norm_eps=1e-5,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                   bos_token_id=1, eos_token_id=2, dtype="bfloat16")


def test_preset_checkpoint_is_deterministic_and_loads_in_both_frameworks(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from models.loader import load_params
    from models.presets import PRESETS
    from pagedjax.bench.weights import prepare_model

    monkeypatch.setitem(PRESETS, "tiny-test", TINY_PRESET)
    a = prepare_model("tiny-test", "auto", weights_dir=str(tmp_path / "a"), seed=5)
    b = prepare_model("tiny-test", "auto", weights_dir=str(tmp_path / "b"), seed=5, )
    assert a.kind == "preset" and a.dtype == "bfloat16" and not a.has_tokenizer
    with open(os.path.join(a.model_dir, "model.safetensors"), "rb") as fa, \
            open(os.path.join(b.model_dir, "model.safetensors"), "rb") as fb:
        assert fa.read() == fb.read()  # the same recipe, the same bytes
    again = prepare_model("tiny-test", "auto", weights_dir=a.model_dir, seed=5)  # reused as it is
    assert again.model_dir == a.model_dir
    with pytest.raises(ValueError, match="other benchmark weights"):
        prepare_model("tiny-test", "auto", weights_dir=a.model_dir, seed=6)
    hf = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    _, params = load_params(a.config, a.model_dir, np.float32)
    q_hf = hf.model.layers[1].self_attn.q_proj.weight.detach().numpy()  # [out, in]
    q_ours = np.asarray(params["layers"][1]["self_attn"]["q_proj"]["kernel"][...])  # [in, out]
    np.testing.assert_array_equal(q_hf, q_ours.T)
    assert 0.015 < q_hf.std() < 0.025  # N(0, 0.02)
    norm = hf.model.layers[0].input_layernorm.weight.detach().numpy()
    np.testing.assert_array_equal(norm, np.ones_like(norm))


def test_agreement():
    ours = [[1, 2, 3, 4], [5, 6], [7, 8]]
    assert agreement(ours, copy.deepcopy(ours)) == dict(exact=1.0, first_token=1.0, prefix=1.0)
    got = agreement(ours, [[1, 2, 9, 9], [5, 6], [0, 8]])
    assert got["exact"] == pytest.approx(1 / 3) and got["first_token"] == pytest.approx(2 / 3)
    assert got["prefix"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError):
        agreement(ours, ours[:2])


def test_parse_baselines():
    assert parse_baselines("all") == ("hf-generate", "hf-continuous", "jax-static")
    assert parse_baselines("none") == ()
    assert parse_baselines("jax-static,hf-generate") == ("hf-generate", "jax-static")
    with pytest.raises(ValueError, match="unknown"):
        parse_baselines("hf-generate,vllm")


def test_kv_figures_time_average():
    # (allocated, filled, running): two steps, 2 sequences of max_model_len 100
    figs = kv_figures([(32, 24, 2), (32, 32, 2), (0, 0, 0)], max_model_len=100, pool_slots=64)
    assert figs["paged_waste"] == pytest.approx((0.25 + 0.0) / 2)
    assert figs["contiguous_waste"] == pytest.approx(((1 - 24 / 200) + (1 - 32 / 200)) / 2)
    assert figs["paged_waste_token_weighted"] == pytest.approx(1 - 56 / 64)
    assert figs["peak_pool_fraction"] == 0.5 and figs["max_running"] == 2


def test_roofline_arithmetic():
    assert step_floor_s(1000, 10, 100, 1000.0) == pytest.approx(2.0)
    recs = [dict(seconds=4.0, host_seconds=1.0, kv_tokens=10), dict(seconds=6.0, host_seconds=1.0, kv_tokens=10)]
    r = step_roofline(recs, weight_bytes=1000, kv_bytes_per_token=100, bytes_per_s=1000.0)
    assert r["floor_s"] == pytest.approx(2.0) and r["ratio_to_floor"] == pytest.approx(2.5)
    assert r["non_host_ratio_to_floor"] == pytest.approx(2.0) and r["bandwidth_fraction"] == pytest.approx(0.4)


def _part(engine: bool, baselines: dict, fingerprint="f" * 64, device="GPU X") -> dict:
    rep = dict(benchmark="throughput", device=dict(device_kind=device, platform="gpu"), timestamp="t", git={},
               model=dict(name="llama-3.1-8b", kind="preset", dtype="bfloat16", architecture="LlamaForCausalLM",
                          num_params=8, weights={}),
               workload=dict(fingerprint=fingerprint, num_prompts=1000, kind="synthetic-sharegpt", seed=0),
               requests_per_s=None, output_tokens_per_s=None, total_tokens_per_s=None, elapsed_s=None,
               baselines=baselines, hf_environment=None)
    if engine:
        rep.update(requests_per_s=10.0, output_tokens_per_s=2000.0, total_tokens_per_s=4000.0, elapsed_s=100.0,
                   ours_on_baseline_subset=dict(requests_per_s=8.0, output_tokens_per_s=1600.0,
                                                total_tokens_per_s=3200.0, elapsed_s=25.0,
                                                workload_fingerprint="s" * 64))
    return rep


def _base(rps: float, fingerprint: str) -> dict:
    return dict(requests_per_s=rps, output_tokens_per_s=200 * rps, total_tokens_per_s=400 * rps, elapsed_s=1.0,
                num_requests=200, workload_fingerprint=fingerprint)


def test_combine_matches_baselines_with_our_run_on_the_same_requests():
    ours = _part(True, {})
    gen = _part(False, {"hf-generate": _base(2.0, "s" * 64)})  # ran on the subset
    cont = _part(False, {"hf-continuous": _base(5.0, "f" * 64)})  # ran on everything
    merged = combine([gen, ours, cont])
    assert merged["requests_per_s"] == 10.0 and set(merged["baselines"]) == {"hf-generate", "hf-continuous"}
    assert merged["ratios"]["hf-generate"]["requests_per_s"] == pytest.approx(8.0 / 2.0)  # subset vs subset
    assert merged["ratios"]["hf-continuous"]["output_tokens_per_s"] == pytest.approx(2000.0 / 1000.0)
    assert compute_ratios(merged) == merged["ratios"] and len(merged["parts"]) == 3
    with pytest.raises(ValueError, match="workload"):
        combine([ours, _part(False, {}, fingerprint="g" * 64)])
    with pytest.raises(ValueError, match="device"):
        combine([ours, _part(False, {}, device="GPU Y")])
    with pytest.raises(ValueError, match="more than one part"):
        combine([ours, gen, copy.deepcopy(gen)])
    with pytest.raises(ValueError, match="engine"):
        combine([ours, copy.deepcopy(ours)])


def test_observe_steps_with_and_without_the_engine_hook():
    from types import SimpleNamespace

    from pagedjax.bench.engine_run import observe_steps

    outputs = iter([SimpleNamespace(scheduled=(1,)), SimpleNamespace(scheduled=()), SimpleNamespace(scheduled=(2, 3))])

    class Scheduler:
        def schedule(self):
            return next(outputs)

    seen = []
    bare = SimpleNamespace(scheduler=Scheduler())  # no step_observers: schedule() is wrapped
    with observe_steps(bare, seen.append):
        for _ in range(3):
            bare.scheduler.schedule()
    assert [o.scheduled for o in seen] == [(1,), (2, 3)]  # empty steps are not observed
    assert "schedule" not in vars(bare.scheduler)  # unwrapped afterwards
    hooked = SimpleNamespace(scheduler=Scheduler(), step_observers=[])
    with observe_steps(hooked, seen.append):
        assert hooked.step_observers == [seen.append]
    assert hooked.step_observers == []
