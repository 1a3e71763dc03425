"""audiocnn.workers: the one pool behind tag's decoders, the store's extractors and the probes."""

from __future__ import annotations

import os
import time

import pytest

from audiocnn import workers
from audiocnn.errors import UsageError


def _square(x: int) -> int:
    if x % 3 == 0:
        time.sleep(0.02)  # finish out of order
    return x * x


def _count_up(n: int):
    yield from range(n)
    return f"{n} done"


def _fail_on_5(x: int) -> int:
    if x == 5:
        raise ValueError(f"bad task {x}")
    return x


def _die_on_2(x: int) -> int:
    if x == 2:
        os._exit(17)
    time.sleep(0.05)
    return x


@pytest.mark.parametrize("jobs", [1, 2])
def test_results_in_order_and_items_streamed(jobs):
    done = [
        v for kind, _i, v in workers.run(_square, range(12), jobs=jobs, start="fork", ordered=True) if kind == "done"
    ]
    assert done == [x * x for x in range(12)]
    events = list(workers.run(_count_up, [2, 3], jobs=jobs, start="fork", ordered=True))
    items = sorted((i, v) for kind, i, v in events if kind == "item")
    assert items == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert [(i, v) for kind, i, v in events if kind == "done"] == [(0, "2 done"), (1, "3 done")]


def test_an_error_in_a_task_is_raised_here_as_raised_there():
    with pytest.raises(ValueError, match="bad task 5") as err:
        list(workers.run(_fail_on_5, range(10), jobs=2, start="fork"))
    assert "_fail_on_5" in str(err.value.__cause__)  # the worker's traceback comes along


def test_a_dead_worker_is_reported_not_waited_for():
    start = time.monotonic()
    with pytest.raises(workers.WorkerDied, match="exit code 17"):
        list(workers.run(_die_on_2, range(8), jobs=2, start="fork"))
    assert time.monotonic() - start < 10


def test_a_reader_that_stops_early_ends_the_workers():
    import multiprocessing as mp

    events = workers.run(_count_up, [10**9, 10**9], jobs=2, start="fork", queue_size=4)
    assert next(events)[0] == "item"
    assert len(mp.active_children()) == 2
    start = time.monotonic()
    events.close()  # what a consumer that breaks out of its loop does
    assert not mp.active_children() and time.monotonic() - start < 5


def test_jobs_must_be_at_least_one():
    assert workers.resolve_jobs(None) == workers.usable_cpus() >= 1
    assert workers.resolve_jobs(3) == 3
    with pytest.raises(UsageError, match="jobs=0") as err:
        workers.resolve_jobs(0)
    assert err.value.arguments == ("jobs",)
