"""data/pipeline.py: grain workers build the same uint8 batches as the documented per-image
scheme for any worker count, resume mid-pass, name an unreadable file, and the device finish is
the host's / 255 and Normalize bit for bit."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mist_jax.data import batches, pipeline, transforms
from mist_jax.data.files import _FileImages
from mist_jax.data.image_set import ImageSet

ROOT = Path(__file__).resolve().parents[2]


def _photos(n=11, seed=0):
    """Images of different sizes (as a folder of photographs would have)."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (int(rng.integers(20, 40)), int(rng.integers(20, 40)), 3),
                           dtype=np.uint8) for _ in range(n)]
    return ImageSet(_Listed(images), np.arange(n) % 3, 3, ("a", "b", "c"))


class _Listed(list):
    def take(self, indices):
        return [self[int(i)] for i in indices]


def _expected(s, idx, batch, tf, order_seq, transform_seq):
    """The documented scheme written out: order = default_rng(order_seq).permutation(N), and
    the image at position p drawn from default_rng((*transform_seq, p))."""
    order = np.random.default_rng(order_seq).permutation(len(idx))
    out = []
    for first in range(0, len(idx), batch):
        pos = range(first, min(first + batch, len(idx)))
        out.append(np.concatenate([tf.pixels([s.images[idx[order[p]]]],
                                             np.random.default_rng((*transform_seq, p)))
                                   for p in pos]))
    return out


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_batches_are_the_documented_ones_for_any_worker_count(workers):
    s, idx = _photos(), np.arange(11)[::-1].copy()
    tf = transforms.train_transform(16)
    maker = batches.batch_maker(s, idx, s.labels[idx], 4, tf, (7, 1), (7, 2))
    got = list(pipeline.pixel_batches(maker, workers=workers))
    want = _expected(s, idx, 4, tf, (7, 1), (7, 2))
    assert [n for n, _ in got] == [4, 4, 3]
    for (_, (x, y)), w in zip(got, want):
        assert x.dtype == np.uint8 and x.shape[1:] == (16, 16, 3)
        np.testing.assert_array_equal(x, w)
    # Resumed at batch 1: the tail of the same pass.
    tail = list(pipeline.pixel_batches(maker, start=1, workers=workers))
    for (_, (x, _)), w in zip(tail, want[1:]):
        np.testing.assert_array_equal(x, w)


def test_drop_last_leaves_out_the_last_partial_batch_as_torch_does():
    s, idx = _photos(), np.arange(11)[::-1].copy()
    tf = transforms.train_transform(16)
    maker = batches.batch_maker(s, idx, s.labels[idx], 4, tf, (7, 1), (7, 2), drop_last=True)
    got = list(pipeline.pixel_batches(maker, workers=0))
    want = _expected(s, idx, 4, tf, (7, 1), (7, 2))[:2]
    # 11 images in batches of 4: torch's DataLoader(drop_last=True) gives 2 batches, not 3.
    assert len(maker) == 2 and [n for n, _ in got] == [4, 4]
    order = np.random.default_rng((7, 1)).permutation(11)
    for b, ((_, (x, y)), w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(x, w)
        np.testing.assert_array_equal(y, s.labels[idx[order[4 * b:4 * b + 4]]])
    with pytest.raises(ValueError, match="leaves no batch: lower the learner's batch_size"):
        batches.batch_maker(s, idx, s.labels[idx], 12, tf, (7, 1), (7, 2), drop_last=True)


@pytest.mark.parametrize("tf", [transforms.test_transform(8),
                                transforms.EvalTransform(8, 9, mean=transforms.IMAGENET_MEAN,
                                                         std=transforms.IMAGENET_STD)])
def test_device_finish_is_the_host_finish_bit_for_bit(tf):
    x = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    x[0, 0, :, 0] = np.arange(8)
    host = tf.finish(x)
    if tf.mean is None:  # ToTensor: x / 255 in float32
        np.testing.assert_array_equal(host, x.astype(np.float32) / np.float32(255))
    dev = np.asarray(pipeline.device_finish(tf.lut())(x))
    assert dev.dtype == np.float32
    np.testing.assert_array_equal(dev, host)


def test_an_unreadable_image_in_a_worker_names_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    s = ImageSet(_FileImages([str(good)] * 3 + [str(bad)]), np.zeros(4, np.int64), 1, ("a",))
    maker = batches.batch_maker(s, np.arange(4), np.zeros(4), 2, transforms.test_transform(8))
    with pytest.raises(Exception, match="broken.jpg"):
        list(pipeline.pixel_batches(maker, workers=2))


def test_a_process_reading_with_workers_exits_cleanly():
    code = textwrap.dedent("""
        import numpy as np
        from mist_jax.data import batches, pipeline, transforms
        from mist_jax.data.image_set import ImageSet
        s = ImageSet(np.zeros((9, 20, 20, 3), np.uint8), np.zeros(9, np.int64), 1, ("a",))
        tf = transforms.train_transform(8)
        maker = batches.batch_maker(s, np.arange(9), np.zeros(9), 2, tf, (1,), (2,))
        it = pipeline.pixel_batches(maker, workers=2)
        next(it)  # stopped early, as a stopped run leaves its pass
        it.close()
        print(sum(1 for _ in pipeline.pixel_batches(maker, workers=2)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "5"
    assert "leaked" not in proc.stderr and "resource_tracker" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_stream_hands_out_each_epochs_batches_and_restarts_on_a_resume(workers):
    s, idx = _photos(9), np.arange(9)
    tf = transforms.train_transform(8)

    def maker(e):
        return batches.batch_maker(s, idx, s.labels, 4, tf, (3, 1, e), (3, 2, e))

    def pixels(it):
        return [x for _, (x, _) in it]

    want = {e: pixels(pipeline.pixel_batches(maker(e))) for e in range(3)}
    stream = pipeline.EpochStream(maker, 3, workers)
    iterators = set()
    for e in range(3):  # in sequence: one grain iterator for the three epochs
        got = pixels(stream(e, 0))
        iterators.add(id(stream._it))  # pylint: disable=protected-access
        assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, want[e]))
    assert len(iterators) == 1
    first = stream._it  # pylint: disable=protected-access
    # A resume inside epoch 1 (out of sequence): started again there.
    got = pixels(stream(1, 2))
    assert stream._it is not first  # pylint: disable=protected-access
    assert len(got) == 1 and np.array_equal(got[0], want[1][2])
    assert all(np.array_equal(a, b) for a, b in zip(pixels(stream(2, 0)), want[2]))
    stream.close()
