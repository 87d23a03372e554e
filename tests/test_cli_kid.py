"""``particlegan kid REAL FAKE``: success paths (text, --json, .npz) and one-line user errors (exit 2)."""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from particlegan.cli import main
from particlegan.maths.mmd import kid


def independent_kid(real, fake, n_subsets, subset_size, seed):
    """Same subset scheme (Generator(seed): fake indices, then real, without replacement), with
    StyleGAN3's algebra for MMD^2_unb and an explicit population std."""
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        values.append(((a.sum() - np.trace(a)) / (m - 1) - 2 * b.sum() / m) / m)
    values = np.array(values)
    mean = values.mean()
    return mean, np.sqrt(np.mean((values - mean) ** 2)), m


@pytest.fixture
def feature_files(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 5))
    fake = rng.normal(size=(45, 5)) * 1.1 + 0.2
    np.save(tmp_path / "real.npy", real)
    np.savez(tmp_path / "fake.npz", feats=fake, other=np.zeros(3))
    return tmp_path / "real.npy", f"{tmp_path / 'fake.npz'}:feats", real, fake


def test_kid_text_output(feature_files):
    real_path, fake_path, real, fake = feature_files
    res = CliRunner().invoke(main, ["kid", str(real_path), str(fake_path), "--subsets", "7",
                                    "--subset-size", "30", "--seed", "5"])
    assert res.exit_code == 0, res.output
    match = re.fullmatch(r"KID = (\S+) ± (\S+) \((\d+) x (\d+)\)  estimator variance (\S+) "
                         r"\((.*)\)\n", res.stdout)
    assert match, res.stdout
    var = kid(real, fake, n_subsets=7, subset_size=30, rng=5, return_variance=True).variance
    assert float(match.group(5)) == pytest.approx(var, rel=1e-5)
    if var >= 0:
        assert match.group(6) == f"std {np.sqrt(var):.6g}"
    else:  # the unbiased variance estimate can be negative at small sizes: no std is invented
        assert "negative" in match.group(6)
    assert "capped" not in res.stderr  # 30 rows fit in both files
    mean, std, m = independent_kid(real, fake, 7, 30, 5)
    assert float(match.group(1)) == pytest.approx(mean, rel=1e-5)   # printed with 6 significant digits
    assert float(match.group(2)) == pytest.approx(std, rel=1e-5)
    assert (int(match.group(3)), int(match.group(4))) == (7, m)


def test_kid_json_output_is_one_object_and_caps_subset_size(feature_files):
    real_path, fake_path, real, fake = feature_files
    res = CliRunner().invoke(main, ["kid", str(real_path), str(fake_path), "--subsets", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert len(res.stdout.strip().splitlines()) == 1
    obj = json.loads(res.stdout)
    assert set(obj) == {"kid", "kid_std", "n_subsets", "subset_size", "variance"}
    assert "warning: --subset-size 1000 capped to 45" in res.stderr
    mean, std, m = independent_kid(real, fake, 4, 1000, 0)   # default seed 0, default size 1000 -> 45
    assert obj["n_subsets"] == 4 and obj["subset_size"] == m == 45
    assert obj["kid"] == pytest.approx(mean, rel=1e-10) and obj["kid_std"] == pytest.approx(std, rel=1e-8)


def _write(path, kind):
    rng = np.random.default_rng(1)
    if kind == "object":
        np.save(path, np.array([[1.0, "a"], [2.0, None]], dtype=object), allow_pickle=True)
    elif kind == "ndim":
        np.save(path, rng.normal(size=10))
    elif kind == "nan":
        a = rng.normal(size=(10, 5))
        a[3, 2] = np.nan
        np.save(path, a)
    elif kind == "inf":
        a = rng.normal(size=(10, 5))
        a[0, 0] = -np.inf
        np.save(path, a)
    elif kind == "columns":
        np.save(path, rng.normal(size=(10, 4)))
    elif kind == "one_row":
        np.save(path, rng.normal(size=(1, 5)))
    elif kind == "strings":
        np.save(path, np.array([["a", "b"], ["c", "d"]]))
    elif kind == "corrupt":
        path.write_bytes(b"not a numpy file at all")
    elif kind == "empty_npz":
        np.savez(path)


@pytest.mark.parametrize("kind, name, message", [
    ("missing", "absent.npy", "does not exist"),
    ("object", "obj.npy", "object array"),
    ("ndim", "flat.npy", "2-D"),
    ("nan", "nan.npy", "NaN or infinite"),
    ("inf", "inf.npy", "NaN or infinite"),
    ("columns", "narrow.npy", "column mismatch"),
    ("one_row", "one.npy", "at least 2 rows"),
    ("strings", "text.npy", "real numbers"),
    ("corrupt", "bad.npy", "not a readable numpy file"),
    ("empty_npz", "empty.npz", "empty .npz"),
    ("suffix", "feats.csv", "must be .npy or .npz"),
])
def test_kid_user_errors_exit_2_with_one_line(feature_files, tmp_path, kind, name, message):
    real_path = feature_files[0]
    bad = tmp_path / name
    if kind == "suffix":
        bad.write_text("1,2\n3,4\n")
    elif kind != "missing":
        _write(bad, kind)
    res = CliRunner().invoke(main, ["kid", str(real_path), str(bad)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:") and message in lines[0] and name in lines[0]
    assert "Traceback" not in res.output and res.stdout == ""


def test_kid_bad_option_value_exits_2(feature_files):
    real_path, fake_path = feature_files[:2]
    res = CliRunner().invoke(main, ["kid", str(real_path), str(fake_path), "--subset-size", "1"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "subset_size" in lines[0]
