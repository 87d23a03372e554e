import json
import os
import time

import numpy as np
import pytest

from particlegan.errors import DataError
from particlegan.storage import atomic_save_npz, atomic_write_json, ensure_dir, npz_bytes


def test_npz_is_deterministic_and_loadable(tmp_path):
    arrays = {"b": np.arange(5.0), "a": np.eye(3, dtype=np.float32), "s": np.array([1, 2], dtype=np.int64)}
    first = npz_bytes(arrays)
    time.sleep(1.1)  # a zip timestamp would change across seconds
    assert npz_bytes(arrays) == first
    atomic_save_npz(tmp_path / "r.npz", arrays)
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["a", "b", "s"]
        for k, v in arrays.items():
            np.testing.assert_array_equal(z[k], v)
            assert z[k].dtype == v.dtype


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1.5})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1.5}
    assert os.listdir(tmp_path) == ["x.json"]


def test_failed_write_keeps_previous_file(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"a": object()})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_ensure_dir_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(DataError, match="cannot be created"):
        ensure_dir(f / "sub")
