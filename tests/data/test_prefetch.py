"""Batches prepared ahead in a thread (mist_jax/data/prefetch.py): order kept, an early stop
stops and joins the producer, and a producer's error reaches the consumer."""

import threading
import time

import pytest

from mist_jax.data import prefetch


def test_prefetch_keeps_order_stops_early_and_reraises():
    assert list(prefetch.prefetch(range(7), lambda b: b * 10)) == [0, 10, 20, 30, 40, 50, 60]
    produced = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield i

    def slow_put(b):  # a batch is always in flight when the consumer stops
        time.sleep(0.2)
        return b

    threads = threading.active_count()
    it = prefetch.prefetch(source(), slow_put, size=2)
    assert next(it) == 0
    it.close()  # the consumer stops: the producer must stop too, a few batches ahead at most,
    # and be joined by close() itself (a daemon thread inside put at exit aborts the process)
    assert threading.active_count() == threads
    assert len(produced) <= 5

    def boom(b):
        if b == 2:
            raise RuntimeError("bad batch 2")
        return b

    with pytest.raises(RuntimeError, match="bad batch 2"):
        list(prefetch.prefetch(range(5), boom))
