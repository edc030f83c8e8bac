"""Batches prepared ahead of the device step, in a thread (host decode and augmentation and
the asynchronous transfer overlap the step on the current batch)."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def prefetch(batches: Iterable, put: Callable[[Any], Any], size: int = 2) -> Iterator:
    """Yield ``put(b)`` for each b of ``batches``, preparing up to ``size`` ahead in a thread.

    The host work (decoding, augmentation) and the asynchronous transfer of the next batches
    overlap the device step on the current one. Order and values are unchanged; an exception
    in the producer is re-raised here. Closing the generator early (``close()``, or its
    garbage collection) stops the producer and waits for its batch in flight: a daemon thread
    still inside ``put`` (JAX's C++) when the interpreter exits is killed there and aborts the
    process ("FATAL: exception not rethrown"), so stopped runs must close their prefetchers.
    """
    q: queue.Queue = queue.Queue(maxsize=max(size, 1))
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for b in batches:
                if not offer(put(b)):
                    return
            offer(done)
        except BaseException as e:  # pylint: disable=broad-except; re-raised in the consumer
            offer(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        if not sys.is_finalizing():  # a thread killed by finalization would never join
            thread.join()
