import numpy as np
import pytest

from particlegan.backends import get_backend
from particlegan.engine.observables import (collapse_measure, kid_observable, make_mmd_reference, measure,
                                     mmd2_unbiased_gaussian, modes_covered, nearest_mode, radius_of_gyration)
from particlegan.model.targets import ring_centres

NP = get_backend("numpy")
CENTRES = ring_centres(8, 0.75, 2)


def test_collapse_measure_extremes_and_kl_identity():
    assign_uniform = np.arange(800) % 8
    assert collapse_measure(assign_uniform, 8) == pytest.approx(0.0, abs=1e-12)
    assert collapse_measure(np.zeros(100, dtype=int), 8) == pytest.approx(np.log(8), rel=1e-12)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 500)
    p = np.bincount(a, minlength=8) / 500
    kl = sum(pk * np.log(pk * 8) for pk in p if pk > 0)   # KL(p || uniform)
    assert collapse_measure(a, 8) == pytest.approx(kl, rel=1e-12)


def test_nearest_mode_matches_brute_force_and_chunking():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3001, 2))
    idx, dist = nearest_mode(x, CENTRES)
    d = np.linalg.norm(x[:, None] - CENTRES[None], axis=-1)
    np.testing.assert_array_equal(idx, d.argmin(1))
    np.testing.assert_allclose(dist, d.min(1), rtol=1e-10, atol=1e-12)


def test_modes_covered_and_hq_fraction():
    sigma = 0.075
    x = np.concatenate([CENTRES[:3] + 0.5 * sigma, CENTRES[3:4] + 4 * sigma, np.zeros((2, 2))])
    assert modes_covered(x, CENTRES, 3 * sigma) == 3
    obs = measure(x, CENTRES, sigma, 3.0, None, NP, np.zeros(2))
    assert obs["modes_covered"] == 3
    assert obs["hq_fraction"] == pytest.approx(3 / 6)
    assert np.isnan(obs["mmd2"])


def test_radius_of_gyration():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + 5.0
    assert radius_of_gyration(x) == pytest.approx(1.0)


def test_mmd2_matches_direct_unbiased_estimator():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(40, 2))
    x = rng.normal(size=(25, 2)) + 0.3
    ref = make_mmd_reference(y, 0.5, 1000, rng, NP)

    def k(a, b):
        return np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * 0.25))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    direct = ((kxx.sum() - np.trace(kxx)) / (25 * 24) + (kyy.sum() - np.trace(kyy)) / (40 * 39)
              - 2 * kxy.mean())
    assert mmd2_unbiased_gaussian(x, ref, NP) == pytest.approx(direct, rel=1e-10)


def test_mmd_reference_subsamples():
    y = np.random.default_rng(3).normal(size=(500, 2))
    ref = make_mmd_reference(y, 0.5, 100, np.random.default_rng(0), NP)
    assert ref.y.shape == (100, 2)


def _direct_kid(x, y, pairs):
    """KID by hand: unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 on each (fake, real) subset."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1.0) ** 3

    vals = []
    for i_f, i_r in pairs:
        f, r = x[i_f], y[i_r]
        m = len(f)
        kff, krr, kfr = k(f, f), k(r, r), k(f, r)
        vals.append((kff.sum() - np.trace(kff)) / (m * (m - 1)) + (krr.sum() - np.trace(krr)) / (m * (m - 1))
                    - 2 * kfr.mean())
    return np.mean(vals), np.std(vals)


@pytest.mark.parametrize("n, subset_size, expected_size", [(60, 25, 25), (20, 50, 20)])
def test_kid_observable_matches_direct_computation_on_the_same_subsets(n, subset_size, expected_size):
    data = np.random.default_rng(4)
    x = data.normal(size=(n, 2)) * 0.3 + 0.1
    y = data.normal(size=(80, 2)) * 0.5
    out = kid_observable(x, y, 5, subset_size, np.random.default_rng(11))
    # the same draws, by hand: per subset fake indices then real indices, size capped at min(N, M)
    rng = np.random.default_rng(11)
    pairs = [(rng.choice(n, expected_size, replace=False), rng.choice(80, expected_size, replace=False))
             for _ in range(5)]
    kid, std = _direct_kid(x, y, pairs)
    assert set(out) == {"kid", "kid_std"}
    assert out["kid"] == pytest.approx(kid, rel=1e-10, abs=1e-14)
    assert out["kid_std"] == pytest.approx(std, rel=1e-10, abs=1e-14)
    from particlegan.maths.mmd import kid as mmd_kid

    same = mmd_kid(y, x, subsets=pairs)
    assert (out["kid"], out["kid_std"]) == (same.kid, same.kid_std)


def test_kid_observable_draws_from_the_given_stream():
    data = np.random.default_rng(5)
    x, y = data.normal(size=(30, 2)), data.normal(size=(40, 2))
    rng = np.random.default_rng(0)
    first = kid_observable(x, y, 3, 10, rng)
    second = kid_observable(x, y, 3, 10, rng)       # the stream moved on: other subsets
    assert first != second
    assert kid_observable(x, y, 3, 10, np.random.default_rng(0)) == first


def test_cosine_observables_match_a_direct_loop():
    import math

    from particlegan.engine.observables import cosine_observables

    rng = np.random.default_rng(4)
    y = rng.random((6, 5))
    x = np.concatenate([y[[0, 0, 3]] * 2.0 + 1e-3 * rng.normal(size=(3, 5)), rng.random((4, 5))])
    got = cosine_observables(x, y)

    def cos(a, b):
        return sum(ai * bi for ai, bi in zip(a, b)) / math.sqrt(sum(v * v for v in a) * sum(v * v for v in b))
    assign, best = [], []
    for xi in x:
        dists = [1 - cos(xi, ym) for ym in y]
        m = min(range(len(y)), key=lambda k: dists[k])
        assign.append(m)
        best.append(dists[m])
    p = [assign.count(m) / len(x) for m in range(len(y))]
    want_c = math.log(len(y)) + sum(pm * math.log(pm + 1e-8) for pm in p)
    spread = [abs(cos(x[i], x[j])) for i in range(len(x)) for j in range(len(x)) if i != j]
    assert got["collapse_cos"] == pytest.approx(want_c, abs=1e-12)
    assert got["quality_cos"] == pytest.approx(sum(best) / len(best), abs=1e-12)
    assert got["spread_cos"] == pytest.approx(sum(spread) / len(spread), abs=1e-12)
    assert got["targets_hit"] == len(set(assign)) and assign[:3] == [0, 0, 3]
    # every target hit once: C ~ 0; all particles on one target: C = log M
    assert cosine_observables(y * 3, y)["collapse_cos"] == pytest.approx(0, abs=1e-6)
    assert cosine_observables(np.repeat(y[:1], 6, axis=0), y)["collapse_cos"] == pytest.approx(math.log(6), abs=1e-6)
