"""The Hugging Face baselines, run in a child process: `python hf_worker.py SPEC.json RESULT.json`.

It imports only torch and transformers (no JAX, nothing of pagedjax), so on a GPU the two
frameworks never share a process: the child gets the whole device and gives it all back when it
exits, before our engine starts. SPEC holds `model_dir`, `dtype`, `baselines`, `prompts` (token
id lists), `output_lens`, `batch_size` (null: 32 on CUDA, 8 on CPU), `require_cuda`; RESULT gets,
per baseline, the timed seconds, token counts and each request's output ids, plus the device and
versions.

* `hf-generate`: `model.generate` on static batches of `batch_size` consecutive requests, left
  padding, greedy, `min_new_tokens = max_new_tokens` = the batch's longest output (every
  sequence of a static batch runs that long); each request's own first `output_len` tokens are
  its useful output.
* `hf-continuous`: transformers' continuous batching (`generate_batch`'s manager, paged cache):
  the same context manager `generate_batch` uses, but each request is added with its own
  `max_new_tokens` (`generate_batch` takes one for all) and `eos_token_id=-1`, so every output
  has exactly its length; the manager's set-up and (on CUDA) its CUDA-graph warm-up are excluded.

EOS is disabled everywhere (`eos_token_id` None / -1), so outputs are exact-length and greedy
tokens are comparable with our engine's (`ignore_eos=True` does not suppress EOS either).
A warm-up (2 new tokens for a few requests) precedes each timed run. Times use
`time.perf_counter` after the outputs are on the host (`.tolist()`), which synchronises CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

# Run as a script, this file's directory heads sys.path, and its siblings (datasets.py, ...)
# would shadow installed packages of the same name that transformers looks for.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _device(require_cuda: bool):
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if require_cuda:
        raise RuntimeError("this machine has an NVIDIA GPU but torch has no CUDA support, so the Hugging Face "
                           "baselines would run on the CPU: install a CUDA build of torch, or pass "
                           "--baselines jax-static (or none)")
    return torch.device("cpu")


def load_model(model_dir: str, dtype: str, device):
    """`AutoModelForCausalLM.from_pretrained(model_dir)` in `dtype` on `device`, EOS disabled, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.to(device)
    model.eval()
    model.generation_config.eos_token_id = None  # else generate() fills our None from it
    return model


def _left_padded(prompts, pad_id: int, device):
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device), width


def _generate_batch(model, prompts, new_tokens: int, device) -> list[list[int]]:
    import torch
    from transformers import GenerationConfig

    ids, mask, width = _left_padded(prompts, 0, device)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out[:, width:].tolist()  # [batch, new_tokens]; the host copy synchronises


