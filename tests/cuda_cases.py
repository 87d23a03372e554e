"""cuda backend against the numpy reference. Not collected by the main run (name lacks the test_
prefix): tests/test_backends_cuda.py runs it in a subprocess with NUMBA_ENABLE_CUDASIM=1 set
before numba is imported, plus NUMBA_DISABLE_JIT=1 so that the pairmath functions the kernels
call run as Python instead of being compiled for every dtype (the compiled device versions are
type-checked in test_backends_cuda.py); on a real GPU it runs compiled.

Sizes stay at N, M <= 64 (the simulator does ~2e4 pair interactions/s) but exceed one 32-thread
block, so partial tiles, several blocks and the split of centres over blockIdx.y (atomic adds)
are all exercised. Tolerances relative to sum_j |w_j| |k_ij| (+ its row mean):
float64 1e-12, float32 2e-5 (float32 accumulation on the device).
"""
import zlib

import numpy as np
import pytest

from particlegan.backends import get_backend
from particlegan.maths.kernels import KERNEL_NAMES, kernel_grad_matrix, kernel_matrix, make_kernel, ntk_matrix

RTOL = {np.float64: 1e-12, np.float32: 2e-5}
PARAMS = {
    "gaussian": dict(sigma=0.9),
    "gaussian_mixture": dict(sigmas=(0.4, 1.5), weights=(2.0, 0.5)),
    "rq": dict(c_dot=0.2),
    "distance": dict(eps=0.1),
    "energy": dict(),
    "distance_induced": dict(beta=0.75),
    "riesz": dict(s=1.0, eps=0.3),
    "polynomial": dict(degree=2),
    "linear": dict(),
    "imq": dict(c=1.2),
}


@pytest.fixture(scope="module")
def cuda_backend():
    return get_backend("cuda")


def close_to_scale(got, expect, scale, rtol):
    err = np.abs(np.asarray(got, dtype=np.float64) - expect)
    scale = scale + scale.mean()
    assert np.all(err <= rtol * scale), f"max rel err {np.max(err / scale):.3e} > {rtol}"


def spec_for(name, d, rng):
    params = dict(PARAMS[name])
    if name == "distance":
        params["x0"] = tuple(rng.normal(size=d))
    if name == "distance_induced":
        params["z"] = tuple(0.3 * rng.normal(size=d))
    return make_kernel(name, **params)


# every kernel in float64, d = 2; float32 and other d for a spread of kernel families
CASES = ([(name, 2, np.float64) for name in KERNEL_NAMES]
         + [("gaussian", 2, np.float32), ("gaussian_mixture", 5, np.float32), ("rq", 1, np.float32),
            ("distance", 3, np.float32), ("polynomial", 3, np.float32), ("gaussian", 1, np.float64)])


@pytest.mark.parametrize("name, d, dtype", CASES)
def test_kernel_sums(cuda_backend, name, d, dtype):
    rng = np.random.default_rng([d, zlib.crc32(name.encode())])
    spec = spec_for(name, d, rng)
    X = rng.normal(size=(37, d)).astype(dtype)
    Y = (rng.normal(size=(45, d)) + 0.2).astype(dtype)
    w = rng.normal(size=45).astype(dtype)
    X64, Y64, w64 = (a.astype(np.float64) for a in (X, Y, w))
    K, G = kernel_matrix(X64, Y64, spec), kernel_grad_matrix(X64, Y64, spec)
    vals, grads = cuda_backend.kernel_value_and_grad_sum(X, Y, w, spec)
    assert vals.dtype == dtype and grads.dtype == dtype and grads.shape == X.shape
    close_to_scale(vals, K @ w64, np.abs(K) @ np.abs(w64), RTOL[dtype])
    g_scale = np.einsum("ijk,j->ik", np.abs(G), np.abs(w64)) + (np.linalg.norm(G, axis=2) @ np.abs(w64))[:, None]
    close_to_scale(grads, np.einsum("ijk,j->ik", G, w64), g_scale, RTOL[dtype])
    if name == "gaussian" and d == 2:  # the single-output entry points agree with the fused one
        np.testing.assert_allclose(cuda_backend.kernel_sum(X, Y, w, spec), vals, rtol=1e-6)
        np.testing.assert_allclose(cuda_backend.kernel_grad_sum(X, Y, w, spec), grads, rtol=1e-6)
        assert isinstance(cuda_backend.pair_sum(X, Y, spec), float)
        np.testing.assert_allclose(cuda_backend.pair_sum(X, Y, spec), K.sum(), rtol=RTOL[dtype] * 10)


@pytest.mark.parametrize("kind, sigma_b, dtype", [("relu", 0.0, np.float64), ("erf", 0.3, np.float32),
                                                  ("relu", 0.4, np.float32), ("erf", 0.0, np.float64)])
