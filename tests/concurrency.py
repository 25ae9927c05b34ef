"""Run pieces of work at the same moment, in threads, for the tests of races."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_together(*works: Callable[[], object]) -> None:
    """Start every work at once (a barrier), wait for all, and raise the first error."""
    barrier = threading.Barrier(len(works))
    errors: list[BaseException] = []

    def run(work: Callable[[], object]) -> None:
        barrier.wait()
        try:
            work()
        except BaseException as exc:  # raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
