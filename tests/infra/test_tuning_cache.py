"""The shared tuning cache: a damaged entry is deleted and tuned again, never used."""

import numpy as np

from mist_jax.infra.tuning_cache import TunedBackboneCache


def test_a_damaged_entry_is_dropped_and_can_be_stored_again(tmp_path):
    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    rng, dropped = np.random.default_rng(1), 0
    for trial in range(12):
        cache = TunedBackboneCache(tmp_path / f"c{trial}", {"seed": 0, "learner": {"name": "x"}})
        cache.save(0, "d", {"params": {"w": w}}, {"seconds": 1.0})
        files = [f for f in (tmp_path / f"c{trial}").rglob("*") if f.is_file()
                 and "/state/" in str(f) and "metadata" not in f.name.lower()]
        f = max(files, key=lambda f: f.stat().st_size)
        data = bytearray(f.read_bytes())
        data[int(rng.integers(len(data) // 4, len(data)))] ^= 4
        f.write_bytes(bytes(data))
        got = cache.load(0, "d")
        if got is None:  # dropped with a warning: the next run tunes and stores it again
            dropped += 1
            cache.save(0, "d", {"params": {"w": w}}, {"seconds": 2.0})
            got = cache.load(0, "d")
            assert got[1]["seconds"] == 2.0
        np.testing.assert_array_equal(got[0]["params"]["w"], w)
    assert dropped
