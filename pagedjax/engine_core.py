"""`EngineCore`: the loop schedule -> execute -> update, and nothing else.

Synchronous mode runs one step at a time. With asynchronous scheduling (vLLM's
`async_scheduling`, the default) one step stays in flight: `step()` schedules and dispatches
step N+1 — its inputs prepared on the host while step N runs on the device, each decoding
request assumed to get its one token, which the device feeds in — before it waits for step
N's results and applies them. Stop conditions therefore apply one step late; a token sampled
past a stop is dropped by the scheduler, never returned.
"""

from __future__ import annotations

import collections
import dataclasses
import time

from scheduler.output import SchedulerOutput, SchedulerUpdate


@dataclasses.dataclass
class CoreStep:
    """One finished step: what was scheduled, what the runner returned, what the scheduler did."""

    scheduler_output: SchedulerOutput
    runner_output: object  # pagedjax.runner.ModelRunnerOutput
    update: SchedulerUpdate


class StepFailed(RuntimeError):
    """A step failed between scheduling and its results; `lost_request_ids` were in it."""

    def __init__(self, error: BaseException, lost_request_ids: list[str]):
        super().__init__(f"engine step failed ({error!r})")
        self.error, self.lost_request_ids = error, lost_request_ids


class EngineCore:
    """Drives a `Scheduler` and a `ModelRunner`; at most one step in flight when asynchronous."""

    def __init__(self, scheduler, runner, *, async_scheduling: bool):
        self.scheduler, self.runner = scheduler, runner
        self.async_scheduling = async_scheduling
        self._queue: collections.deque = collections.deque()  # (SchedulerOutput, StepHandle)
        self.step_observers: list = []  # called with each non-empty SchedulerOutput
        self.num_steps = 0
        self.host_seconds = 0.0  # step() time not spent waiting for the device nor compiling
        self.wait_seconds = 0.0  # time spent waiting for the device's results

    def has_work(self) -> bool:
        return self.scheduler.has_unfinished_requests() or bool(self._queue)

    def step(self) -> CoreStep | None:
        """Schedules and dispatches the next step (if one fits) and returns the oldest finished
        step, or None while the one in flight is kept running (asynchronous mode) or there is
        nothing to do. Raises `StepFailed` after recovering: every request is then waiting to
        recompute (the scheduler's `recover_from_failure`), with a fresh KV pool."""
        start = time.perf_counter()
        compiling = self.runner.steps.compile_seconds
        waited = 0.0
        output = None
        # NOTE: a request whose next bitmask needs its last token (a grammar) is never fed from the
        # device: with such a request running, the step in flight finishes first.
        if len(self._queue) < (2 if self.async_scheduling else 1) and not (
                self._queue and self.scheduler.has_feedback_requests()):
            output = self.scheduler.schedule()
            if output.scheduled:
                for observe in self.step_observers:
                    observe(output)
        try:
            if output is not None and output.scheduled:
                self._queue.append((output, self.runner.execute_model(output)))
            if not self._queue or (self.async_scheduling and len(self._queue) == 1 and output is not None
                                   and output.scheduled):
                return None
            done, handle = self._queue.popleft()
            t0 = time.perf_counter()
            result = handle.result()
            waited = time.perf_counter() - t0
        except Exception as error:
            raise StepFailed(error, self._recover()) from error
        finally:
            self.wait_seconds += waited
        update = self.scheduler.update(done, result.sampled)
        self.num_steps += 1
        compiling = self.runner.steps.compile_seconds - compiling
        self.host_seconds += time.perf_counter() - start - waited - compiling
        return CoreStep(done, result, update)

    def _recover(self) -> list[str]:
        """After a failure: nothing in flight survives; the runner starts afresh."""
        self._queue.clear()
        lost = self.scheduler.recover_from_failure()
        self.runner.reset_after_failure()
        return lost
