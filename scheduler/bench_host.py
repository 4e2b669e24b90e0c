"""Host-time benchmark of the scheduler's decode step: schedule() + update().

    python -m scheduler.bench_host [--num-seqs 256] [--prompt-len 500] [--steps 200]

Sets up `num_seqs` running requests with `prompt_len`-token prompts (prefilled, then
decoding; prefix caching on, no hits), then times decode steps. The model is a
stand-in that returns a fixed token, so only scheduler work is measured.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from scheduler.request import Request, StopCriteria
from scheduler.scheduler import Scheduler, SchedulerConfig


def measure_decode_step(
    num_seqs: int = 256,
    prompt_len: int = 500,
    steps: int = 200,
    block_size: int = 16,
    enable_prefix_caching: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Median / mean / max microseconds of schedule(), update() and both per decode step."""
    rng = random.Random(seed)
    # Room for the outputs of the prefill phase (~num_seqs * prompt_len / 8192 steps) too.
    max_model_len = prompt_len + steps + num_seqs * prompt_len // 8192 + 16
    blocks_per_seq = -(-max_model_len // block_size)
    scheduler = Scheduler(
        SchedulerConfig(
            num_blocks=num_seqs * blocks_per_seq + 16,
            max_model_len=max_model_len,
            block_size=block_size,
            max_num_seqs=num_seqs,
            max_num_batched_tokens=8192,
            enable_prefix_caching=enable_prefix_caching,
        )
    )
    for i in range(num_seqs):
        prompt = [rng.randrange(32000) for _ in range(prompt_len)]
        scheduler.add_request(Request(f"req-{i}", prompt, StopCriteria(max_tokens=max_model_len)))

    def step() -> tuple[float, float, int]:
        t0 = time.perf_counter()
        output = scheduler.schedule()
        t1 = time.perf_counter()
        sampled = {s.request_id: 7 for s in output.scheduled if s.sample}
        t2 = time.perf_counter()
        scheduler.update(output, sampled)
        t3 = time.perf_counter()
        return t1 - t0, t3 - t2, len(output.scheduled)

    # Prefill until every request decodes (each step then schedules num_seqs tokens).
    for _ in range(10_000):
        step()
        if scheduler.num_running == num_seqs and all(
            scheduler.get_request(f"req-{i}").num_output_tokens > 0 for i in range(num_seqs)
        ):
            break
    schedule_us, update_us = [], []
    for _ in range(steps):
        t_schedule, t_update, num_scheduled = step()
        assert num_scheduled == num_seqs, num_scheduled
        schedule_us.append(t_schedule * 1e6)
        update_us.append(t_update * 1e6)
    total = [a + b for a, b in zip(schedule_us, update_us)]
    return {
        "num_seqs": num_seqs,
        "prompt_len": prompt_len,
        "steps": steps,
        "schedule_us_median": statistics.median(schedule_us),
        "update_us_median": statistics.median(update_us),
        "step_us_median": statistics.median(total),
        "step_us_mean": statistics.fmean(total),
        "step_us_max": max(total),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=500)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--no-prefix-caching", action="store_true")
    args = parser.parse_args(argv)
    result = measure_decode_step(
        args.num_seqs, args.prompt_len, args.steps, args.block_size, not args.no_prefix_caching
    )
    for key, value in result.items():
        print(f"{key:>20}: {value:.1f}" if isinstance(value, float) else f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