def run_hf_generate(model, prompts, output_lens, batch_size: int, device) -> dict:
    """Static batches of `batch_size` (module docstring): seconds, useful and computed tokens, outputs."""
    _generate_batch(model, prompts[: min(batch_size, 4)], 2, device)  # warm-up
    token_ids, computed = [], 0
    start = time.perf_counter()
    for s in range(0, len(prompts), batch_size):
        lens = output_lens[s: s + batch_size]
        rows = _generate_batch(model, prompts[s: s + batch_size], max(lens), device)
        if any(len(r) != max(lens) for r in rows):
            raise RuntimeError(f"generate stopped early (got {[len(r) for r in rows]}, wanted {max(lens)})")
        token_ids += [r[:n] for r, n in zip(rows, lens)]
        computed += len(rows) * max(lens)
    elapsed = time.perf_counter() - start
    return dict(elapsed_s=elapsed, computed_output_tokens=computed, batch_size=batch_size,
                num_batches=-(-len(prompts) // batch_size), token_ids=token_ids)


def _cb_run(manager, prompts, output_lens, tag: str) -> list[list[int]]:
    ids = [f"{tag}{i}" for i in range(len(prompts))]
    for rid, prompt, n in zip(ids, prompts, output_lens):
        manager.add_request(list(prompt), request_id=rid, max_new_tokens=int(n), eos_token_id=-1)
    results = {}
    while len(results) < len(ids):
        res = manager.get_result(timeout=1)
        if res is None:
            if not manager.is_running():
                raise RuntimeError("transformers' continuous-batching loop stopped before finishing")
            continue
        if res.is_finished():
            if res.error is not None:
                raise RuntimeError(f"request {res.request_id} failed in continuous batching: {res.error}")
            results[res.request_id] = list(res.generated_tokens)
    return [results[rid] for rid in ids]


def run_hf_continuous(model, prompts, output_lens, device) -> dict:
    """transformers' continuous batching with per-request `max_new_tokens` (module docstring).

    The manager's own warm-up (CUDA-graph capture at the largest sizes) runs on CUDA only: on
    the CPU it captures nothing and takes seconds; our 2-token warm-up of 4 requests runs on both.
    On CUDA the paged cache is sized by transformers (a fraction of free GPU memory); on the CPU,
    where it would take a fraction of the host's whole memory, it holds every request at once.
    """
    from transformers import ContinuousBatchingConfig, GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    config = GenerationConfig(max_new_tokens=max(output_lens), do_sample=False, eos_token_id=-1)
    # flash attention when the flash_attn package is installed; never a kernel fetched from the hub (offline)
    cb_config = ContinuousBatchingConfig(auto_switch_to_flash=importlib.util.find_spec("flash_attn") is not None)
    if device.type != "cuda":  # on the CPU it would size its cache from the host's whole memory
        cb_config.num_blocks = sum(-(-(len(p) + n) // cb_config.page_size) for p, n in zip(prompts, output_lens))
    hints = WorkloadHints(max_prompt_length=max(map(len, prompts)), max_generated_length=max(output_lens),
                          num_requests=len(prompts))
    start = time.perf_counter()
    with model.continuous_batching_context_manager(
            generation_config=config, continuous_batching_config=cb_config, block=True, timeout=30,
            warmup=device.type == "cuda",
            workload_hints=hints) as manager:
        _cb_run(manager, prompts[:4], [2] * len(prompts[:4]), "warmup-")
        setup = time.perf_counter() - start
        start = time.perf_counter()
        token_ids = _cb_run(manager, prompts, output_lens, "r")
        elapsed = time.perf_counter() - start
    bad = [i for i, (t, n) in enumerate(zip(token_ids, output_lens)) if len(t) != n]
    if bad:
        raise RuntimeError(f"continuous batching gave wrong output lengths for requests {bad[:5]}")
    return dict(elapsed_s=elapsed, setup_s=setup, computed_output_tokens=sum(output_lens),
                attn_implementation=getattr(model.config, "_attn_implementation", None), token_ids=token_ids)


def run(spec: dict) -> dict:
    """Loads the model once and runs each baseline of `spec["baselines"]`; errors are recorded per baseline."""
    import torch
    import transformers

    device = _device(spec.get("require_cuda", False))
    start = time.perf_counter()
    model = load_model(spec["model_dir"], spec["dtype"], device)
    out = dict(device=str(device), device_name=(torch.cuda.get_device_name(device) if device.type == "cuda"
                                                 else "cpu"),
               torch_version=torch.__version__, transformers_version=transformers.__version__,
               torch_num_threads=torch.get_num_threads(), load_s=time.perf_counter() - start, results={}, errors={})
    prompts, lens = [list(p) for p in spec["prompts"]], [int(n) for n in spec["output_lens"]]
    for name in spec["baselines"]:
        try:
            if name == "hf-generate":
                batch_size = spec.get("batch_size") or (32 if device.type == "cuda" else 8)
                out["results"][name] = run_hf_generate(model, prompts, lens, int(batch_size), device)
            elif name == "hf-continuous":
                out["results"][name] = run_hf_continuous(model, prompts, lens, device)
            else:
                raise ValueError(f"unknown Hugging Face baseline {name!r}")
        except Exception as e:  # keep the other baseline's figures (e.g. out of memory)
            out["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: hf_worker.py SPEC.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    result = run(spec)
    tmp = argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
