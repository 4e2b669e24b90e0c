"""Request, StopCriteria and the stop checks (vLLM v1's order)."""

from __future__ import annotations

import pytest

from scheduler.request import Request, RequestStatus, StopCriteria, check_stop


def test_stop_criteria_validates_and_normalises():
    stop = StopCriteria(max_tokens=4, min_tokens=2, stop_token_ids=[5, 6, 5], eos_token_id=2)
    assert stop.stop_token_ids == frozenset({5, 6})
    with pytest.raises(ValueError, match="max_tokens"):
        StopCriteria(max_tokens=0)
    with pytest.raises(ValueError, match="max_tokens"):
        StopCriteria(max_tokens=True)
    with pytest.raises(ValueError, match="min_tokens"):
        StopCriteria(max_tokens=3, min_tokens=4)
    with pytest.raises(ValueError, match="min_tokens"):
        StopCriteria(max_tokens=3, min_tokens=-1)
    with pytest.raises(ValueError, match="stop_token_ids"):
        StopCriteria(max_tokens=3, stop_token_ids=[-1])
    with pytest.raises(ValueError, match="eos_token_id"):
        StopCriteria(max_tokens=3, eos_token_id=-2)
    with pytest.raises(AttributeError):
        stop.max_tokens = 5  # frozen


def test_request_token_state():
    request = Request("r", (3, 4, 5), StopCriteria(max_tokens=8))
    assert request.status is RequestStatus.WAITING and not request.status.is_finished
    assert (request.num_tokens, request.num_prompt_tokens, request.num_output_tokens) == (3, 3, 0)
    all_tokens = request.all_token_ids
    request.append_output_token(9)
    assert request.all_token_ids is all_tokens  # one growing list, never rebuilt
    assert all_tokens == [3, 4, 5, 9] and request.output_token_ids == [9]
    assert request.prompt_token_ids == [3, 4, 5]
    assert request.finish_reason is None
    forked = Request("f", [3, 4, 5], StopCriteria(max_tokens=8), output_token_ids=[7])
    assert forked.all_token_ids == [3, 4, 5, 7] and forked.num_output_tokens == 1
    with pytest.raises(ValueError, match="at least one token"):
        Request("e", [], StopCriteria(max_tokens=1))
    with pytest.raises(ValueError, match="request_id"):
        Request("", [1], StopCriteria(max_tokens=1))
    with pytest.raises(ValueError, match=">= 0"):
        Request("n", [1, -1], StopCriteria(max_tokens=1))


@pytest.mark.parametrize(
    "status, reason, finished",
    [
        (RequestStatus.WAITING, None, False),
        (RequestStatus.RUNNING, None, False),
        (RequestStatus.PREEMPTED, None, False),
        (RequestStatus.FINISHED_STOPPED, "stop", True),
        (RequestStatus.FINISHED_LENGTH, "length", True),
        (RequestStatus.FINISHED_ABORTED, "abort", True),
    ],
)
def test_finish_reason(status, reason, finished):
    request = Request("r", [1], StopCriteria(max_tokens=1))
    request.status = status
    assert request.finish_reason == reason
    assert status.is_finished is finished


def run_stop(stop: StopCriteria, outputs: list[int], prompt_len: int = 3, max_model_len: int = 100):
    """Append outputs one by one until check_stop says stop: (num appended, status, stop_reason)."""
    request = Request("r", list(range(10, 10 + prompt_len)), stop)
    for n, token in enumerate(outputs, 1):
        request.append_output_token(token)
        if check_stop(request, max_model_len):
            return n, request.status, request.stop_reason
    return len(outputs), request.status, request.stop_reason


STOPPED, LENGTH, WAITING = RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.WAITING


def test_stop_token_sets_stop_reason():
    assert run_stop(StopCriteria(max_tokens=10, stop_token_ids={7}), [1, 2, 7, 3]) == (3, STOPPED, 7)


def test_eos_stops_without_stop_reason():
    assert run_stop(StopCriteria(max_tokens=10, eos_token_id=2), [1, 2, 3]) == (2, STOPPED, None)


def test_eos_none_means_ignore_eos():
    assert run_stop(StopCriteria(max_tokens=3), [2, 2, 2, 2]) == (3, LENGTH, None)


def test_eos_is_checked_before_stop_tokens():
    stop = StopCriteria(max_tokens=10, stop_token_ids={2}, eos_token_id=2)
    assert run_stop(stop, [1, 2]) == (2, STOPPED, None)


def test_max_tokens_is_checked_first():
    # vLLM v1: the length check comes before eos / stop tokens.
    stop = StopCriteria(max_tokens=2, stop_token_ids={7}, eos_token_id=2)
    assert run_stop(stop, [1, 7]) == (2, LENGTH, None)
    assert run_stop(stop, [1, 2]) == (2, LENGTH, None)


def test_min_tokens_defers_eos_and_stop_tokens_only():
    stop = StopCriteria(max_tokens=10, min_tokens=3, stop_token_ids={7}, eos_token_id=2)
    assert run_stop(stop, [7, 2, 5, 7]) == (4, STOPPED, 7)
    assert run_stop(stop, [7, 2, 2]) == (3, STOPPED, None)  # the 3rd output may stop
    # ...but never the length limits: max_model_len stops even before min_tokens.
    stop = StopCriteria(max_tokens=10, min_tokens=8)
    assert run_stop(stop, [1] * 10, prompt_len=3, max_model_len=6) == (3, LENGTH, None)


def test_max_model_len_counts_prompt_and_output():
    stop = StopCriteria(max_tokens=100, eos_token_id=2)
    assert run_stop(stop, [1] * 10, prompt_len=5, max_model_len=8) == (3, LENGTH, None)
    assert run_stop(stop, [1, 1, 2], prompt_len=5, max_model_len=8) == (3, LENGTH, None)  # length wins


def test_no_stop_leaves_status_alone():
    assert run_stop(StopCriteria(max_tokens=10, stop_token_ids={7}), [1, 2]) == (2, WAITING, None)
