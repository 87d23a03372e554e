import io
import json
import os
import time

import numpy as np
import pytest

from particlegan.errors import DataError
from particlegan.store.storage import atomic_save_npz, atomic_write_json, ensure_dir, load_sample_array, npz_bytes


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


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    (np.array([1.0, 2.0]), "2-D"),
    (np.zeros((0, 2)), "empty"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
    (np.zeros((4, 3)), "columns"),
    (np.array([["a", "b"]]), "must hold real numbers"),
    (np.array([[object(), 1]], dtype=object), "object"),
    (b"not an npy file", "not a readable"),
    (np.zeros((1, 2)), "at least 2 rows"),
])
def test_load_sample_array_rejects_bad_files(tmp_path, content, fragment):
    p = tmp_path / "bad.npy"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        np.save(p, content, allow_pickle=True)
    with pytest.raises(DataError) as err:
        load_sample_array(p, "target.path", ncols=2, min_rows=2)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_load_sample_array_reads_npy_and_named_npz_arrays(tmp_path):
    a = np.arange(6, dtype=np.int32).reshape(3, 2)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", first=a * 2, second=np.zeros(1))
    np.savez(tmp_path / "c.npz", only=a * 3)
    got = load_sample_array(tmp_path / "a.npy", "x")
    assert got.dtype == np.float64 and np.array_equal(got, a)
    assert np.array_equal(load_sample_array(f"{tmp_path / 'b.npz'}:first", "x", ncols=2), a * 2)
    assert np.array_equal(load_sample_array(tmp_path / "c.npz", "x", ncols=2), a * 3)  # one array


def test_multi_array_npz_needs_a_named_array(tmp_path):
    a = np.arange(6.0).reshape(3, 2)
    np.savez(tmp_path / "b.npz", first=a, second=a)
    with pytest.raises(DataError, match=r"holds 2 arrays \(first, second\); name one as '.*b.npz:first'"):
        load_sample_array(tmp_path / "b.npz", "target.path")
    with pytest.raises(DataError, match="has no array 'third'"):
        load_sample_array(f"{tmp_path / 'b.npz'}:third", "target.path")


def test_oversized_npy_header_is_named_as_such(tmp_path):
    """numpy refuses headers over 10000 bytes as unsafe; that is not an "object array"."""
    import ast

    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 2)))
    raw = buf.getvalue()
    hlen = int.from_bytes(raw[8:10], "little")
    header = ast.literal_eval(raw[10:10 + hlen].decode())
    header["pad"] = "x" * 20000  # an extra dict key: valid syntax, just huge
    text = repr(header).encode()
    text += b" " * (-(10 + 4 + len(text) + 1) % 64) + b"\n"
    p = tmp_path / "big_header.npy"
    p.write_bytes(b"\x93NUMPY\x02\x00" + len(text).to_bytes(4, "little") + text + raw[10 + hlen:])
    with pytest.raises(DataError, match="oversized .npy header") as err:
        load_sample_array(p, "target.path")
    assert "object array" not in str(err.value)


def test_atomic_write_gives_normal_file_permissions(tmp_path):
    """Not the 0600 of the temporary file: 0666 minus the umask, like open(path, 'w')."""
    from particlegan.store.storage import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        with open(tmp_path / "b.bin", "wb") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "a.bin").st_mode & 0o777
    assert mode == 0o644 == os.stat(tmp_path / "b.bin").st_mode & 0o777


def test_atomic_write_csv_round_trips_and_formats_floats(tmp_path):
    import csv

    from particlegan.store.storage import atomic_write_csv

    rows = [{"a": 0.1, "b": "x", "c": 3}, {"a": 1 / 3, "b": "y", "c": 4, "extra": 9}]
    atomic_write_csv(tmp_path / "t.csv", rows)
    back = list(csv.DictReader((tmp_path / "t.csv").read_text().splitlines()))
    assert [float(r["a"]) for r in back] == [0.1, 1 / 3] and [r["b"] for r in back] == ["x", "y"]
    assert list(back[0]) == ["a", "b", "c"]  # header from the first row; extra keys dropped
    atomic_write_csv(tmp_path / "f.csv", rows, columns=["c", "a"], float_format="{:.3g}")
    assert (tmp_path / "f.csv").read_text() == "c,a\n3,0.1\n4,0.333\n"
    with pytest.raises(DataError, match="no rows"):
        atomic_write_csv(tmp_path / "e.csv", [])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------ IDX files ---
def _idx_bytes(arr, type_byte=0x08):
    import struct
    head = bytes([0, 0, type_byte, arr.ndim]) + b"".join(struct.pack(">I", n) for n in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype, type_byte", [(np.uint8, 0x08), (np.int16, 0x0B), (np.float32, 0x0D)])
def test_read_idx_round_trips_images_plain_and_gzipped(tmp_path, gz, dtype, type_byte):
    import gzip

    from particlegan.store.storage import read_idx

    imgs = (np.arange(5 * 4 * 3) % 251).astype(dtype).reshape(5, 4, 3)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    data = _idx_bytes(imgs, type_byte)
    path.write_bytes(gzip.compress(data) if gz else data)
    got = read_idx(path, "target.path")
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, imgs)
    np.testing.assert_array_equal(read_idx(path, "target.path", max_items=2), imgs[:2])


@pytest.mark.parametrize("mutate, words", [
    (lambda b: b"\x08\x03" + b[2:], "bad magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX data type"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b"", "bad magic number"),
])
def test_read_idx_refuses_bad_files_in_one_line(tmp_path, mutate, words):
    from particlegan.errors import DataError
    from particlegan.store.storage import read_idx

    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(_idx_bytes(np.zeros((3, 4, 4), np.uint8))))
    with pytest.raises(DataError, match=words) as info:
        read_idx(path, "target.path")
    assert "target.path" in str(info.value) and "\n" not in str(info.value)
