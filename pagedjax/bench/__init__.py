"""`pagedjax bench`: throughput and latency benchmarks, with their baselines measured in the same run.

    pagedjax bench throughput [--model DIR_OR_PRESET] [--num-prompts N] [--baselines ...] --output-json OUT
    pagedjax bench latency    [--model DIR_OR_PRESET] --batch-size B --input-len I --output-len O
    pagedjax bench combine    PART.json ... --output-json OUT      (parts of one split GPU run)

Modules: `datasets` (workloads: synthetic ShareGPT-like, ShareGPT files, fixed lengths),
`weights` (one checkpoint directory every system loads), `engine_run` (our engine, driven
step by step, with KV-slot probes), `static_baseline` (jax-static), `hf_worker` (the Hugging
Face baselines, run in a child process), `baselines` (runs them), `roofline` (copy bandwidth
and the decode-step floor), `throughput`, `latency`, `combine`, `report` (JSON, table, plot),
`cli` (argparse); `serve`, `serve_cli`: the online serving benchmark (`pagedjax bench serve`).
"""
