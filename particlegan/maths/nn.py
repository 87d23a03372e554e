"""Multilayer perceptrons with hand-derived backward passes (the neural-GAN comparison backend).

Everything is plain numpy: the matrix products go to BLAS, so numba would not pay here.

Network
-------
``layer_sizes = (n_0, n_1, ..., n_L)``: input dimension n_0, L - 1 hidden layers, output n_L.
With h_0 = X (n, n_0) and layers k = 0 .. L-1::

    z_k     = a_k h_k W_k^T + c b_k          W_k : (n_{k+1}, n_k),  b_k : (n_{k+1},)
    h_{k+1} = act(z_k)                        (hidden layers only; the output layer is linear)
    out     = z_{L-1}                         (n, n_L)

Parameterisations (``parameterization``):

* ``"standard"`` (PyTorch ``nn.Linear`` default): a_k = 1, c = 1; W and b drawn from
  U(-1/sqrt(n_k), 1/sqrt(n_k)) (fan-in n_k).
* ``"ntk"`` (neural-tangents ``Dense``): every parameter N(0, 1); a_k = sigma_w / sqrt(n_k),
  c = sigma_b. The default sigma_w = 1 is used on *every* layer, including the linear output
  layer, so that the one-hidden-layer bias-free ReLU network on latents of norm sqrt(d_z) has
  NTK Theta^{mu nu}(z, z') = delta^{mu nu} (sigma_w^4 / 2) kappa(u) (see
  :mod:`particlegan.engine.empirical_ntk`): g1 = sigma_w^4 = 1 by default; sigma_w = 2^(1/4) would
  give exactly kappa(u) (g1 = kappa(1) = 2), He scaling sigma_w = sqrt(2) gives 2 kappa(u). Biases enter as sigma_b b, so under ``"ntk"``
  they only act with ``bias=True`` *and* sigma_b > 0: the config default is sigma_b = 0 (bias-free
  NTK), and the config refuses ``generator.bias = true`` with sigma_b = 0 under ``"ntk"``.
  (The Python default of :func:`init_mlp`, sigma_b = 1, is for direct library use.)

Parameters live in ONE flat vector ``MLP.theta`` (what optimizers and checkpoints see), laid
out layer by layer as ``W_0`` (row-major), ``b_0``, ``W_1``, ``b_1``, ...; ``MLP.weight(k)`` and
``MLP.bias_vector(k)`` are views into it and ``MLP.tensor_slices()`` gives the per-tensor slices
(for the per-tensor conjugate-gradient option).

Config keys (wired by the simulator)
------------------------------------
``generator.width`` / ``generator.depth`` -> ``layer_sizes = (latent_dim, width x depth, d)``;
``generator.activation`` -> ``activation``; ``generator.bias`` -> ``bias``;
``generator.parameterization`` -> ``parameterization``; ``generator.sigma_w`` /
``generator.sigma_b`` -> ``sigma_w`` / ``sigma_b`` (ntk parameterisation);
``generator.latent_dim`` / ``generator.latent`` -> :func:`sample_latents` ``dim`` / ``kind``;
``critic.width`` / ``critic.depth`` / ``critic.activation`` -> the critic MLP
``(d, width x depth, 1)`` whose scalar output is the logit f(x).

Critic derivatives
------------------
:func:`critic_input_grad` gives grad_x f; :func:`penalty_and_param_grad` gives a gradient
penalty P(theta) = sum_i w_i phi(||grad_x f(x_i)||^2) and its parameter gradient by a
hand-written double backward (reverse mode through the forward-mode tangent of the network).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from particlegan.errors import ConfigError
from particlegan.store import checks
from particlegan.store.checks import require

ACTIVATIONS = ("relu", "leaky_relu", "tanh")
PARAMETERIZATIONS = ("standard", "ntk")
LATENT_KINDS = ("gaussian", "sphere")
PENALTY_FORMS = ("sq", "gp")
GP_NORM_EPS = 1e-12  # ||g|| is computed as sqrt(||g||^2 + GP_NORM_EPS) in the "gp" penalty


# ------------------------------------------------------------------------- parameters ----
@functools.lru_cache(maxsize=256)
def _layout(layer_sizes: tuple[int, ...], bias: bool,
            output_bias: bool = True) -> tuple[tuple[slice, slice | None], ...]:
    """Flat-vector slices (weight, bias or None) of every layer (the last layer has a bias only
    when both ``bias`` and ``output_bias``)."""
    out = []
    pos = 0
    last = len(layer_sizes) - 2
    for k, (n_in, n_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
        w = slice(pos, pos + n_in * n_out)
        pos += n_in * n_out
        b = None
        if bias and (output_bias or k < last):
            b = slice(pos, pos + n_out)
            pos += n_out
        out.append((w, b))
    return tuple(out)


def count_params(layer_sizes: Sequence[int], bias: bool, output_bias: bool = True) -> int:
    """Number of scalar parameters: sum_k n_{k+1} n_k (+ n_{k+1} with biases; the output
    layer's only with ``output_bias``)."""
    sizes = tuple(int(s) for s in layer_sizes)
    return sum(s.stop - s.start for pair in _layout(sizes, bool(bias), bool(output_bias))
               for s in pair if s is not None)


@dataclass(frozen=True, eq=False)
class MLP:
    """A multilayer perceptron: fixed architecture plus ONE flat parameter vector.

    Attributes
    ----------
    layer_sizes : (n_0, ..., n_L) layer widths (input, hidden..., output).
    activation : "relu", "leaky_relu" or "tanh" (hidden layers; the output layer is linear).
    bias : whether the layers have bias vectors.
    parameterization : "standard" or "ntk" (see the module docstring).
    theta : (P,) flat parameter vector (float32 or float64); ``weight``/``bias_vector`` are views.
    leaky_slope : negative-side slope of leaky_relu.
    sigma_w, sigma_b : ntk-parameterisation weight and bias multipliers (unused for "standard").
    output_bias : with ``bias``, whether the output layer has one too (False: USD's critic,
        ``Linear(64, 1, bias=False)``).
    """

    layer_sizes: tuple[int, ...]
    activation: str
    bias: bool
    parameterization: str
    theta: np.ndarray
    leaky_slope: float = 0.2
    sigma_w: float = 1.0
    sigma_b: float = 1.0
    output_bias: bool = True

    def layout(self) -> tuple[tuple[slice, slice | None], ...]:
        """Flat-vector slices (weight, bias or None) of every layer."""
        return _layout(self.layer_sizes, self.bias, self.output_bias)

    @property
    def n_layers(self) -> int:
        """Number L of affine layers (hidden layers + the output layer)."""
        return len(self.layer_sizes) - 1

    @property
    def n_params(self) -> int:
        return int(self.theta.shape[0])

    @property
    def d_in(self) -> int:
        return self.layer_sizes[0]

    @property
    def d_out(self) -> int:
        return self.layer_sizes[-1]

    @property
    def dtype(self) -> np.dtype:
        return self.theta.dtype

    def weight(self, k: int) -> np.ndarray:
        """View of W_k, shape (n_{k+1}, n_k)."""
        ws, _ = self.layout()[k]
        return self.theta[ws].reshape(self.layer_sizes[k + 1], self.layer_sizes[k])

    def bias_vector(self, k: int) -> np.ndarray | None:
        """View of b_k, shape (n_{k+1},), or None without biases."""
        _, bs = self.layout()[k]
        return None if bs is None else self.theta[bs]

    def weight_scale(self, k: int) -> float:
        """a_k: 1 (standard) or sigma_w / sqrt(n_k) (ntk)."""
        if self.parameterization == "ntk":
            return self.sigma_w / math.sqrt(self.layer_sizes[k])
        return 1.0

    def bias_scale(self) -> float:
        """c: 1 (standard) or sigma_b (ntk)."""
        return self.sigma_b if self.parameterization == "ntk" else 1.0

    def tensor_slices(self) -> list[slice]:
        """Slices of theta holding each tensor (W_0, b_0, W_1, ...), in order; they tile theta."""
        out = []
        for ws, bs in self.layout():
            out.append(ws)
            if bs is not None:
                out.append(bs)
        return out

    def with_theta(self, theta: np.ndarray) -> "MLP":
        """Same architecture with a new flat parameter vector (not copied)."""
        theta = np.asarray(theta)
        if theta.shape != self.theta.shape:
            raise ValueError(f"theta has shape {theta.shape}, expected {self.theta.shape}")
        return replace(self, theta=theta)


def _check_choice(prefix: str, key: str, value, choices) -> None:
    require(f"{prefix}.{key}", value, checks.one_of(choices))


def init_mlp(layer_sizes: Sequence[int], activation: str, bias: bool, parameterization: str,
             rng: np.random.Generator, leaky_slope: float = 0.2, sigma_w: float = 1.0,
             sigma_b: float = 1.0, dtype=np.float64, config_prefix: str = "mlp",
             output_bias: bool = True) -> MLP:
    """Draw a freshly initialised MLP.

    Parameters
    ----------
    layer_sizes : (n_0, ..., n_L), at least two entries, all >= 1.
    activation : "relu", "leaky_relu" or "tanh".
    bias : include bias vectors.
    parameterization : "standard": W, b ~ U(-1/sqrt(n_k), 1/sqrt(n_k)) and z = W h + b;
        "ntk": W, b ~ N(0, 1) and z = sigma_w/sqrt(n_k) W h + sigma_b b.
    rng : source of randomness (layers are drawn in order, weight before bias).
    leaky_slope : negative-side slope of leaky_relu (finite).
    sigma_w : ntk weight multiplier (> 0); default 1 on every layer, output layer included.
    sigma_b : ntk bias multiplier (>= 0).
    dtype : float32 or float64 parameter dtype.
    config_prefix : config section named in error messages (e.g. "generator", "critic").
    output_bias : with ``bias``, give the output layer a bias too.

    Returns
    -------
    MLP with theta of shape (count_params(layer_sizes, bias, output_bias),).
    """
    p = config_prefix
    try:
        sizes = tuple(int(s) for s in layer_sizes)
        ok = len(sizes) >= 2 and all(s >= 1 and s == float(t) for s, t in zip(sizes, layer_sizes))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{p}.layer_sizes must be at least two integers >= 1, got {layer_sizes!r}")
    _check_choice(p, "activation", activation, ACTIVATIONS)
    _check_choice(p, "parameterization", parameterization, PARAMETERIZATIONS)
    require(f"{p}.leaky_slope", leaky_slope, checks.finite)
    require(f"{p}.sigma_w", sigma_w, checks.finite, checks.positive)
    require(f"{p}.sigma_b", sigma_b, checks.finite, checks.nonneg)
    dt = np.dtype(dtype)
    _check_choice(p, "dtype", dt.name, ("float32", "float64"))
    theta = np.empty(count_params(sizes, bool(bias), bool(output_bias)), dtype=np.float64)
    for k, (ws, bs) in enumerate(_layout(sizes, bool(bias), bool(output_bias))):
        n_in = sizes[k]
        if parameterization == "standard":
            bound = 1.0 / math.sqrt(n_in)
            theta[ws] = rng.uniform(-bound, bound, ws.stop - ws.start)
            if bs is not None:
                theta[bs] = rng.uniform(-bound, bound, bs.stop - bs.start)
        else:
            theta[ws] = rng.standard_normal(ws.stop - ws.start)
            if bs is not None:
                theta[bs] = rng.standard_normal(bs.stop - bs.start)
    return MLP(layer_sizes=sizes, activation=activation, bias=bool(bias),
               parameterization=parameterization, theta=theta.astype(dt),
               leaky_slope=float(leaky_slope), sigma_w=float(sigma_w), sigma_b=float(sigma_b),
               output_bias=bool(output_bias))


# ------------------------------------------------------------------------ activations ----
def _act(mlp: MLP, z: np.ndarray) -> np.ndarray:
    if mlp.activation == "relu":
        return np.maximum(z, 0)
    if mlp.activation == "leaky_relu":
        return np.where(z > 0, z, z * z.dtype.type(mlp.leaky_slope))
    return np.tanh(z)


def _act_d1(mlp: MLP, z: np.ndarray, h: np.ndarray) -> np.ndarray:
    """act'(z) given z and h = act(z); relu'(0) := 0, leaky'(0) := slope."""
    if mlp.activation == "relu":
        return (z > 0).astype(z.dtype)
    if mlp.activation == "leaky_relu":
        return np.where(z > 0, z.dtype.type(1), z.dtype.type(mlp.leaky_slope))
    return 1 - h * h


def _act_d2(mlp: MLP, z: np.ndarray, h: np.ndarray) -> np.ndarray | None:
    """act''(z); None where it vanishes almost everywhere (relu, leaky_relu)."""
    if mlp.activation == "tanh":
        return -2 * h * (1 - h * h)  # tanh'' = -2 tanh (1 - tanh^2)
    return None


# ---------------------------------------------------------------------------- dropout ----
def dropout_masks(params: MLP, n: int, rates: Sequence[float],
                  rng: np.random.Generator) -> list:
    """Inverted-dropout multipliers of the hidden layers (as torch ``nn.Dropout`` in training).

    Hidden layer k (0 <= k < L-1) with rate p_k > 0 gets m_k = 1[u >= p_k] / (1 - p_k),
    u ~ U(0, 1) of shape (n, n_{k+1}), drawn in layer order; h_{k+1} = m_k * act(z_k).
    Rate 0 gives None (no draw).

    Returns
    -------
    list of L-1 entries, each None or (n, n_{k+1}) in the parameter dtype.
    """
    if len(rates) != params.n_layers - 1:
        raise ValueError(f"{len(rates)} dropout rates for {params.n_layers - 1} hidden layers")
    out = []
    for k, p in enumerate(rates):
        if p <= 0:
            out.append(None)
            continue
        keep = rng.random((int(n), params.layer_sizes[k + 1])) >= p
        out.append(np.multiply(keep, params.dtype.type(1.0 / (1.0 - p)), dtype=params.dtype))
    return out


# ---------------------------------------------------------------------- forward/backward ----
@dataclass(frozen=True)
class ForwardCache:
    """What :func:`mlp_backward` needs from a forward pass.

    inputs : [h_0, ..., h_{L-1}], h_k (n, n_k) the input of layer k (h_0 = X).
    preacts : [z_0, ..., z_{L-1}], z_k (n, n_{k+1}) the pre-activation of layer k.
    masks : None, or L-1 dropout multipliers (None or (n, n_{k+1})), h_{k+1} = m_k act(z_k).
    d1 : memo of m_k act'(z_k) per hidden layer k (filled by :func:`_hidden_d1`; the backward
        pass and the penalty's tangent pass both need it).
    """

    inputs: list
    preacts: list
    masks: list | None = None
    d1: dict = field(default_factory=dict, compare=False, repr=False)

    def rows(self, sl: slice) -> "ForwardCache":
        """The cache of the rows ``sl`` of the batch (views; rows do not interact)."""
        masks = None if self.masks is None else [None if m is None else m[sl] for m in self.masks]
        return ForwardCache([h[sl] for h in self.inputs], [z[sl] for z in self.preacts], masks,
                            {k: v[sl] for k, v in self.d1.items()})

    def mask(self, k: int):
        return None if self.masks is None else self.masks[k]


def _as_batch(mlp: MLP, X, what: str = "X") -> np.ndarray:
    X = np.asarray(X, dtype=mlp.dtype)
    if X.ndim != 2 or X.shape[1] != mlp.d_in:
        raise ValueError(f"{what} must have shape (n, {mlp.d_in}), got {X.shape}")
    return X


def mlp_forward(params: MLP, X: np.ndarray, masks: list | None = None) -> tuple[np.ndarray, ForwardCache]:
    """Forward pass out = z_{L-1} with z_k = a_k h_k W_k^T + c b_k, h_{k+1} = m_k act(z_k).

    Parameters
    ----------
    params : the network.
    X : (n, n_0) inputs (cast to the parameter dtype).
    masks : optional dropout multipliers m_k of :func:`dropout_masks` (default: none, m_k = 1).

    Returns
    -------
    out : (n, n_L) outputs.
    cache : :class:`ForwardCache` for :func:`mlp_backward` and the critic helpers.
    """
    h = _as_batch(params, X)
    inputs, preacts = [], []
    c = params.bias_scale()
    for k in range(params.n_layers):
        inputs.append(h)
        z = h @ params.weight(k).T
        a = params.weight_scale(k)
        if a != 1.0:
            z *= h.dtype.type(a)
        b = params.bias_vector(k)
        if b is not None:
            z += h.dtype.type(c) * b
        preacts.append(z)
        if k < params.n_layers - 1:
            h = _act(params, z)
            if masks is not None and masks[k] is not None:
                h *= masks[k]
    return preacts[-1], ForwardCache(inputs=inputs, preacts=preacts, masks=masks)


def mlp_apply(params: MLP, X: np.ndarray) -> np.ndarray:
    """Outputs (n, n_L) of :func:`mlp_forward` without keeping the cache."""
    return mlp_forward(params, X)[0]


def _unmasked_act(params: MLP, cache: ForwardCache, k: int) -> np.ndarray:
    """act(z_k) of hidden layer k (h_{k+1} before its dropout multiplier)."""
    if cache.mask(k) is None:
        return cache.inputs[k + 1]
    return _act(params, cache.preacts[k])


def _hidden_d1(params: MLP, cache: ForwardCache, k: int) -> np.ndarray:
    """m_k act'(z_k) = dh_{k+1}/dz_k of hidden layer k (0 <= k < L-1), shape (n, n_{k+1}); memoised."""
    d1 = cache.d1.get(k)
    if d1 is not None:
        return d1
    z, m = cache.preacts[k], cache.mask(k)
    if params.activation == "relu" and m is not None:
        # = 1[z > 0] m exactly (m >= 0 finite); a product with the boolean array, ~10x faster than np.where
        d1 = np.multiply(z > 0, m)
    else:
        # relu/leaky_relu read only z; tanh reads h = act(z)
        h = _unmasked_act(params, cache, k) if params.activation == "tanh" else None
        d1 = _act_d1(params, z, h)
        if m is not None:
            d1 = d1 * m
    cache.d1[k] = d1
    return d1


def _hidden_d2(params: MLP, cache: ForwardCache, k: int) -> np.ndarray | None:
    """m_k act''(z_k) of hidden layer k, or None where act'' = 0 a.e."""
    if params.activation != "tanh":
        return None
    d2 = _act_d2(params, cache.preacts[k], _unmasked_act(params, cache, k))
    m = cache.mask(k)
    return d2 if m is None else d2 * m


def _backward_deltas(params: MLP, cache: ForwardCache, grad_out: np.ndarray):
    """Per-sample deltas delta_k = dLoss/dz_k (n, n_{k+1}) for k = 0..L-1 and dLoss/dX (n, n_0).

    delta_{L-1} = grad_out;  gamma_k = a_k delta_k W_k = dLoss/dh_k;
    delta_{k-1} = gamma_k * m_{k-1} act'(z_{k-1}).
    """
    L = params.n_layers
    deltas = [None] * L
    delta = grad_out
    for k in range(L - 1, -1, -1):
        deltas[k] = delta
        gamma = delta @ params.weight(k)
        a = params.weight_scale(k)
        if a != 1.0:
            gamma *= delta.dtype.type(a)
        if k > 0:
            delta = gamma * _hidden_d1(params, cache, k - 1)
    return deltas, gamma


def _param_grad_from(params: MLP, cache: ForwardCache, deltas: list,
                     extra_w: list | None = None) -> np.ndarray:
    """Assemble grad theta: dW_k = a_k delta_k^T h_k (+ extra_w[k]), db_k = c sum_n delta_k."""
    grad = np.empty_like(params.theta)
    c = params.bias_scale()
    for k, (ws, bs) in enumerate(params.layout()):
        # written straight into theta's layout (no (n_{k+1}, n_k) temporaries: they cost 4x the GEMMs)
        gw = grad[ws].reshape(params.layer_sizes[k + 1], params.layer_sizes[k])
        np.matmul(deltas[k].T, cache.inputs[k], out=gw)
        a = params.weight_scale(k)
        if a != 1.0:
            gw *= gw.dtype.type(a)
        if extra_w is not None and extra_w[k] is not None:
            gw += extra_w[k]
        if bs is not None:
            np.sum(deltas[k], axis=0, out=grad[bs])
            if c != 1.0:
                grad[bs] *= grad.dtype.type(c)
    return grad


def mlp_backward(params: MLP, cache: ForwardCache,
                 grad_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector-Jacobian product of the forward pass.

    For a loss with dLoss/d out = grad_out, returns dLoss/dtheta = J_theta^T grad_out and
    dLoss/dX = J_X^T grad_out (summed over the batch for theta, per sample for X). For a
    generator with particle forces F = dLoss/dx (n, d) this pushes F back to the parameters.

    Parameters
    ----------
    params : the network used in the forward pass.
    cache : from :func:`mlp_forward` on the same params.
    grad_out : (n, n_L).

    Returns
    -------
    grad_theta : (P,) flat, same layout as ``params.theta``.
    grad_input : (n, n_0).
    """
    grad_out = np.asarray(grad_out, dtype=params.dtype)
    n = cache.inputs[0].shape[0]
    if grad_out.shape != (n, params.d_out):
        raise ValueError(f"grad_out must have shape ({n}, {params.d_out}), got {grad_out.shape}")
    deltas, grad_input = _backward_deltas(params, cache, grad_out)
    return _param_grad_from(params, cache, deltas), grad_input


def mlp_jacobian(params: MLP, X: np.ndarray) -> np.ndarray:
    """Per-sample parameter Jacobian J[i, mu, p] = d out^mu(x_i) / d theta_p.

    Built from n_L batched backward passes with grad_out = e_mu (the samples do not mix, so each
    row of the deltas is the per-sample backward pass). Memory n n_L P: for small nets.

    Returns
    -------
    J : (n, n_L, P).
    """
    out, cache = mlp_forward(params, X)
    n = out.shape[0]
    J = np.zeros((n, params.d_out, params.n_params), dtype=params.dtype)
    c = params.bias_scale()
    for mu in range(params.d_out):
        grad_out = np.zeros_like(out)
        grad_out[:, mu] = 1
        deltas, _ = _backward_deltas(params, cache, grad_out)
        for k, (ws, bs) in enumerate(params.layout()):
            a_k = params.weight_scale(k)
            per_sample = deltas[k][:, :, None] * cache.inputs[k][:, None, :] * a_k
            J[:, mu, ws] = per_sample.reshape(n, -1)
            if bs is not None:
                J[:, mu, bs] = c * deltas[k]
    return J


# --------------------------------------------------------------------------- critic ----
def _check_scalar_output(params: MLP) -> None:
    if params.d_out != 1:
        raise ValueError(f"a critic must have one output (the logit), got {params.d_out}")


@dataclass(frozen=True)
class CriticPass:
    """One forward and one backward pass (d out / d out = 1) of a scalar critic on a batch.

    values : (n,) f(x_i).   grads : (n, n_0) grad_x f(x_i).
    cache : the forward cache.   deltas : [delta_k (n, n_{k+1})], delta_k = df(x_i)/dz_k.

    Because the output is scalar, the backward pass of any per-sample weights c_i is c_i times
    these deltas, so one pass serves the objective's parameter gradient
    (:func:`weighted_param_grad`), the input gradients and the gradient penalty.
    """

    values: np.ndarray
    grads: np.ndarray
    cache: ForwardCache
    deltas: list

    def rows(self, sl: slice) -> "CriticPass":
        """The pass restricted to the rows ``sl`` (views)."""
        return CriticPass(self.values[sl], self.grads[sl], self.cache.rows(sl),
                          [dk[sl] for dk in self.deltas])


def critic_pass(params: MLP, X: np.ndarray, masks: list | None = None) -> CriticPass:
    """Values, input gradients and backward deltas of a scalar critic at X (n, n_0)."""
    _check_scalar_output(params)
    out, cache = mlp_forward(params, X, masks)
    deltas, g = _backward_deltas(params, cache, np.ones_like(out))
    return CriticPass(out[:, 0], g, cache, deltas)


def weighted_param_grad(params: MLP, cp: CriticPass, coef: np.ndarray) -> np.ndarray:
    """sum_i coef_i d f(x_i) / d theta (P,) from one :class:`CriticPass` (coef: (n,))."""
    coef = np.asarray(coef, dtype=params.dtype)[:, None]
    return _param_grad_from(params, cp.cache, [coef * dk for dk in cp.deltas])


def critic_values_and_input_grads(params: MLP, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Critic values f(x_i) (n,) and input gradients grad_x f(x_i) (n, n_0)."""
    cp = critic_pass(params, X)
    return cp.values, cp.grads


def critic_input_grad(params: MLP, X: np.ndarray) -> np.ndarray:
    """grad_x f(x_i) (n, n_0) of a scalar-output critic f (one forward + one backward pass)."""
    return critic_values_and_input_grads(params, X)[1]


def penalty_and_param_grad(params: MLP, X: np.ndarray | None, weights, form: str,
                           cp: CriticPass | None = None) -> tuple[float, np.ndarray]:
    """Gradient penalty and its gradient w.r.t. the critic parameters (double backward).

    With g_i = grad_x f(x_i) and s_i = ||g_i||^2:

    * ``"sq"``: P = sum_i w_i s_i;
    * ``"gp"``: P = sum_i w_i (sqrt(s_i + 1e-12) - 1)^2 (WGAN-GP).

    Derivation. dP/dtheta = sum_i r_i . dg_i/dtheta with r_i = dP/dg_i held fixed
    (sq: r_i = 2 w_i g_i; gp: r_i = 2 w_i (1 - 1/sqrt(s_i + 1e-12)) g_i), i.e. the parameter
    gradient of F(theta) = sum_i D_x f(x_i)[r_i], the forward-mode tangent of the network along
    r_i. The tangent pass is hdot_0 = r, zdot_k = a_k hdot_k W_k^T, hdot_{k+1} = m_k act'(z_k) zdot_k
    (m_k: the dropout multipliers, 1 without dropout).
    Reverse mode through (primal, tangent) with adjoints zdotbar_{L-1} = 1, zbar_{L-1} = 0 gives
    zdotbar_k = delta_k (the input-gradient deltas) and::

        dF/dW_k = a_k (delta_k^T hdot_k + zbar_k^T h_k),      dF/db_k = c sum_n zbar_k
        zbar_{k-1} = m_{k-1} [act'(z_{k-1}) (a_k zbar_k W_k) + act''(z_{k-1}) zdot_{k-1} gamma_k],
        gamma_k = a_k delta_k W_k.

    For relu/leaky_relu act'' = 0 almost everywhere, so zbar = 0 and only the first term
    remains (the penalty then has zero bias gradient); tanh uses tanh'' = -2 tanh (1 - tanh^2).

    Parameters
    ----------
    params : scalar-output critic.
    X : (n, n_0) points where the penalty is evaluated (ignored when ``cp`` is given).
    weights : (n,) per-point weights w_i (or a scalar), e.g. lambda / n.
    form : "sq" or "gp".
    cp : optional :class:`CriticPass` at the points, already computed (e.g. rows of the
        objective's pass; it carries that pass's dropout masks).

    Returns
    -------
    value : float P.
    grad : (P,) dP/dtheta in the layout of ``params.theta``.
    """
    require("penalty form", form, checks.one_of(PENALTY_FORMS))
    if cp is None:
        cp = critic_pass(params, X)
    cache, deltas, g = cp.cache, cp.deltas, cp.grads
    n = g.shape[0]
    w = np.broadcast_to(np.asarray(weights, dtype=params.dtype), (n,))
    s = np.einsum("ij,ij->i", g, g)
    if form == "sq":
        value = float(np.dot(w, s))
        coef = 2 * w
    else:
        norm = np.sqrt(s + params.dtype.type(GP_NORM_EPS))
        value = float(np.dot(w, (norm - 1) ** 2))
        coef = 2 * w * (1 - 1 / norm)
    r = coef[:, None] * g
    # forward-mode tangent of the network along r: hdots[k] = hdot_k, zdots[k] = zdot_k
    L = params.n_layers
    hdots, zdots = [], []
    hdot = r
    for k in range(L):
        hdots.append(hdot)
        zdot = hdot @ params.weight(k).T
        if params.weight_scale(k) != 1.0:
            zdot *= zdot.dtype.type(params.weight_scale(k))
        zdots.append(zdot)
        if k < L - 1:
            hdot = zdot * _hidden_d1(params, cache, k)
    # reverse pass: tangent-path weight term plus the primal adjoint zbar (nonzero only via act'')
    grad = np.empty_like(params.theta)
    c = params.bias_scale()
    zbar = None  # zbar_{L-1} = 0
    for k in range(L - 1, -1, -1):
        ws, bs = params.layout()[k]
        a_k = params.weight_scale(k)
        gw = grad[ws].reshape(params.layer_sizes[k + 1], params.layer_sizes[k])  # in place, as above
        np.matmul(deltas[k].T, hdots[k], out=gw)
        if zbar is not None:
            gw += zbar.T @ cache.inputs[k]
        if a_k != 1.0:
            gw *= gw.dtype.type(a_k)
        if bs is not None:
            grad[bs] = 0 if zbar is None else c * zbar.sum(axis=0)
        if k == 0:
            break
        d2 = _hidden_d2(params, cache, k - 1)
        new_zbar = None
        if zbar is not None:
            new_zbar = (zbar @ params.weight(k)) * a_k * _hidden_d1(params, cache, k - 1)
        if d2 is not None:
            gamma = (deltas[k] @ params.weight(k)) * a_k
            term = d2 * zdots[k - 1] * gamma
            new_zbar = term if new_zbar is None else new_zbar + term
        zbar = new_zbar
    return value, grad


# -------------------------------------------------------------------------- latents ----
def sample_latents(n: int, dim: int, kind: str, rng: np.random.Generator,
                   dtype=np.float64) -> np.ndarray:
    """Latent codes z (n, dim).

    ``"gaussian"``: z ~ N(0, I_dim). ``"sphere"``: uniform on the sphere of radius sqrt(dim)
    (normalised Gaussians), so that z.z / dim = 1 exactly (up to rounding).
    """
    _check_choice("generator", "latent", kind, LATENT_KINDS)
    if int(n) < 1 or int(dim) < 1:
        raise ConfigError(f"generator.latent_dim = {dim!r} (n = {n!r}): both must be >= 1")
    z = rng.standard_normal((int(n), int(dim)))
    if kind == "sphere":
        z *= math.sqrt(dim) / np.linalg.norm(z, axis=1, keepdims=True)
    return z.astype(dtype, copy=False)
