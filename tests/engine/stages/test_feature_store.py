"""R-CNN's on-disk feature cache: written in blocks, committed atomically, checked on open."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rcnn_cli.engine.stages.feature_store import FeatureStore, meta_path
from rcnn_cli.errors import DataError


def make_store(path, rows=10, dim=4):
    data = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    store = FeatureStore.create(path, rows, dim)
    assert not path.exists()  # written under a temporary name until committed
    store.write(0, data[:6])
    store.write(6, data[6:])
    return store.commit({"image_ids": [1, 2], "regions": [6, 4]}), data


def test_round_trip_is_a_read_only_memmap_with_metadata(tmp_path):
    path = tmp_path / "fc7.npy"
    committed, data = make_store(path)
    opened = FeatureStore.open(path, expect={"dim": 4, "image_ids": [1, 2]})
    for store in (committed, opened):
        assert isinstance(store.array, np.memmap) and not store.array.flags.writeable
        assert np.array_equal(store.array, data) and len(store) == 10
        assert store.meta == {"image_ids": [1, 2], "regions": [6, 4], "shape": [10, 4],
                              "dtype": "float32"}
    assert sorted(tmp_path.iterdir()) == sorted([path, meta_path(path)])  # no temp file left


def test_blocks_that_do_not_fit_are_rejected(tmp_path):
    store = FeatureStore.create(tmp_path / "f.npy", 4, 3)
    with pytest.raises(ValueError, match="does not fit"):
        store.write(3, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        store.write(0, np.zeros((2, 5)))
    store.discard()
    assert list(tmp_path.iterdir()) == []


def test_mismatches_raise_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "fc7.npy"
    make_store(path)
    with pytest.raises(DataError, match=r"fc7\.npy.*'dim' is 4, expected 8"):
        FeatureStore.open(path, expect={"dim": 8})
    with pytest.raises(DataError, match=r"fc7\.npy.*'image_ids'"):
        FeatureStore.open(path, expect={"image_ids": [1, 3]})
    meta = json.loads(meta_path(path).read_text())
    meta_path(path).write_text(json.dumps({**meta, "shape": [11, 4]}))
    with pytest.raises(DataError, match=r"fc7\.npy.*does not match"):
        FeatureStore.open(path)
    with pytest.raises(DataError, match=r"missing\.npy"):
        FeatureStore.open(tmp_path / "missing.npy")


def test_a_truncated_array_raises_a_data_error(tmp_path):
    path = tmp_path / "fc7.npy"
    make_store(path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"fc7\.npy"):
        FeatureStore.open(path)