def test_ntk_apply(cuda_backend, kind, sigma_b, dtype):
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(40, 11)).astype(dtype)  # dz = 11: more than one latent chunk
    F = rng.normal(size=(40, 2)).astype(dtype)
    out = cuda_backend.ntk_apply(Z, F, kind, 1.2, sigma_b)
    T = ntk_matrix(Z.astype(np.float64), Z.astype(np.float64), kind, 1.2, sigma_b)
    assert out.dtype == dtype and out.shape == F.shape
    # float32: relu Theta near theta = 0 moves by ~sqrt(eps32) with rounding of the cosine
    rtol = 1e-12 if dtype == np.float64 else 1e-4
    close_to_scale(out, T @ F.astype(np.float64), np.abs(T) @ np.abs(F.astype(np.float64)), rtol)


@pytest.mark.parametrize("activation, dtype", [("cos", np.float32), ("relu", np.float64)])
def test_random_features(cuda_backend, activation, dtype):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(13, 3)).astype(dtype)
    A, b = rng.normal(size=(20, 3)).astype(dtype), rng.uniform(-3, 3, size=20).astype(dtype)
    psi, dpsi = cuda_backend.random_features(X, A, b, activation, 0.3)
    ref_psi, ref_dpsi = get_backend("numpy").random_features(X.astype(np.float64), A.astype(np.float64),
                                                             b.astype(np.float64), activation, 0.3)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert psi.dtype == dtype and psi.shape == (13, 20)
    np.testing.assert_allclose(psi, ref_psi, atol=tol)
    H = X.astype(np.float64) @ A.astype(np.float64).T + b
    keep = np.abs(H) > 1e-5  # float32 rounding may flip the relu step next to the kink
    np.testing.assert_allclose(dpsi[keep], ref_dpsi[keep], atol=tol)
    mean, dpsi2 = cuda_backend.feature_mean_and_dpsi(X, A, b, activation, 0.3)
    assert mean.dtype == dtype and mean.shape == (20,)
    np.testing.assert_allclose(mean, ref_psi.mean(axis=0), atol=tol)
    np.testing.assert_array_equal(dpsi2, dpsi)
    w = rng.normal(size=20).astype(dtype)
    np.testing.assert_allclose(cuda_backend.feature_input_grads(dpsi, A, w), (dpsi * w) @ A,
                               rtol=1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("activation, dtype", [("cos", np.float32), ("relu", np.float64)])
def test_feature_ops_of_an_ensemble_are_each_members_own_call(cuda_backend, activation, dtype):
    """One launch over the member axis (blockIdx.z) gives member m bitwise what its own call
    gives (the ensembles' contract, tests/test_ensemble.py); members differ in A, b and X."""
    from particlegan.backends import members

    rng = np.random.default_rng(5)
    X = rng.normal(size=(3, 11, 2)).astype(dtype)
    A, b = rng.normal(size=(3, 17, 2)).astype(dtype), rng.uniform(-3, 3, size=(3, 17)).astype(dtype)
    ops = members(cuda_backend)
    assert ops.random_features is cuda_backend.random_features_members  # the one-launch form, not the loop
    psi, dpsi = ops.random_features(X, A, b, activation, 0.3)
    mean, dpsi2 = ops.feature_mean_and_dpsi(X, A, b, activation, 0.3)
    assert psi.shape == dpsi.shape == (3, 11, 17) and psi.dtype == dtype and mean.shape == (3, 17)
    for m in range(3):
        own_psi, own_dpsi = cuda_backend.random_features(X[m], A[m], b[m], activation, 0.3)
        np.testing.assert_array_equal(psi[m], own_psi)
        np.testing.assert_array_equal(dpsi[m], own_dpsi)
        own_mean, _ = cuda_backend.feature_mean_and_dpsi(X[m], A[m], b[m], activation, 0.3)
        np.testing.assert_array_equal(mean[m], own_mean)
    np.testing.assert_array_equal(dpsi2, dpsi)


def test_an_ensemble_on_cuda_is_each_members_own_run():
    """A two-member ensemble on the cuda backend (feature ops over the member axis in one launch)
    gives each member bitwise its own run's particles."""
    from particlegan.engine.ensemble import simulate_ensemble
    from particlegan.engine.simulate import simulate
    from particlegan.store.config import resolve_config

    base = ["run.backend=cuda", "particles.n=8", "target.n_samples=16", "critic.features=16", "run.steps=3",
            "dynamics.critic_steps=2", "dynamics.critic_steps_startup=2", "observables.mmd_samples=8",
            "run.record_every=3"]
    cfgs = [resolve_config(overrides=base + [f"generator.phi={phi}"], seed=s) for s, phi in ((0, 0.2), (1, 0.7))]
    batched = simulate_ensemble(cfgs)
    for cfg, res in zip(cfgs, batched):
        np.testing.assert_array_equal(res.final_state.x, simulate(cfg).final_state.x)
