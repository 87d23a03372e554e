"""CUDA backend: numba.cuda tiled kernels over the per-pair maths of :mod:`particlegan.maths.pairmath`.

Kernel-sum layout (KeOps style, ecosystem-anchors 1.3): one thread per target point x_i, kept in
registers (a local array of compile-time length d); blocks of ``THREADS`` threads load tiles of
``THREADS`` centres y_j (and weights) into shared memory and every thread sweeps the tile,
accumulating its sums in registers. When there are too few target blocks to fill the GPU, the
centres are split over ``blockIdx.y`` and the partial sums are combined with atomic adds.

The kernels are built per (d, dtype, threads) by small factories, so that d and the dtype are
compile-time constants (unrolled coordinate loops; float32 kernels stay float32: every constant
is a numpy scalar of the kernel's dtype or comes from the pairmath parameter array).

Arithmetic runs in the input dtype (float32 inputs give float32 accumulation, relative error about
1e-6 sqrt(m)). Inputs are numpy arrays (copied to the device per call) or device arrays; results
are numpy arrays. Under the simulator (NUMBA_ENABLE_CUDASIM=1) blocks are 32 threads.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import config, cuda
from numba import types as nbtypes

from particlegan.maths import pairmath as pm
from particlegan.maths.kernels import KernelSpec, anchor
from particlegan.backends.numpy_backend import check_features, check_members, check_ntk, check_points, out_dtype
# host-side, no pair loop: skinny GEMMs over dpsi
from particlegan.backends.numpy_backend import feature_input_grads, feature_penalty  # noqa: F401

NAME = "cuda"
SIMULATED = bool(config.ENABLE_CUDASIM)
THREADS = 32 if SIMULATED else 256      # threads per block of the pair kernels (one per x_i)
NTK_THREADS = 32 if SIMULATED else 64   # threads per block of the NTK kernel
NTK_CHUNK = 8 if SIMULATED else 32      # latent coordinates per shared-memory chunk
FEATURE_BLOCK = (8, 8) if SIMULATED else (16, 16)
BLOCKS_PER_SM = 4                        # aim for at least this many blocks per multiprocessor


def _sim_unwrap(a):
    """The numpy array inside a simulator in-kernel array (other values unchanged)."""
    inner = a.__dict__.get("_item") if hasattr(a, "__dict__") else None
    return inner._ary if inner is not None else a


def _sim_wrap(fn):
    def call(*args):
        return fn(*[_sim_unwrap(a) for a in args])
    return call


if SIMULATED:
    # The simulator hands kernels wrapped arrays that @njit functions cannot unbox: unwrap them.
    from types import SimpleNamespace
    dev = SimpleNamespace(**{name: _sim_wrap(getattr(pm, name)) for name in
                             ("gauss_mix_terms", "pair_terms", "ntk_entry", "ntk_sigma1", "feature_act")})
else:
    dev = pm  # kernels call the pairmath dispatchers directly (compiled for the device)


def _nb_type(dtype):
    return nbtypes.float32 if np.dtype(dtype) == np.float32 else nbtypes.float64


# ------------------------------------------------------------------- kernel factories ------
@lru_cache(maxsize=None)
def make_pair_kernel(d: int, dtype_name: str, threads: int, want_grad: bool, general: bool):
    """Kernel-sum kernel for points of dimension d in dtype ``dtype_name``, any kernel.

    Arguments: X (n, d), Y (m, d), w (m,), aa (n,), bb (m,) anchored squared norms, code, p, mix,
    j_span (centres per blockIdx.y), out_v (n,), out_g (n, d), out_saa (n,); outputs are
    accumulated with atomic adds (zero them first):
    out_v_i += sum_j w_j k_ij;  out_g_i += sum_j w_j (2 dk/dr2 (x_i - y_j) + dk/dab y_j);
    out_saa_i += sum_j w_j dk/daa (the caller adds 2 out_saa_i (x_i - x0)).

    ``general = False`` compiles the Gaussian(-mixture) fast path
    (:func:`particlegan.maths.pairmath.gauss_mix_terms`: no <x, y>, no anchor; aa, bb, code, p
    and out_saa are not read), ``True`` any kernel of :func:`particlegan.maths.pairmath.pair_terms`.
    Both are one source: ``general`` is a compile-time constant, so the unused branches vanish.
    """
    np_t = np.dtype(dtype_name).type
    nb_t = _nb_type(dtype_name)
    zero, two = np_t(0), np_t(2)
    D, T, GRAD, GENERAL = d, threads, want_grad, general

    def pair_sums(X, Y, w, aa, bb, code, p, mix, j_span, out_v, out_g, out_saa):
        tx = cuda.threadIdx.x
        i = cuda.blockIdx.x * T + tx
        n = X.shape[0]
        j_start = cuda.blockIdx.y * j_span
        j_stop = min(Y.shape[0], j_start + j_span)
        sY = cuda.shared.array((T, D), nb_t)
        sW = cuda.shared.array(T, nb_t)
        sB = cuda.shared.array(T, nb_t)
        xi = cuda.local.array(D, nb_t)
        g = cuda.local.array(D, nb_t)
        for k in range(D):
            xi[k] = X[i, k] if i < n else zero
            g[k] = zero
        aa_i = aa[i] if GENERAL and i < n else zero
        acc = zero
        saa = zero
        for j0 in range(j_start, j_stop, T):
            j = j0 + tx
            if j < j_stop:  # cooperative tile load; padded slots get weight 0
                for k in range(D):
                    sY[tx, k] = Y[j, k]
                sW[tx] = w[j]
                sB[tx] = bb[j] if GENERAL else zero
            else:
                for k in range(D):
                    sY[tx, k] = zero
                sW[tx] = zero
                sB[tx] = zero
            cuda.syncthreads()
            if i < n:
                for jj in range(min(T, j_stop - j0)):
                    r2 = zero
                    ab = zero
                    for k in range(D):
                        t = xi[k] - sY[jj, k]
                        r2 += t * t
                        if GENERAL:
                            ab += xi[k] * sY[jj, k]
                    if GENERAL:
                        kv, k_r2, k_ab, k_aa = dev.pair_terms(code, r2, ab, aa_i, sB[jj], p, mix)
                    else:
                        kv, k_r2 = dev.gauss_mix_terms(r2, mix, zero)
                        k_ab = zero
                        k_aa = zero
                    acc += sW[jj] * kv
                    if GRAD:
                        c_r2 = two * sW[jj] * k_r2
                        if GENERAL:
                            c_ab = sW[jj] * k_ab
                            for k in range(D):
                                g[k] += c_r2 * (xi[k] - sY[jj, k]) + c_ab * sY[jj, k]
                            saa += sW[jj] * k_aa
                        else:
                            for k in range(D):
                                g[k] += c_r2 * (xi[k] - sY[jj, k])
            cuda.syncthreads()
        if i < n:
            cuda.atomic.add(out_v, i, acc)
            if GRAD:
                for k in range(D):
                    cuda.atomic.add(out_g, (i, k), g[k])
                if GENERAL:
                    cuda.atomic.add(out_saa, i, saa)

    return cuda.jit(fastmath=True)(pair_sums)


@lru_cache(maxsize=None)
def make_ntk_kernel(d: int, dtype_name: str, threads: int, chunk: int):
    """Matrix-free NTK apply kernel: out_i += sum_j Theta(z_i, z_j) F_j for F of width d.

    Arguments: Z (N, dz), F (N, d), q (N,) = Sigma1(z, z), kind, p (pairmath.encode_ntk), j_span,
    out (N, d) (atomic adds). Dot products z_i.z_j are built over chunks of ``chunk`` latent
    coordinates staged in shared memory, kept per tile entry in a local array.
    """
    np_t = np.dtype(dtype_name).type
    nb_t = _nb_type(dtype_name)
    zero = np_t(0)
    D, T, KC = d, threads, chunk

    def ntk_apply_kernel(Z, F, q, kind, p, j_span, out):
        tx = cuda.threadIdx.x
        i = cuda.blockIdx.x * T + tx
        n, dz = Z.shape
        j_start = cuda.blockIdx.y * j_span
        j_stop = min(n, j_start + j_span)
        sZ = cuda.shared.array((T, KC), nb_t)
        sF = cuda.shared.array((T, D), nb_t)
        sQ = cuda.shared.array(T, nb_t)
        dots = cuda.local.array(T, nb_t)
        zi = cuda.local.array(KC, nb_t)
        acc = cuda.local.array(D, nb_t)
        for k in range(D):
            acc[k] = zero
        q_i = q[i] if i < n else zero
        for j0 in range(j_start, j_stop, T):
            j = j0 + tx
            for jj in range(T):
                dots[jj] = zero
            for c0 in range(0, dz, KC):
                for c in range(KC):
                    inside = c0 + c < dz
                    sZ[tx, c] = Z[j, c0 + c] if (j < j_stop and inside) else zero
                    zi[c] = Z[i, c0 + c] if (i < n and inside) else zero
                cuda.syncthreads()
                for jj in range(T):
                    s = dots[jj]
                    for c in range(KC):
                        s += zi[c] * sZ[jj, c]
                    dots[jj] = s
                cuda.syncthreads()
            if j < j_stop:
                for k in range(D):
                    sF[tx, k] = F[j, k]
                sQ[tx] = q[j]
            else:
                for k in range(D):
                    sF[tx, k] = zero
                sQ[tx] = zero
            cuda.syncthreads()
            if i < n:
                for jj in range(min(T, j_stop - j0)):
                    theta = dev.ntk_entry(kind, dev.ntk_sigma1(dots[jj], p), q_i, sQ[jj], p)
                    for k in range(D):
                        acc[k] += theta * sF[jj, k]
            cuda.syncthreads()
        if i < n:
            for k in range(D):
                cuda.atomic.add(out, (i, k), acc[k])

    return cuda.jit(fastmath=True)(ntk_apply_kernel)


@lru_cache(maxsize=None)
def make_feature_kernel(dtype_name: str, is_cos: bool):
    """Random features of B ensemble members (a single run is B = 1), one thread per (i, k, m):
    psi[m, i, k] = scale act(x_mi.a_mk + b_mk), dpsi[m, i, k] = scale act'(...), for X (B, n, d),
    A (B, K, d), b (B, K); the member is blockIdx.z."""
    np_t = np.dtype(dtype_name).type
    zero = np_t(0)
    COS = is_cos

    def feature_kernel(X, A, b, scale, psi, dpsi):
        i, k, m = cuda.grid(3)
        if i < X.shape[1] and k < A.shape[1] and m < X.shape[0]:
            h = b[m, k]
            for c in range(X.shape[2]):
                h += X[m, i, c] * A[m, k, c]
            psi[m, i, k], dpsi[m, i, k] = dev.feature_act(h, COS, scale, zero)

    return cuda.jit(fastmath=True)(feature_kernel)


# ------------------------------------------------------------------------ launches ---------
def _sm_count() -> int:
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # the simulator's device has no attribute table
        return 1


def _grid(n: int, m: int, threads: int):
    """(blocks over i, blocks over j) and the centres per j-block (a multiple of ``threads``)."""
    bx = max(1, -(-n // threads))
    tiles = max(1, -(-m // threads))
    want = BLOCKS_PER_SM * _sm_count()
    splits = min(tiles, max(1, -(-want // bx)))
    span = -(-tiles // splits) * threads
    return (bx, max(1, -(-m // span))), span


def _device_view(a):
    """A numba device array for device-resident input (numba, or __cuda_array_interface__), else None."""
    if hasattr(a, "copy_to_host"):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    return None


def _dev(a, dtype):
    """Device copy of a host array in dtype (a device array of that dtype is used as is)."""
    arr = _device_view(a)
    if arr is not None:
        if arr.dtype == dtype:
            return arr
        a = arr.copy_to_host()
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def _host(a):
    """Host (numpy) version of an array argument."""
    arr = _device_view(a)
    return np.asarray(a) if arr is None else arr.copy_to_host()


def _value_and_grad(X, Y, w, kernel: KernelSpec, want_grad: bool, fname: str):
    Xh, Yh, w = check_points(_host(X), _host(Y), _host(w), fname)
    dt = out_dtype(Xh)
    n, d = Xh.shape
    m = Yh.shape[0]
    out_v = np.zeros(n, dtype=dt)
    out_g = np.zeros((n, d), dtype=dt)
    if n == 0 or m == 0:
        return out_v, out_g
    if d == 0:  # every r2 is 0: no coordinates to tile over; use the reference
        from particlegan.backends import numpy_backend as ref
        return ref.kernel_sum(Xh, Yh, w, kernel).astype(dt), ref.kernel_grad_sum(Xh, Yh, w, kernel).astype(dt)
    code, p, mix = pm.encode_kernel(kernel, d, dt)
    dX, dY, dW = _dev(Xh, dt), _dev(Yh, dt), _dev(w, dt)
    d_v, d_g = cuda.to_device(out_v), cuda.to_device(out_g)
    grid, span = _grid(n, m, THREADS)
    d_mix, d_p = cuda.to_device(mix), cuda.to_device(p)
    general = kernel.name not in ("gaussian", "gaussian_mixture")
    kern = make_pair_kernel(d, np.dtype(dt).name, THREADS, want_grad, general)
    if not general:  # the Gaussian path reads no anchored norms and sums no dk/daa
        unused = cuda.to_device(np.zeros(1, dtype=dt))
        kern[grid, THREADS](dX, dY, dW, unused, unused, code, d_p, d_mix, span, d_v, d_g, unused)
        return d_v.copy_to_host(), d_g.copy_to_host()
    x0 = anchor(kernel, d)
    X64, Y64 = Xh.astype(np.float64), Yh.astype(np.float64)
    aa = np.zeros(n) if x0 is None else ((X64 - x0) ** 2).sum(axis=1)
    bb = np.zeros(m) if x0 is None else ((Y64 - x0) ** 2).sum(axis=1)
    d_saa = cuda.to_device(np.zeros(n, dtype=dt))
    kern[grid, THREADS](dX, dY, dW, _dev(aa, dt), _dev(bb, dt), code, d_p, d_mix, span, d_v, d_g, d_saa)
    vals, grads = d_v.copy_to_host(), d_g.copy_to_host()
    if want_grad and x0 is not None:
        grads = (grads + 2.0 * d_saa.copy_to_host()[:, None] * (X64 - x0)).astype(dt)
    return vals, grads


def kernel_sum(X, Y, w, kernel: KernelSpec) -> np.ndarray:
    """out_i = sum_j w_j k(x_i, y_j): X (n, d), Y (m, d), w (m,) -> (n,) numpy, X's float dtype."""
    return _value_and_grad(X, Y, w, kernel, False, "kernel_sum")[0]


