"""Pure-Python scheduling for pagedjax: requests, the KV block manager, the
continuous-batching scheduler and its output contract. Imports no jax."""

from scheduler.block_manager import BlockManager
from scheduler.output import ScheduledRequest, SchedulerOutput, SchedulerUpdate
from scheduler.request import Request, RequestStatus, StopCriteria, check_stop
from scheduler.scheduler import Scheduler, SchedulerConfig

__all__ = [
    "BlockManager",
    "Request",
    "RequestStatus",
    "ScheduledRequest",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "SchedulerUpdate",
    "StopCriteria",
    "check_stop",
]
