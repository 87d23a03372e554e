"""Optimizers on flat parameter vectors, for either player.

Used by the neural generator and critic (flat ``MLP.theta``), by the particle model's
random-feature critic (weights w) and, if wanted, by the particles themselves (any array shape
works: everything is computed on the flattened array and the result has the input shape).

API: (init, update) pairs
------------------------
``opt = make_optimizer(name, lr, **options)`` is the rule (hyperparameters only, never changed);
its evolving part is an :class:`OptState` of plain arrays and counters (step count, moments,
CG directions), which the engines keep in their state. ``state = opt.init()``;
``new, state = opt.update(state, params, grad, maximize=False, lr_scale=1.0)`` is pure: it
returns a NEW array and a NEW state (``params``, ``grad`` and the given state are not modified),
so stepping twice from one state gives bitwise the same result. ``lr_scale`` multiplies the
schedule's base rate (the KID learning-rate decay). ``maximize=True`` means the optimizer
*minimises the negated objective*: it uses -grad everywhere in place of grad (moments, CG
directions and beta rules all see -grad), so a run with ``maximize=True`` on grad f is bitwise
identical to a run with ``maximize=False`` on grad(-f). Coupled L2 weight decay (as torch) adds
``weight_decay * params`` to that (negated) gradient, so it always pulls toward 0.

``opt.reset(state)`` clears moments / directions / the Adam bias-correction count (as if the
optimizer were re-created) but keeps the learning-rate schedule's step counter;
``opt.begin_outer_step(state)`` resets iff the optimizer was built with
``reset_each_outer_step=True`` (USD's "Adam re-created each outer step", effective-gan-spec A6.4).
States are dataclasses of arrays and numbers: checkpoints store them field by field.

Methods
-------
* ``"sgd"``: x <- x - alpha_n g.
* ``"momentum"`` (heavy ball, torch SGD convention, no dampening): v <- mu v + g (v_0 = g_0),
  x <- x - alpha_n v; with ``nesterov=True`` x <- x - alpha_n (g + mu v). Default mu = 0.9.
* ``"adam"`` (torch Adam): m <- b1 m + (1-b1) g, v <- b2 v + (1-b2) g^2,
  m_hat = m/(1-b1^t), v_hat = v/(1-b2^t) (amsgrad: v_max <- max(v_max, v), v_hat = v_max/(1-b2^t)),
  x <- x - alpha_n m_hat/(sqrt(v_hat) + eps). Defaults betas (0.9, 0.999), eps 1e-8.
* ``"cg"``: nonlinear conjugate gradient (losses-metrics-optim-spec P2.2, P2.3, 2.6), see
  :class:`ConjugateGradient`.

Learning rates alpha_n come from :func:`make_lr_schedule` (n = total steps taken so far).

Config keys (per player section, e.g. ``critic`` or ``generator``; see
:func:`particlegan.model.from_config.optimizer_from_config`)
-----------------------------------------------------------------------------------------------
``<player>.optimizer`` -> name; ``.momentum`` -> momentum; ``.nesterov`` -> nesterov;
``.betas`` -> betas; ``.amsgrad`` -> amsgrad; ``.adam_eps`` -> eps;
``.adam_reset`` -> reset_each_outer_step; ``.cg_rule`` -> rule; ``.cg_beta_scale`` -> beta_scale;
``.cg_beta_clip`` -> beta_clip; ``.lr_schedule`` -> lr_schedule; ``.lr_power`` / ``.lr_decay`` /
``.lr_every`` -> the schedule parameters. The learning rate itself (eta_D / eta_G) is passed
separately.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from particlegan.errors import ConfigError
from particlegan.store import checks
from particlegan.store.checks import require

OPTIMIZERS = ("sgd", "momentum", "adam", "cg")
LR_SCHEDULES = ("constant", "diminishing", "inv_sqrt", "inv", "step_decay")
CG_RULES = ("FR", "PRP", "HS", "DY", "HS_DY", "FR_PRP", "HZ")
CG_BETA_CLIPS = ("default", "code", "none")
_BETA_MAX = 0.5  # the reference code's upper bound on beta (spec P2.3)


def _key_namer(prefix: str, names: Mapping[str, str] | None):
    """option -> the config key named in an error: ``prefix.<names[option] or option>`` (a name
    that is already dotted, e.g. "dynamics.eta_d", as it is)."""
    names = dict(names or {})

    def key(opt: str) -> str:
        k = names.get(opt, opt)
        return k if "." in k else f"{prefix}.{k}"
    return key


def _ascent_rate(v):  # the learning-rate check, with the hint for ascent
    return None if v > 0 else "must be > 0 (use maximize=True for ascent)"


# ---------------------------------------------------------------------- lr schedules ----
@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate rule alpha_n (n = 0, 1, ... the step index).

    * ``constant``:    alpha_n = lr0
    * ``diminishing``: alpha_n = lr0 / (n+1)^power
    * ``inv_sqrt``:    alpha_n = lr0 / sqrt(n+1)
    * ``inv``:         alpha_n = lr0 / (n+1)
    * ``step_decay``:  alpha_n = lr0 * decay^(n // every)
    """

    kind: str
    lr0: float
    power: float = 0.5
    decay: float = 0.9
    every: int = 10000

    def __call__(self, n: int) -> float:
        if self.kind == "constant":
            return self.lr0
        if self.kind == "diminishing":
            return self.lr0 / (n + 1) ** self.power
        if self.kind == "inv_sqrt":
            return self.lr0 / math.sqrt(n + 1)
        if self.kind == "inv":
            return self.lr0 / (n + 1)
        return self.lr0 * self.decay ** (n // self.every)

    def scaled(self, factor: float) -> "LRSchedule":
        """The same rule with base rate ``lr0 * factor`` (``factor = 1``: this rule itself)."""
        return self if factor == 1 else dataclasses.replace(self, lr0=self.lr0 * float(factor))


def make_lr_schedule(kind: str, lr0: float, power: float = 0.5, decay: float = 0.9,
                     every: int = 10000, key_prefix: str = "optimizer",
                     key_names: Mapping[str, str] | None = None) -> LRSchedule:
    """Build a learning-rate rule (spec P2.4).

    Parameters
    ----------
    kind : "constant", "diminishing" (lr0/(n+1)^power), "inv_sqrt", "inv" or "step_decay".
    lr0 : base learning rate alpha_0 > 0.
    power : exponent of "diminishing", in (0, 1] (the paper's a in (0, 1); 1 gives "inv").
    decay : factor of "step_decay", in (0, 1].
    every : period (steps) of "step_decay", >= 1.
    key_prefix, key_names : config section and option -> config-key names used in error
        messages (as :func:`make_optimizer`).
    """
    key = _key_namer(key_prefix, key_names)
    require(key("lr_schedule"), kind, checks.one_of(LR_SCHEDULES))
    require(key("lr"), lr0, checks.finite, _ascent_rate)
    require(key("lr_power"), power, checks.finite, checks.unit_open_closed)
    require(key("lr_decay"), decay, checks.finite, checks.unit_open_closed)
    require(key("lr_every"), every, checks.integer, checks.at_least(1))
    return LRSchedule(kind=kind, lr0=float(lr0), power=float(power), decay=float(decay),
                      every=int(every))


def _rate(lr, x: np.ndarray):
    """The learning rate in x's dtype: a Python float (rounded by numpy as a weak scalar) or a
    (B, 1) column of per-member rates (rounded the same way, element by element)."""
    return np.asarray(lr, dtype=x.dtype) if isinstance(lr, np.ndarray) else lr


@dataclass(frozen=True)
class OptState:
    """The evolving part of an optimizer: plain arrays and counters, nothing else (the rule,
    :class:`Optimizer`, holds the hyperparameters). Never modified: an update returns a new one.

    Attributes
    ----------
    count : steps taken (drives the learning-rate schedule; kept by a reset).
    t : Adam's steps since the last reset (its bias correction).
    m : momentum buffer, or Adam's first moment; None until the first step (and after a reset).
    v, v_max : Adam's second moment and, with amsgrad, its running maximum.
    prev_grad, direction : CG's previous (effective) gradient and stored direction.
    beta : CG's last beta (a float; (S,) per tensor), for diagnostics.
    Moments have the parameters' shape ((B, P) for an ensemble's members).
    """

    count: int = 0
    t: int = 0
    m: np.ndarray | None = None
    v: np.ndarray | None = None
    v_max: np.ndarray | None = None
    prev_grad: np.ndarray | None = None
    direction: np.ndarray | None = None
    beta: float | np.ndarray | None = None


@dataclass
class FusedSteps:
    """n element-wise optimizer steps of B members, as a backend loop runs them
    (:meth:`Optimizer.fused_steps`): the loop must compute, op by op, what ``_apply`` computes.

    Attributes
    ----------
    kind : "sgd" | "momentum" | "adam".
    rates : (n_steps, B) float64 step factors: alpha_n (sgd, momentum) or alpha_n / (1 - b1^t)
        (adam, the bias correction of step t folded in as ``_apply`` does).
    bc2 : (n_steps,) float64 Adam's 1 - b2^t of each step (ones otherwise).
    mu, nesterov : momentum.  b1, b2, eps, amsgrad : Adam.  weight_decay : coupled L2 (added to
        the negated gradient).
    m, v, v_max : (B, P) moments in the parameters' dtype (momentum: m is the buffer; unused
        ones are empty (B, 0) arrays), copies the loop updates in place.  fresh : True when the
        moments are not set yet (the momentum buffer starts as the first gradient, Adam's
        moments as zeros).
    """

    kind: str
    rates: np.ndarray
    bc2: np.ndarray
    mu: float
    nesterov: bool
    b1: float
    b2: float
    eps: float
    amsgrad: bool
    weight_decay: float
    m: np.ndarray
    v: np.ndarray
    v_max: np.ndarray
    fresh: bool


def _moments(arr, shape, dtype):
    """A (B, P) copy of optimizer moments (a single run's (P,) gets the member axis), or zeros."""
    if arr is None:
        return np.zeros(shape, dtype=dtype)
    return np.array(arr, dtype=dtype).reshape(shape)


def _fused(opt, kind, lrs, shape, dtype, **kw) -> FusedSteps:
    """:class:`FusedSteps` of ``opt`` with the options ``kw`` of its kind (the others neutral)."""
    none = np.zeros((shape[0], 0), dtype=dtype)
    base = dict(mu=0.0, nesterov=False, b1=0.0, b2=0.0, eps=0.0, amsgrad=False, m=none, v=none,
                v_max=none, fresh=False, bc2=np.ones(len(lrs)))
    base.update(kw)
    return FusedSteps(kind=kind, rates=np.asarray(lrs, dtype=np.float64), weight_decay=opt.weight_decay, **base)


def _unstack(arr: np.ndarray, members: bool) -> np.ndarray:
    """Moments (B, P) of a fused loop in the state's layout: (B, P) for an ensemble, (P,) for a
    single run."""
    return arr if members else arr[0]


# ----------------------------------------------------------------------- base class ----
class Optimizer:
    """An optimizer rule as an (init, update) pair: the hyperparameters live here (never
    changed after construction), the evolving part in an :class:`OptState`.

    Common machinery: schedule, maximisation, weight decay, step counter, reset. Subclasses
    implement ``_apply(state, x, g, lr, step_size) -> (new x, new state)`` on flat arrays
    (``x`` (P,) or (B, P) with ``lr`` a (B, 1) column), building new moment arrays (the given
    state's are never written).
    """

    name = ""

    def __init__(self, schedule: LRSchedule, weight_decay: float = 0.0,
                 reset_each_outer_step: bool = False):
        self.schedule = schedule
        self.weight_decay = float(weight_decay)
        self.reset_each_outer_step = bool(reset_each_outer_step)

    def init(self) -> OptState:
        """The state before the first step (moments unset, count 0)."""
        return OptState()

    def lr(self, state: OptState, lr_scale: float = 1.0) -> float:
        """Learning rate alpha_n of the next step (n = ``state.count``), base rate scaled by
        ``lr_scale``."""
        return self.schedule.scaled(lr_scale)(state.count)

    def _effective_grad(self, x: np.ndarray, grad, maximize: bool) -> np.ndarray:
        g = np.asarray(grad, dtype=x.dtype)
        if g.shape != x.shape:
            raise ValueError(f"grad has shape {g.shape}, params have shape {x.shape}")
        g = -g if maximize else g.copy()
        g = g.ravel()
        if self.weight_decay:
            g += x.dtype.type(self.weight_decay) * x.ravel()
        return g

    def update(self, state: OptState, params: np.ndarray, grad: np.ndarray, maximize: bool = False,
               lr_scale: float = 1.0, step_size: Callable[[np.ndarray], float] | None = None
               ) -> tuple[np.ndarray, OptState]:
        """One optimizer step; pure (``state``, ``params`` and ``grad`` are not modified).

        Parameters
        ----------
        state : the optimizer state before the step (:meth:`init` for the first).
        params : parameters x_n (any shape, float32 or float64).
        grad : gradient of the objective at x_n, same shape.
        maximize : ascend the objective (minimise its negation: -grad is used throughout).
        lr_scale : factor on the schedule's base rate (the KID schedule's decay; 1: as built).
        step_size : CG only: ``step_size(d_n) -> alpha_n`` replaces the schedule (d_n flat, in
            the minimisation convention; e.g. an exact line search).

        Returns
        -------
        (x_{n+1} with the shape and dtype of ``params``, the state after the step)
        """
        x = np.asarray(params)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        if step_size is not None and self.name != "cg":
            raise ValueError(f"step_size is a CG option, not one of the {self.name!r} optimizer")
        g = self._effective_grad(x, grad, maximize)
        new, st = self._apply(state, x.ravel(), g, self.lr(state, lr_scale), step_size)
        return new.astype(x.dtype, copy=False).reshape(x.shape), dataclasses.replace(st, count=state.count + 1)

    #: True when ``_apply`` is element-wise in (x, g), so that :meth:`update_members` can
    #: advance an ensemble of independent parameter vectors (rows) at once; CG's beta is a
    #: global dot product and is not.
    elementwise = True

    def update_members(self, state: OptState, params: np.ndarray, grad: np.ndarray, lrs: np.ndarray,
                       maximize: bool = False) -> tuple[np.ndarray, OptState]:
        """One step of B independent members at once (an ensemble's batched program).

        Row b of ``params`` (B, P) is stepped exactly as :meth:`update` steps that row alone with
        learning rate ``lrs[b]`` (bitwise: the update is element-wise and the rate is rounded
        to the parameters' dtype as a scalar rate is); the moments are (B, P) arrays.
        ``lrs`` : (B,) learning rates alpha_n of this step, one per member.
        """
        if not self.elementwise:
            raise ValueError(f"the {self.name!r} optimizer couples the parameters (dot products): "
                             "it cannot step ensemble members side by side")
        x = np.asarray(params)
        if x.ndim != 2 or x.dtype not in (np.float32, np.float64):
            raise ValueError(f"update_members needs (B, P) float parameters, got {x.shape} {x.dtype}")
        lr = np.asarray(lrs, dtype=np.float64).reshape(-1, 1)
        if lr.shape[0] != x.shape[0]:
            raise ValueError(f"{lr.shape[0]} learning rates for {x.shape[0]} members")
        g = self._effective_grad(x, grad, maximize).reshape(x.shape)
        new, st = self._apply(state, x, g, lr, None)
        return new.astype(x.dtype, copy=False), dataclasses.replace(st, count=state.count + 1)

    def fused_steps(self, state: OptState, lrs: np.ndarray, shape: tuple, dtype) -> "FusedSteps | None":
        """What a backend loop needs to run ``len(lrs)`` steps of this optimizer itself (the cpu
        backend's fused critic ascent), or None when the update is not element-wise (CG).

        ``lrs`` : (n_steps, B) float64 learning rates alpha_n of each step for each member
        (B = 1 for a single run); ``shape`` : (B, P) and ``dtype`` of the parameters. The
        moments are copies of ``state``'s: :meth:`absorb_fused` makes the state after the loop.
        """
        return None

    def absorb_fused(self, state: OptState, steps: "FusedSteps", n_done: int, members: bool) -> OptState:
        """The state after a backend loop ran ``n_done`` of the steps of ``steps``
        (:meth:`fused_steps`): (B, P) moments for an ensemble (``members``), (P,) for a single
        run."""
        raise NotImplementedError

    def reset(self, state: OptState) -> OptState:
        """Moments / directions forgotten (as if re-created); the schedule counter is kept."""
        return OptState(count=state.count)

    def begin_outer_step(self, state: OptState) -> OptState:
        """The state to start an outer step from: reset iff ``reset_each_outer_step``."""
        return self.reset(state) if self.reset_each_outer_step else state

    def _apply(self, state, x, g, lr, step_size):  # pragma: no cover - overridden
        raise NotImplementedError


class SGD(Optimizer):
    """Plain gradient descent x_{n+1} = x_n - alpha_n g_n (no state besides the step counter)."""

    name = "sgd"

    def _apply(self, state, x, g, lr, step_size):
        return x - _rate(lr, x) * g, state

    def fused_steps(self, state, lrs, shape, dtype):
        return _fused(self, "sgd", lrs, shape, dtype)

    def absorb_fused(self, state, steps, n_done, members):
        return dataclasses.replace(state, count=state.count + n_done)


class Momentum(Optimizer):
    """Heavy-ball momentum (torch SGD convention): v_n = mu v_{n-1} + g_n, v_0 = g_0;
    x_{n+1} = x_n - alpha_n v_n, or x_n - alpha_n (g_n + mu v_n) with Nesterov. The buffer v is
    ``state.m``.

    For constant alpha this is x_{n+1} = x_n - alpha g_n + mu (x_n - x_{n-1}).
    """

    name = "momentum"

    def __init__(self, schedule, momentum: float = 0.9, nesterov: bool = False, **kw):
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        super().__init__(schedule, **kw)

    def _apply(self, state, x, g, lr, step_size):
        mu = x.dtype.type(self.momentum)
        buf = g.copy() if state.m is None else mu * state.m + g
        upd = g + mu * buf if self.nesterov else buf
        return x - _rate(lr, x) * upd, dataclasses.replace(state, m=buf)

    def fused_steps(self, state, lrs, shape, dtype):
        return _fused(self, "momentum", lrs, shape, dtype, mu=self.momentum, nesterov=self.nesterov,
                      m=_moments(state.m, shape, dtype), fresh=state.m is None)

    def absorb_fused(self, state, steps, n_done, members):
        m = _unstack(steps.m, members) if n_done else state.m
        return dataclasses.replace(state, count=state.count + n_done, m=m)


class Adam(Optimizer):
    """Adam / AMSGrad as torch.optim.Adam (coupled L2 weight decay).

    State: t (steps since the last reset), m, v and, with amsgrad, v_max = max over steps of v
    (the running maximum of the raw second moment, as torch >= 1.x).
    """

    name = "adam"

    def __init__(self, schedule, betas=(0.9, 0.999), eps: float = 1e-8, amsgrad: bool = False,
                 **kw):
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.amsgrad = bool(amsgrad)
        super().__init__(schedule, **kw)

    def _apply(self, state, x, g, lr, step_size):
        b1, b2 = self.betas
        t = x.dtype.type
        fresh = state.m is None
        # the textbook m = b1 m + (1 - b1) g and v = b2 v + (1 - b2) g^2, op by op (the same
        # roundings as the backend's fused loop), into new arrays: the given state is not written
        m = np.zeros_like(x) if fresh else state.m * t(b1)
        m += np.multiply(g, t(1 - b1))
        tmp = np.multiply(g, g)
        tmp *= t(1 - b2)
        v = np.zeros_like(x) if fresh else state.v * t(b2)
        v += tmp
        second, v_max = v, None
        if self.amsgrad:
            v_max = np.maximum(v if fresh else state.v_max, v)  # max(0, v) = v for the first step
            second = v_max
        step = state.t + 1
        bc1 = 1 - b1 ** step
        bc2 = 1 - b2 ** step
        np.divide(second, t(bc2), out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += t(self.eps)                      # denom = sqrt(second / bc2) + eps
        np.divide(m, tmp, out=tmp)
        tmp *= _rate(lr / bc1, x)
        return x - tmp, dataclasses.replace(state, t=step, m=m, v=v, v_max=v_max)

    def fused_steps(self, state, lrs, shape, dtype):
        b1, b2 = self.betas
        ts = state.t + 1 + np.arange(len(lrs))
        bc1 = np.array([1 - b1 ** int(t) for t in ts])  # Python's float power, as _apply takes it
        bc2 = np.array([1 - b2 ** int(t) for t in ts])
        return _fused(self, "adam", np.asarray(lrs, dtype=np.float64) / bc1[:, None], shape, dtype,
                      b1=b1, b2=b2, eps=self.eps, amsgrad=self.amsgrad, bc2=bc2,
                      m=_moments(state.m, shape, dtype), v=_moments(state.v, shape, dtype),
                      v_max=_moments(state.v_max, shape, dtype) if self.amsgrad else np.zeros((shape[0], 0), dtype),
                      fresh=state.m is None)

    def absorb_fused(self, state, steps, n_done, members):
        if not n_done:
            return state
        return dataclasses.replace(state, count=state.count + n_done, t=state.t + n_done,
                                   m=_unstack(steps.m, members), v=_unstack(steps.v, members),
                                   v_max=_unstack(steps.v_max, members) if self.amsgrad else None)


# ------------------------------------------------------------------ conjugate gradient ----
def _ratio(num: float, den: float) -> float:
    """num/den, with beta = 0 when the denominator is exactly 0 (spec P2.3)."""
    return 0.0 if den == 0 else num / den


def cg_beta(rule: str, g: np.ndarray, g_prev: np.ndarray, d_prev: np.ndarray,
            clip: str = "default", mu: float = 2.0) -> float:
    """CG parameter beta_n of one rule (spec P2.3 table), on flat vectors.

    With y = g - g_prev and X' = min(X, 1/2) (the code's upper clip; no clip for ``"none"``)::

        FR = |g|^2/|g_prev|^2       PRP = g.y/|g_prev|^2     HS = g.y/(d_prev.y)
        DY = |g|^2/(d_prev.y)       HS_DY = max(0, min(HS', DY'))
        FR_PRP = max(0, min(FR', PRP'))
        HZ = min(HS' - mu |y|^2 (g.d_prev)/(d_prev.y)^2, 1/2)

    A denominator exactly 0 gives beta = 0 (for the whole rule). ``clip``: ``"code"`` is the
    table as is; ``"default"`` additionally clips the single rules FR, PRP, HS, DY, HZ below at
    0 (beta in [0, 1/2], i.e. PRP+ and friends; the hybrids are unchanged, already in [0, 1/2]);
    ``"none"`` drops every 1/2 cap (textbook CG; the hybrids keep max(0, .)).
    """
    g = g.astype(np.float64, copy=False)
    g_prev = g_prev.astype(np.float64, copy=False)
    d_prev = d_prev.astype(np.float64, copy=False)
    y = g - g_prev
    gg = float(np.dot(g, g))
    pp = float(np.dot(g_prev, g_prev))
    gy = float(np.dot(g, y))
    dy = float(np.dot(d_prev, y))
    cap = (lambda b: b) if clip == "none" else (lambda b: min(b, _BETA_MAX))
    if rule == "FR":
        beta = cap(_ratio(gg, pp))
    elif rule == "PRP":
        beta = cap(_ratio(gy, pp))
    elif rule == "HS":
        beta = cap(_ratio(gy, dy))
    elif rule == "DY":
        beta = cap(_ratio(gg, dy))
    elif rule == "HS_DY":
        return 0.0 if dy == 0 else max(0.0, min(cap(gy / dy), cap(gg / dy)))
    elif rule == "FR_PRP":
        return 0.0 if pp == 0 else max(0.0, min(cap(gg / pp), cap(gy / pp)))
    elif rule == "HZ":
        if dy == 0:
            return 0.0
        beta = cap(cap(gy / dy) - mu * float(np.dot(y, y)) * float(np.dot(g, d_prev)) / dy ** 2)
    else:
        raise ConfigError(f"cg rule = {rule!r}: choose one of {', '.join(CG_RULES)}")
    return max(0.0, beta) if clip == "default" else beta


class ConjugateGradient(Optimizer):
    """Nonlinear conjugate gradient for one player (spec P2.2-P2.3, resolutions of 2.6).

    Textbook form (default)::

        d_0 = -g_0,   d_n = -g_n + gamma_n d_{n-1},   x_{n+1} = x_n + alpha_n d_n,
        gamma_n = c beta_n,  c = beta_scale,  beta_n = cg_beta(rule, g_n, g_{n-1}, d_{n-1})

    with one global beta over the flattened vector, or (``per_tensor=True``) one beta per slice
    of ``slices`` (which must tile the vector; e.g. ``MLP.tensor_slices()``), as the reference
    code does per parameter tensor. ``update(..., step_size=fn)`` lets ``fn(d_n) -> alpha_n``
    replace the schedule (e.g. an exact line search; not from the paper). The state keeps
    g_{n-1} (``prev_grad``), the stored direction (``direction``) and the last beta.

    Reference-code defects (``Hiroki11x/ConjugateGradient_GAN: jupyter/toy_example/
    cg_optimizer.py``; spec 2.6), reproducible ONLY through these flags, all off by default:

    * ``legacy_first_step_ascent``: the first step moves along +g_0 (x_1 = x_0 + alpha_0 g_0,
      gradient ascent); the stored direction is still -g_0, as in that code (whose buffer
      after step 0 is 0 * d - g_0).
    * ``legacy_direction_update``: after step n the stored direction is gamma_n d_n - g_n
      instead of d_n, so d_{n+1} = gamma_{n+1}(gamma_n d_n - g_n) - g_{n+1}; the beta rules
      (HS, DY, HZ) also see the stored buffer (gamma_0 = 0, so the buffer after step 0 is -g_0).
    * ``legacy_alias_bug``: the previous gradient is an alias of the current one (torch in-place
      ``zero_grad`` + backward), so g_{n-1} = g_n and y_n = 0: FR gives 1 (1/2 after the cap),
      PRP and FR_PRP give 0, HS, DY, HS_DY and HZ have a zero denominator and give 0.

    Maximisation uses -grad (see the module docstring): the critic minimises -objective.
    """

    name = "cg"
    elementwise = False

    def __init__(self, schedule, rule: str = "FR", beta_scale: float = 1.0,
                 beta_clip: str = "default", mu: float = 2.0, per_tensor: bool = False,
                 slices: Sequence[slice] | None = None, legacy_first_step_ascent: bool = False,
                 legacy_direction_update: bool = False, legacy_alias_bug: bool = False, **kw):
        self.rule = rule
        self.beta_scale = float(beta_scale)
        self.beta_clip = beta_clip
        self.mu = float(mu)
        self.per_tensor = bool(per_tensor)
        self.slices = tuple(slices) if slices is not None else None
        self.legacy_first_step_ascent = bool(legacy_first_step_ascent)
        self.legacy_direction_update = bool(legacy_direction_update)
        self.legacy_alias_bug = bool(legacy_alias_bug)
        super().__init__(schedule, **kw)

    def _segments(self, size: int) -> list[slice]:
        if not self.per_tensor:
            return [slice(0, size)]
        pos = 0
        for s in self.slices:
            start, stop, stride = s.indices(size)
            if start != pos or stride != 1 or stop <= start:
                raise ValueError("cg per_tensor slices must tile the parameter vector in order")
            pos = stop
        if pos != size:
            raise ValueError(f"cg per_tensor slices cover {pos} of {size} parameters")
        return list(self.slices)

    def _apply(self, state, x, g, lr, step_size):
        t = x.dtype.type
        segments = self._segments(x.size)
        if state.prev_grad is None:
            d = -g
            stored = d
            betas = [0.0] * len(segments)
            move = g if self.legacy_first_step_ascent else d
        else:
            g_prev = g if self.legacy_alias_bug else state.prev_grad
            d = np.empty_like(g)
            stored = np.empty_like(g) if self.legacy_direction_update else d
            betas = []
            for s in segments:
                beta = cg_beta(self.rule, g[s], g_prev[s], state.direction[s], self.beta_clip,
                               self.mu)
                betas.append(beta)
                gamma = t(self.beta_scale * beta)
                d[s] = -g[s] + gamma * state.direction[s]
                if self.legacy_direction_update:
                    stored[s] = gamma * d[s] - g[s]
            move = d
        alpha = lr if step_size is None else float(step_size(d.copy()))
        beta = betas[0] if not self.per_tensor else np.array(betas)
        return x + alpha * move, dataclasses.replace(state, prev_grad=g.copy(), direction=stored.copy(), beta=beta)


# -------------------------------------------------------------------------- factory ----
_COMMON = ("weight_decay", "reset_each_outer_step", "lr_schedule", "lr_power", "lr_decay",
           "lr_every")
_OPTIONS = {
    "sgd": (),
    "momentum": ("momentum", "nesterov"),
    "adam": ("betas", "eps", "amsgrad"),
    "cg": ("rule", "beta_scale", "beta_clip", "mu", "per_tensor", "slices",
           "legacy_first_step_ascent", "legacy_direction_update", "legacy_alias_bug"),
}


def make_optimizer(name: str, lr: float, *, key_prefix: str = "optimizer",
                   key_names: Mapping[str, str] | None = None, **options) -> Optimizer:
    """Build an optimizer.

    Parameters
    ----------
    name : "sgd", "momentum", "adam" or "cg".
    lr : base learning rate alpha_0 > 0 (an :class:`LRSchedule` given as ``lr_schedule``
        carries its own lr0, which then wins).
    key_prefix, key_names : config section and option -> config-key names used in error
        messages (so that a bad value names the user's key).
    **options :
        common: ``weight_decay`` (>= 0, coupled L2), ``reset_each_outer_step`` (bool),
        ``lr_schedule`` (see :func:`make_lr_schedule`; default "constant"), ``lr_power``,
        ``lr_decay``, ``lr_every``;
        momentum: ``momentum`` in [0, 1) (0.9), ``nesterov`` (False);
        adam: ``betas`` (0.9, 0.999) each in [0, 1), ``eps`` > 0 (1e-8), ``amsgrad`` (False);
        cg: ``rule`` in FR, PRP, HS, DY, HS_DY, FR_PRP, HZ (case-insensitive; "FR"),
        ``beta_scale`` c >= 0 (1.0), ``beta_clip`` "default" | "code" | "none", ``mu`` (2.0,
        HZ), ``per_tensor`` (False) with ``slices``, ``legacy_first_step_ascent``,
        ``legacy_direction_update``, ``legacy_alias_bug`` (all False).

    An option that does not belong to the chosen optimizer raises ConfigError.
    """
    key = _key_namer(key_prefix, key_names)
    require(key("name"), name, checks.one_of(OPTIMIZERS))
    allowed = _COMMON + _OPTIONS[name]
    for k in options:
        if k not in allowed:
            raise ConfigError(f"{key(k)} is not an option of the {name!r} optimizer, got {options[k]!r}")
    require(key("lr"), lr, checks.finite, _ascent_rate)
    sched = options.pop("lr_schedule", "constant")
    sched_kw = {k[3:]: options.pop(k) for k in ("lr_power", "lr_decay", "lr_every") if k in options}
    if isinstance(sched, LRSchedule):
        schedule = sched
    else:
        schedule = make_lr_schedule(sched, lr, key_prefix=key_prefix, key_names=key_names, **sched_kw)
    wd = require(key("weight_decay"), options.pop("weight_decay", 0.0), checks.finite, checks.nonneg)

    def flag(opt):
        return bool(require(key(opt), options.pop(opt, False), checks.flag))

    common = {"weight_decay": float(wd), "reset_each_outer_step": flag("reset_each_outer_step")}
    if name == "sgd":
        return SGD(schedule, **common)
    if name == "momentum":
        mom = require(key("momentum"), options.get("momentum", 0.9), checks.finite, checks.unit_half_open)
        return Momentum(schedule, momentum=float(mom), nesterov=flag("nesterov"), **common)
    if name == "adam":
        betas = require(key("betas"), options.get("betas", (0.9, 0.999)),
                        checks.pair_of(checks.all_of(checks.finite, checks.unit_half_open), "numbers in [0, 1)"))
        eps = require(key("eps"), options.get("eps", 1e-8), checks.finite, checks.positive)
        return Adam(schedule, betas=tuple(float(b) for b in betas), eps=float(eps), amsgrad=flag("amsgrad"),
                    **common)
    rule = options.get("rule", "FR")
    rule_u = rule.upper() if isinstance(rule, str) else rule
    if rule_u not in CG_RULES:  # (case-insensitive; the error shows the value as given)
        require(key("rule"), rule, checks.one_of(CG_RULES))
    scale = require(key("beta_scale"), options.get("beta_scale", 1.0), checks.finite, checks.nonneg)
    clip = require(key("beta_clip"), options.get("beta_clip", "default"), checks.one_of(CG_BETA_CLIPS))
    mu = require(key("mu"), options.get("mu", 2.0), checks.finite, checks.nonneg)
    per_tensor = flag("per_tensor")
    slices = options.get("slices")
    if per_tensor and (slices is None or len(slices) == 0
                       or not all(isinstance(s, slice) for s in slices)):
        raise ConfigError(f"{key('slices')} must be a non-empty list of slices for per_tensor=True, got {slices!r}")
    flags = {k: flag(k) for k in ("legacy_first_step_ascent", "legacy_direction_update", "legacy_alias_bug")}
    return ConjugateGradient(schedule, rule=rule_u, beta_scale=float(scale), beta_clip=clip,
                             mu=float(mu), per_tensor=per_tensor, slices=slices, **flags, **common)