def kernel_grad_sum(X, Y, w, kernel: KernelSpec) -> np.ndarray:
    """out_i = sum_j w_j grad_1 k(x_i, y_j): X (n, d), Y (m, d), w (m,) -> (n, d) numpy."""
    return _value_and_grad(X, Y, w, kernel, True, "kernel_grad_sum")[1]


def kernel_value_and_grad_sum(X, Y, w, kernel: KernelSpec):
    """Both sums of one kernel pass: ((n,) values, (n, d) gradients)."""
    return _value_and_grad(X, Y, w, kernel, True, "kernel_value_and_grad_sum")


def pair_sum(X, Y, kernel: KernelSpec) -> float:
    """sum_{i,j} k(x_i, y_j) as a Python float (per-row sums on the GPU, total in float64)."""
    Xh, Yh, _ = check_points(_host(X), _host(Y), None, "pair_sum")
    vals = kernel_sum(Xh, Yh, np.ones(Yh.shape[0], dtype=out_dtype(Xh)), kernel)
    return float(vals.astype(np.float64).sum())


def _member_features(X, A, b, activation: str, scale: float):
    """psi, dpsi (B, n, K) numpy arrays of B members (X (B, n, d), A (B, K, d), b (B, K)) from
    one launch over the member axis."""
    dt = out_dtype(X)
    B, n, K = X.shape[0], X.shape[1], A.shape[1]
    psi = cuda.device_array((B, n, K), dtype=dt)
    dpsi = cuda.device_array((B, n, K), dtype=dt)
    if B and n and K:
        bx, by = FEATURE_BLOCK
        grid = (-(-n // bx), -(-K // by), B)
        kern = make_feature_kernel(np.dtype(dt).name, activation == "cos")
        kern[grid, (bx, by, 1)](_dev(X, dt), _dev(A, dt), _dev(b, dt), dt(scale), psi, dpsi)
    return psi.copy_to_host(), dpsi.copy_to_host()


def random_features(X, A, b, activation: str, scale: float):
    """psi = scale act(X A^T + b), dpsi = scale act'(X A^T + b): -> (n, K) numpy arrays each."""
    X, A, b = check_features(_host(X), _host(A), _host(b), activation)
    psi, dpsi = _member_features(X[None], A[None], b[None], activation, scale)
    return psi[0], dpsi[0]


def random_features_members(X, A, b, activation: str, scale: float):
    """:func:`random_features` of B ensemble members in one launch: X (B, n, d), A (B, K, d),
    b (B, K) -> psi, dpsi (B, n, K), member m bitwise its own call."""
    X, A, b = check_members(_host(X), _host(A), _host(b), activation)
    return _member_features(X, A, b, activation, scale)


def feature_mean_and_dpsi(X, A, b, activation: str, scale: float):
    """(mean_i psi_i (K,), dpsi (n, K)): the features from the GPU, averaged on the host."""
    psi, dpsi = random_features(X, A, b, activation, scale)
    return psi.mean(axis=0), dpsi


def feature_mean_and_dpsi_members(X, A, b, activation: str, scale: float):
    """:func:`feature_mean_and_dpsi` of B members in one launch: ((B, K) means, (B, n, K) dpsi)."""
    psi, dpsi = random_features_members(X, A, b, activation, scale)
    return np.stack([p.mean(axis=0) for p in psi]), dpsi  # each member's mean as its own call takes it


def ntk_apply(Z, F, kind: str, sigma_w: float = 1.0, sigma_b: float = 0.0) -> np.ndarray:
    """out_i = sum_j Theta(z_i, z_j) F_j, matrix-free on the GPU: Z (N, dz), F (N, d) -> (N, d)."""
    Z, F = check_ntk(_host(Z), _host(F))
    dt = out_dtype(F)
    N, d = F.shape
    dz = Z.shape[1]
    out = np.zeros((N, d), dtype=dt)
    if N == 0 or d == 0:
        return out
    code, p = pm.encode_ntk(kind, float(sigma_w), float(sigma_b), max(dz, 1), dt)
    Z64 = Z.astype(np.float64)
    q = p[pm.N_SW2].astype(np.float64) * (Z64 * Z64).sum(axis=1) / max(dz, 1) + float(p[pm.N_SB2])
    grid, span = _grid(N, N, NTK_THREADS)
    kern = make_ntk_kernel(d, np.dtype(dt).name, NTK_THREADS, NTK_CHUNK)
    d_out = cuda.to_device(out)
    kern[grid, NTK_THREADS](_dev(Z, dt), _dev(F, dt), _dev(q, dt), code, cuda.to_device(p), span, d_out)
    return d_out.copy_to_host()

