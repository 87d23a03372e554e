"""Tests of particlegan.model.optimizers: convergence, hand-computed CG beta rules and legacy defects
(losses-metrics-optim-spec P2.2-P2.6), Adam/momentum against hand-written reference steps,
pure (init, update) pairs, state round trips through a checkpoint, schedules, maximisation
and config errors."""
import io
import json
import math

import numpy as np
import pytest

from particlegan.model import optimizers as opt
from particlegan.model.from_config import optimizer_from_config
from particlegan.errors import ConfigError

RULES = ("FR", "PRP", "HS", "DY", "HS_DY", "FR_PRP", "HZ")


class _Run:
    """An optimizer rule with its state threaded through a sequence of updates (the tests'
    shorthand: ``x = run.step(x, g)`` is ``x, run.state = rule.update(run.state, x, g)``)."""

    def __init__(self, rule):
        self.rule, self.state = rule, rule.init()

    def step(self, x, g, **kw):
        x, self.state = self.rule.update(self.state, x, g, **kw)
        return x

    @property
    def last_beta(self):
        return self.state.beta


def _make(name, lr, **options):
    return _Run(opt.make_optimizer(name, lr, **options))


def _quadratic(dim=5, seed=0):
    """f(x) = 1/2 x^T A x - b^T x with eigenvalues of A in [1, 5]."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    A = Q @ np.diag(np.linspace(1.0, 5.0, dim)) @ Q.T
    b = rng.standard_normal(dim)
    return A, b, np.linalg.solve(A, b)


def _f(A, b, x):
    return 0.5 * x @ A @ x - b @ x


# ---------------------------------------------------------------------- convergence ----
CONVERGE_CASES = [
    ("sgd", 0.1, {}),
    ("momentum", 0.05, {}),
    ("momentum", 0.05, {"nesterov": True}),
    ("adam", 0.01, {}),
    ("adam", 0.05, {"amsgrad": True, "lr_schedule": "inv_sqrt"}),
] + [("cg", 0.1, {"rule": r}) for r in RULES]


@pytest.mark.parametrize("name,lr,options", CONVERGE_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CONVERGE_CASES)])
@pytest.mark.parametrize("maximize", [False, True])
def test_converges_on_convex_quadratic(name, lr, options, maximize):
    A, b, x_star = _quadratic()
    o = _make(name, lr, **options)
    x = np.zeros(5)
    sign = -1.0 if maximize else 1.0      # maximise -f <=> minimise f
    for _ in range(3000):
        x = o.step(x, sign * (A @ x - b), maximize=maximize)
    assert np.all(np.isfinite(x))
    assert np.linalg.norm(x - x_star) < 1e-3 * max(1.0, np.linalg.norm(x_star))


def _exact_step(A, b, x_ref):
    """Exact line search on the quadratic: alpha = -(g.d)/(d^T A d) at the current x."""
    return lambda d: float(-((A @ x_ref[0] - b) @ d) / (d @ A @ d))


@pytest.mark.parametrize("rule", RULES)
def test_cg_with_exact_step_and_no_clip_is_linear_cg(rule):
    """On a quadratic with exact line search every rule equals linear CG: x* in dim steps."""
    A, b, x_star = _quadratic(dim=6, seed=1)
    o = _make("cg", 1.0, rule=rule, beta_clip="none")
    x = np.zeros(6)
    holder = [x]
    for _ in range(6):
        holder[0] = x
        x = o.step(x, A @ x - b, step_size=_exact_step(A, b, holder))
    assert np.linalg.norm(x - x_star) < 1e-9 * np.linalg.norm(x_star)


@pytest.mark.parametrize("rule", ["FR", "PRP", "HS", "DY"])
def test_default_clip_trades_conjugacy_for_bounded_beta(rule):
    """The default (beta in [0, 1/2], the paper's gamma_max = 1/2 bound that its convergence
    analysis for stochastic gradients needs) is not textbook CG: on an ill-conditioned quadratic
    with exact line search, textbook CG (beta_clip = "none") reaches x* in dim steps, the default
    does not, because some raw beta exceeds 1/2 and is capped."""
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    A = Q @ np.diag(np.logspace(0, 3, 6)) @ Q.T
    b = rng.normal(size=6)
    x_star = np.linalg.solve(A, b)
    err, betas = {}, {}
    for clip in ("none", "default"):
        o = _make("cg", 1.0, rule=rule, beta_clip=clip)
        x, holder, seen = np.zeros(6), [None], []
        for _ in range(6):
            holder[0] = x
            x = o.step(x, A @ x - b, step_size=_exact_step(A, b, holder))
            seen.append(o.last_beta)
        err[clip], betas[clip] = np.linalg.norm(x - x_star) / np.linalg.norm(x_star), seen
    assert err["none"] < 1e-8
    assert max(betas["none"]) > 0.5 and max(betas["default"]) <= 0.5
    assert err["default"] > 1e-4


@pytest.mark.parametrize("clip", ["default", "code"])
@pytest.mark.parametrize("rule", RULES)
def test_cg_with_exact_step_decreases_f_and_respects_clip(rule, clip):
    A, b, x_star = _quadratic(dim=8, seed=2)
    o = _make("cg", 1.0, rule=rule, beta_clip=clip)
    x = np.full(8, 3.0)
    holder = [x]
    f_prev = _f(A, b, x)
    for _ in range(25):
        holder[0] = x
        x = o.step(x, A @ x - b, step_size=_exact_step(A, b, holder))
        f_now = _f(A, b, x)
        assert f_now <= f_prev + 1e-12
        f_prev = f_now
        assert o.last_beta <= 0.5
        if clip == "default":
            assert o.last_beta >= 0.0
    assert f_prev - _f(A, b, x_star) < 1e-6


# ------------------------------------------------------------- beta rules by hand ----
def _hand_beta(rule, g, gp, dp, clip, mu=2.0):
    """The P2.3 table, written out independently of the implementation."""
    y = g - gp
    up = (lambda v: v) if clip == "none" else (lambda v: min(v, 0.5))
    fr_den = float(np.sum(gp * gp))
    dy_den = float(np.sum(dp * y))
    if rule in ("FR", "PRP", "FR_PRP") and fr_den == 0:
        return 0.0
    if rule in ("HS", "DY", "HS_DY", "HZ") and dy_den == 0:
        return 0.0
    fr = up(float(np.sum(g * g)) / fr_den) if fr_den else None
    prp = up(float(np.sum(g * y)) / fr_den) if fr_den else None
    hs = up(float(np.sum(g * y)) / dy_den) if dy_den else None
    dy = up(float(np.sum(g * g)) / dy_den) if dy_den else None
    if rule == "HS_DY":
        return max(0.0, min(hs, dy))
    if rule == "FR_PRP":
        return max(0.0, min(fr, prp))
    if rule == "HZ":
        val = up(hs - mu * float(np.sum(y * y)) * float(np.sum(g * dp)) / dy_den ** 2)
    else:
        val = {"FR": fr, "PRP": prp, "HS": hs, "DY": dy}[rule]
    return max(0.0, val) if clip == "default" else val


def _grad_sequence(seed=3, n=8, dim=6):
    rng = np.random.default_rng(seed)
    scales = [1.0, 2.0, 0.3, 1.5, 0.2, 3.0, 1.0, 0.7][:n]
    return [s * rng.standard_normal(dim) for s in scales]


@pytest.mark.parametrize("clip", ["default", "code", "none"])
@pytest.mark.parametrize("rule", RULES)
def test_beta_rules_match_hand_computation(rule, clip):
    gs = _grad_sequence()
    c, lr = 0.75, 0.1
    o = _make("cg", lr, rule=rule, beta_clip=clip, beta_scale=c)
    x = np.zeros(6)
    x_ref = np.zeros(6)
    d_prev = None
    raw_betas = []
    for n, g in enumerate(gs):
        x = o.step(x, g)
        if n == 0:
            d = -g
        else:
            beta = _hand_beta(rule, g, gs[n - 1], d_prev, clip)
            assert o.last_beta == pytest.approx(beta, rel=1e-12, abs=1e-15)
            raw_betas.append(_hand_beta(rule, g, gs[n - 1], d_prev, "none"))
            d = -g + c * beta * d_prev
        x_ref = x_ref + lr * d
        d_prev = d
        np.testing.assert_allclose(x, x_ref, rtol=1e-13, atol=1e-13)
    if rule in ("FR", "PRP", "HS", "DY", "HZ"):
        # the sequence exercises the clipping: some raw betas above 1/2, and (except FR) below 0
        assert max(raw_betas) > 0.5
        if rule != "FR":
            assert min(raw_betas) < 0.0


@pytest.mark.parametrize("rule", RULES)
def test_zero_denominators_give_beta_zero(rule):
    o = _make("cg", 0.1, rule=rule, beta_clip="none")
    x = o.step(np.ones(3), np.zeros(3))          # g_0 = 0, so |g_0|^2 = 0 and d_0.y = 0
    x = o.step(x, np.array([1.0, -2.0, 0.5]))
    assert o.last_beta == 0.0
    assert np.all(np.isfinite(x))


def test_per_tensor_beta_equals_separate_optimizers():
    gs = _grad_sequence(seed=4, dim=7)
    slices = [slice(0, 3), slice(3, 7)]
    joint = _make("cg", 0.1, rule="PRP", per_tensor=True, slices=slices)
    parts = [_make("cg", 0.1, rule="PRP") for _ in slices]
    glob = _make("cg", 0.1, rule="PRP")
    x = np.zeros(7)
    xs = [np.zeros(3), np.zeros(4)]
    xg = np.zeros(7)
    for g in gs:
        x = joint.step(x, g)
        xg = glob.step(xg, g)
        xs = [p.step(xp, g[s]) for p, xp, s in zip(parts, xs, slices)]
        np.testing.assert_array_equal(joint.last_beta, [p.last_beta for p in parts])
    np.testing.assert_array_equal(x, np.concatenate(xs))
    assert not np.array_equal(x, xg)       # one global beta differs from per-tensor betas


# ------------------------------------------------------------------ legacy defects ----
@pytest.mark.parametrize("rule,expected", [("FR", 0.5), ("PRP", 0.0), ("HS", 0.0), ("DY", 0.0),
                                           ("HS_DY", 0.0), ("FR_PRP", 0.0), ("HZ", 0.0)])
def test_alias_bug_makes_y_zero(rule, expected):
    gs = _grad_sequence(seed=5)
    o = _make("cg", 0.1, rule=rule, beta_clip="code", legacy_alias_bug=True)
    x = np.zeros(6)
    for g in gs:
        x = o.step(x, g)
    assert o.last_beta == expected
    if rule == "FR":   # uncapped FR would be |g|^2/|g|^2 = 1
        o = _make("cg", 0.1, rule="FR", beta_clip="none", legacy_alias_bug=True)
        for g in gs[:3]:
            o.step(x, g)
        assert o.last_beta == 1.0


def test_first_step_ascent_flag():
    g0, g1 = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    x0 = np.array([3.0, 4.0])
    o = _make("cg", 0.1, rule="FR", legacy_first_step_ascent=True)
    x1 = o.step(x0, g0)
    np.testing.assert_allclose(x1, x0 + 0.1 * g0, rtol=0, atol=1e-15)   # ascent
    x2 = o.step(x1, g1)
    beta = min(g1 @ g1 / (g0 @ g0), 0.5)
    # the stored direction is still d_0 = -g_0
    np.testing.assert_allclose(x2, x1 + 0.1 * (-g1 + beta * (-g0)), rtol=1e-14)
    clean = _make("cg", 0.1, rule="FR")
    np.testing.assert_allclose(clean.step(x0, g0), x0 - 0.1 * g0, rtol=0, atol=1e-15)


@pytest.mark.parametrize("rule", ["FR", "HS", "HZ"])
def test_direction_update_flag_double_updates(rule):
    gs = _grad_sequence(seed=6, n=4)
    c, lr = 0.5, 0.1
    o = _make("cg", lr, rule=rule, beta_scale=c, beta_clip="code",
                           legacy_direction_update=True)
    x = np.zeros(6)
    x_ref = np.zeros(6)
    buf = None
    for n, g in enumerate(gs):
        x = o.step(x, g)
        if n == 0:
            d, gamma = -g, 0.0
        else:
            gamma = c * _hand_beta(rule, g, gs[n - 1], buf, "code")
            d = -g + gamma * buf
        x_ref = x_ref + lr * d
        buf = gamma * d - g                 # stored buffer of the reference code
        np.testing.assert_allclose(x, x_ref, rtol=1e-13, atol=1e-14)


def _reference_code_trajectory(gs, x0, lr, rule, c):
    """The released cg_optimizer.py loop as described in spec 2.6 (all three defects)."""
    x = x0.copy()
    d_buf = None
    prev = None
    out = []
    for g in gs:
        # alias bug: the "previous" gradient is the current one
        beta = 0.0 if prev is None else c * _hand_beta(rule, g, g, d_buf, "code")
        d = g.copy() if d_buf is None else beta * d_buf - g                       # clone(g) first
        x = x + lr * d
        d_buf = d * beta - g
        prev = g
        out.append(x)
    return out


@pytest.mark.parametrize("rule", RULES)
def test_all_legacy_flags_reproduce_reference_code(rule):
    gs = _grad_sequence(seed=7)
    x0 = np.linspace(-1, 1, 6)
    o = _make("cg", 0.05, rule=rule, beta_scale=0.75, beta_clip="code",
                           legacy_first_step_ascent=True, legacy_direction_update=True,
                           legacy_alias_bug=True)
    x = x0
    for g, x_ref in zip(gs, _reference_code_trajectory(gs, x0, 0.05, rule, 0.75)):
        x = o.step(x, g)
        np.testing.assert_allclose(x, x_ref, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------- toy saddle ----
TOY_METHODS = ([("sgd", {}), ("momentum", {"momentum": 0.5}), ("adam", {})]
               + [("cg", {"rule": r, "beta_scale": c}) for r in RULES for c in (0.5, 1.0)]
               + [("cg", {"rule": "FR", "legacy_first_step_ascent": True,
                          "legacy_direction_update": True, "legacy_alias_bug": True})])


@pytest.mark.parametrize("lr", [5e-6, 5e-5])
@pytest.mark.parametrize("name,options", TOY_METHODS,
                         ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in TOY_METHODS])
def test_toy_saddle_runs_without_nan(name, options, lr):
    """P2.6: f(x, y) = (1 + x^2)(100 - y^2), x minimises, y maximises, from (2, -4), 400 steps."""
    ox = _make(name, lr, **options)
    oy = _make(name, lr, **options)
    x, y = np.array([2.0]), np.array([-4.0])
    for _ in range(400):
        fx = 2 * x * (100 - y ** 2)
        fy = -2 * y * (1 + x ** 2)
        x, y = ox.step(x, fx), oy.step(y, fy, maximize=True)
        assert np.isfinite(x[0]) and np.isfinite(y[0])
    # both players move toward the saddle (0, 0)
    assert abs(x[0]) < 2.0 and abs(y[0]) < 4.0


# --------------------------------------------------------------------- state dicts ----
STATE_CASES = [
    ("sgd", {"lr_schedule": "inv"}),
    ("momentum", {"nesterov": True}),
    ("adam", {"amsgrad": True, "weight_decay": 0.01}),
    ("adam", {"lr_schedule": "step_decay", "lr_every": 3, "lr_decay": 0.5}),
    ("cg", {"rule": "HZ"}),
    ("cg", {"rule": "PRP", "legacy_direction_update": True, "lr_schedule": "diminishing",
            "lr_power": 0.3}),
]


def _checkpoint_roundtrip(state):
    """An optimizer state through particlegan.engine.checkpoint's generic form: arrays through an
    npz file, everything else through JSON."""
    from particlegan.engine import checkpoint as ck

    arrays, scalars = ck.state_fields(state)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        back = {k: z[k] for k in z.files}
    return ck.restore_state(opt.OptState(), {"fields": (back, json.loads(json.dumps(scalars)))})


def _rosenbrock_grad(x):
    g = np.zeros_like(x)
    g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return g


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,options", STATE_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(STATE_CASES)])
def test_state_roundtrip_is_bitwise(name, options, dtype):
    o1 = _make(name, 1e-3, **options)
    x = np.linspace(-1.2, 1.0, 5).astype(dtype)
    for _ in range(7):
        x = o1.step(x, _rosenbrock_grad(x))
    o2 = _make(name, 1e-3, **options)
    o2.state = _checkpoint_roundtrip(o1.state)
    assert o2.state.count == 7
    x1, x2 = x.copy(), x.copy()
    for _ in range(10):
        x1 = o1.step(x1, _rosenbrock_grad(x1))
        x2 = o2.step(x2, _rosenbrock_grad(x2))
    assert x1.dtype == dtype
    np.testing.assert_array_equal(x1, x2)


def _snapshot(state):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(state).items()}


@pytest.mark.parametrize("name,options", STATE_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(STATE_CASES)])
def test_update_is_pure_and_repeatable(name, options):
    """update(state, ...) changes neither the state nor its arrays: stepping twice from one state
    gives bitwise the same parameters and the same new state."""
    o = _make(name, 1e-3, **options)
    x = np.linspace(-1.2, 1.0, 5)
    for _ in range(4):
        x = o.step(x, _rosenbrock_grad(x))
    rule, state = o.rule, o.state
    before = _snapshot(state)
    x_a, s_a = rule.update(state, x, _rosenbrock_grad(x))
    x_b, s_b = rule.update(state, x, _rosenbrock_grad(x))
    np.testing.assert_array_equal(x_a, x_b)
    after = _snapshot(state)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(np.asarray(before[k], dtype=object), np.asarray(after[k], dtype=object))
    assert s_a.count == s_b.count == state.count + 1
    for k, v in vars(s_a).items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, getattr(s_b, k))
            assert v is not getattr(state, k)  # new arrays, never the given state's


# ---------------------------------------------------------------- adam / momentum ----
def _reference_adam(x, grads, lr, b1, b2, eps, wd, amsgrad):
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    vmax = np.zeros_like(x)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        vmax = np.maximum(vmax, v)
        vv = vmax if amsgrad else v
        x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(vv / (1 - b2 ** t)) + eps)
        out.append(x)
    return out


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adam_matches_reference_steps(amsgrad, wd):
    rng = np.random.default_rng(8)
    grads = [rng.standard_normal(4) * s for s in (1.0, 3.0, 0.1, 0.05, 2.0, 0.01)]
    x0 = rng.standard_normal(4)
    o = _make("adam", 0.01, betas=(0.5, 0.9), eps=1e-6, amsgrad=amsgrad,
                           weight_decay=wd)
    ref = _reference_adam(x0, grads, 0.01, 0.5, 0.9, 1e-6, wd, amsgrad)
    # feed the reference's own iterates so that weight decay sees the same x
    x = x0
    for g, x_ref in zip(grads, ref):
        x = o.step(x, g)
        np.testing.assert_allclose(x, x_ref, rtol=1e-13, atol=1e-15)


def test_amsgrad_keeps_running_max_of_v():
    rng = np.random.default_rng(9)
    o = _make("adam", 0.01, amsgrad=True)
    x = np.zeros(3)
    running = np.zeros(3)
    strictly_above = False
    for s in (3.0, 1.0, 0.1, 0.01, 0.01, 2.0, 0.001):
        x = o.step(x, s * rng.standard_normal(3))
        st = o.state
        running = np.maximum(running, st.v)
        np.testing.assert_array_equal(st.v_max, running)
        strictly_above |= bool(np.any(st.v_max > st.v))
    assert strictly_above


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_heavy_ball(nesterov):
    gs = _grad_sequence(seed=10)
    o = _make("momentum", 0.1, momentum=0.6, nesterov=nesterov)
    x = np.zeros(6)
    x_ref = np.zeros(6)
    v = None
    for g in gs:
        x = o.step(x, g)
        v = g if v is None else 0.6 * v + g
        x_ref = x_ref - 0.1 * (g + 0.6 * v if nesterov else v)
        np.testing.assert_allclose(x, x_ref, rtol=1e-14, atol=1e-15)
    if not nesterov:   # constant lr: x_{n+1} = x_n - lr g_n + mu (x_n - x_{n-1})
        o = _make("momentum", 0.1, momentum=0.6)
        xs = [np.zeros(6)]
        for g in gs:
            xs.append(o.step(xs[-1], g))
        for n in range(1, len(gs)):
            np.testing.assert_allclose(xs[n + 1], xs[n] - 0.1 * gs[n] + 0.6 * (xs[n] - xs[n - 1]),
                                       rtol=1e-12, atol=1e-14)


def test_reset_and_begin_outer_step():
    gs = _grad_sequence(seed=11)
    o = _make("adam", 0.1, lr_schedule="inv", reset_each_outer_step=True)
    x = np.zeros(6)
    for g in gs[:3]:
        x = o.step(x, g)
    o.state = o.rule.begin_outer_step(o.state)
    assert o.state.t == 0 and o.state.m is None and o.state.v is None
    assert o.state.count == 3                   # the schedule keeps counting
    fresh = _make("adam", 0.1 / 4)  # inv schedule at n = 3: lr0 / 4
    np.testing.assert_allclose(o.step(x, gs[3]), fresh.step(x, gs[3]), rtol=1e-15)
    keep = _make("momentum", 0.1)
    keep.step(x, gs[0])
    assert keep.rule.begin_outer_step(keep.state) is keep.state  # flag off: nothing happens
    assert keep.state.m is not None
    assert keep.rule.reset(keep.state).m is None and keep.rule.reset(keep.state).count == 1


@pytest.mark.parametrize("name,options", [("sgd", {}), ("momentum", {}),
                                          ("adam", {"amsgrad": True}), ("cg", {"rule": "HS"}),
                                          ("cg", {"rule": "HZ"})])
def test_maximize_equals_minimizing_negated_function(name, options):
    """maximize=True on grad f is bitwise the same run as minimising -f."""
    a = _make(name, 1e-3, **options)
    b = _make(name, 1e-3, **options)
    xa = xb = np.linspace(-1.0, 1.5, 4)
    for _ in range(20):
        xa = a.step(xa, -_rosenbrock_grad(xa), maximize=True)   # ascend -rosenbrock
        xb = b.step(xb, _rosenbrock_grad(xb))                   # descend rosenbrock
    np.testing.assert_array_equal(xa, xb)


def test_step_does_not_modify_inputs_and_keeps_shape():
    o = _make("cg", 0.1)
    x = np.ones((3, 2))
    g = np.arange(6.0).reshape(3, 2)
    x_copy, g_copy = x.copy(), g.copy()
    new = o.step(x, g)
    assert new.shape == (3, 2)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(g, g_copy)
    np.testing.assert_allclose(new, x - 0.1 * g)


# ---------------------------------------------------------------------- schedules ----
@pytest.mark.parametrize("kind,expected", [
    ("constant", lambda n: 0.2),
    ("diminishing", lambda n: 0.2 / (n + 1) ** 0.3),
    ("inv_sqrt", lambda n: 0.2 / math.sqrt(n + 1)),
    ("inv", lambda n: 0.2 / (n + 1)),
    ("step_decay", lambda n: 0.2 * 0.5 ** (n // 4)),
])
def test_lr_schedules(kind, expected):
    s = opt.make_lr_schedule(kind, 0.2, power=0.3, decay=0.5, every=4)
    for n in (0, 1, 3, 4, 9, 100):
        assert s(n) == pytest.approx(expected(n), rel=1e-15)
    o = _make("sgd", 0.2, lr_schedule=kind, lr_power=0.3, lr_decay=0.5, lr_every=4)
    x = np.zeros(1)
    for n in range(10):
        x_new = o.step(x, np.ones(1))
        assert x - x_new == pytest.approx(expected(n), rel=1e-12)
        x = x_new


# -------------------------------------------------------------------------- errors ----
@pytest.mark.parametrize("name,lr,options,pattern", [
    ("rmsprop", 0.1, {}, r"optimizer\.name"),
    ("sgd", -0.1, {}, r"optimizer\.lr"),
    ("sgd", 0.1, {"momentum": 0.9}, r"optimizer\.momentum"),
    ("momentum", 0.1, {"momentum": 1.0}, r"optimizer\.momentum"),
    ("adam", 0.1, {"betas": (0.9,)}, r"optimizer\.betas"),
    ("adam", 0.1, {"amsgrad": "yes"}, r"optimizer\.amsgrad"),
    ("cg", 0.1, {"rule": "XX"}, r"optimizer\.rule"),
    ("cg", 0.1, {"beta_clip": "low"}, r"optimizer\.beta_clip"),
    ("cg", 0.1, {"per_tensor": True}, r"optimizer\.slices"),
    ("sgd", 0.1, {"lr_schedule": "cosine"}, r"optimizer\.lr_schedule"),
    ("sgd", 0.1, {"lr_schedule": "diminishing", "lr_power": 2.0}, r"optimizer\.lr_power"),
])
def test_make_optimizer_errors(name, lr, options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        opt.make_optimizer(name, lr, **options)


def test_optimizer_from_config_maps_keys():
    section = {"optimizer": "adam", "betas": [0.5, 0.9], "amsgrad": True, "adam_reset": True,
               "momentum": 0.3, "cg_rule": "PRP", "lr_schedule": "inv_sqrt"}
    o = optimizer_from_config(section, 0.01, "critic")
    assert isinstance(o, opt.Adam)
    assert o.betas == (0.5, 0.9) and o.amsgrad and o.reset_each_outer_step
    assert o.lr(o.init()) == pytest.approx(0.01)
    o = optimizer_from_config({**section, "optimizer": "cg", "cg_beta_scale": 0.5}, 0.01,
                                  "generator", slices=[slice(0, 2), slice(2, 5)])
    assert isinstance(o, opt.ConjugateGradient)
    assert o.rule == "PRP" and o.beta_scale == 0.5 and o.per_tensor
    with pytest.raises(ConfigError, match=r"critic\.betas"):
        optimizer_from_config({**section, "betas": [0.5, 1.5]}, 0.01, "critic")
    with pytest.raises(ConfigError, match=r"critic\.optimizer"):
        optimizer_from_config({"optimizer": "lbfgs"}, 0.01, "critic")
    with pytest.raises(ConfigError, match=r"generator\.cg_rule"):
        optimizer_from_config({"optimizer": "cg", "cg_rule": "ZZ"}, 0.01, "generator")
    with pytest.raises(ConfigError, match=r"dynamics\.eta_d"):
        optimizer_from_config({"optimizer": "sgd"}, 0.0, "critic", lr_key="dynamics.eta_d")


# ------------------------------------------------- config keys of both players (--set) ----
def _built(player, *overrides):
    """The optimizer the simulator builds for ``player`` from a config with ``overrides``."""
    from particlegan.model.from_config import generator_optimizer, make_critic_optimizer
    from particlegan.store.config import resolve_config

    cfg = resolve_config(overrides=list(overrides))
    return (make_critic_optimizer(cfg) if player == "critic"
            else generator_optimizer(cfg))


@pytest.mark.parametrize("player", ["critic", "generator"])
@pytest.mark.parametrize("sets,check", [
    (["optimizer=momentum", "momentum=0.3", "nesterov=true"],
     lambda o: isinstance(o, opt.Momentum) and o.momentum == 0.3 and o.nesterov),
    (["optimizer=adam", "betas=[0.5, 0.99]", "amsgrad=true", "adam_eps=1e-6", "adam_reset=true"],
     lambda o: isinstance(o, opt.Adam) and o.betas == (0.5, 0.99) and o.amsgrad
     and o.eps == 1e-6 and o.reset_each_outer_step),
    (["optimizer=cg", "cg_rule=HS_DY", "cg_beta_scale=0.75", "cg_beta_clip=code"],
     lambda o: isinstance(o, opt.ConjugateGradient) and o.rule == "HS_DY"
     and o.beta_scale == 0.75 and o.beta_clip == "code" and not o.per_tensor),
    (["optimizer=sgd", "lr_schedule=diminishing", "lr_power=0.25"],
     lambda o: o.schedule.kind == "diminishing" and o.schedule.power == 0.25),
    (["optimizer=sgd", "lr_schedule=step_decay", "lr_decay=0.5", "lr_every=3"],
     lambda o: o.schedule.kind == "step_decay" and o.schedule(3) == 0.5 * o.schedule(2)),
    (["optimizer=sgd", "lr_schedule=inv"], lambda o: o.schedule(3) == o.schedule(0) / 4),
])
def test_every_optimizer_key_reaches_the_built_optimizer(player, sets, check):
    o = _built(player, *[f"{player}.{s}" for s in sets])
    assert check(o)
    lr_key = "eta_d" if player == "critic" else "eta_g"
    o = _built(player, *[f"{player}.{s}" for s in sets], f"dynamics.{lr_key}=0.125")
    assert o.schedule.lr0 == 0.125


@pytest.mark.parametrize("override,fragment", [
    ("critic.betas=[0.5]", "critic.betas"), ("generator.betas=[0.5, 1.0]", "generator.betas"),
    ("critic.momentum=1.0", "critic.momentum"), ("generator.cg_rule=ZZ", "generator.cg_rule"),
    ("critic.cg_beta_clip=both", "critic.cg_beta_clip"), ("critic.lr_power=0", "critic.lr_power"),
    ("generator.lr_decay=1.5", "generator.lr_decay"), ("critic.lr_every=0", "critic.lr_every"),
    ("generator.adam_eps=0", "generator.adam_eps"), ("critic.nesterov=1", "critic.nesterov"),
    ("critic.lr_schedule=cosine", "critic.lr_schedule"),
])
def test_bad_optimizer_keys_are_one_line_config_errors(override, fragment):
    from particlegan.store.config import resolve_config

    with pytest.raises(ConfigError) as err:
        resolve_config(overrides=[override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_config_choices_match_the_optimizers_module():
    from particlegan.store.config import SCHEMA

    for player in ("critic", "generator"):
        assert SCHEMA[player]["optimizer"].choices == opt.OPTIMIZERS
        assert SCHEMA[player]["cg_rule"].choices == opt.CG_RULES
        assert SCHEMA[player]["cg_beta_clip"].choices == opt.CG_BETA_CLIPS
        assert SCHEMA[player]["lr_schedule"].choices == opt.LR_SCHEDULES


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "cg"])
def test_default_keys_give_the_plain_make_optimizer_trajectory(name):
    """The critic optimizer built from the default config keys is make_optimizer(name, eta_d):
    the particle model's default runs are unchanged by the config route (bitwise)."""
    a = _Run(_built("critic", f"critic.optimizer={name}"))
    b = _make(name, 0.01)
    rng = np.random.default_rng(0)
    xa = xb = rng.standard_normal(7)
    for _ in range(5):
        g = rng.standard_normal(7)
        xa, xb = a.step(xa, g, maximize=True), b.step(xb, g, maximize=True)
    assert xa.tobytes() == xb.tobytes()


def test_particle_critic_uses_the_configured_optimizer():
    """critic.* keys change a particle-model run (the critic optimizer is actually used)."""
    from particlegan.store.config import resolve_config
    from particlegan.engine.simulate import simulate

    tiny = ["particles.n=16", "run.steps=5", "target.n_samples=100", "critic.features=32",
            "dynamics.critic_steps_startup=3", "observables.mmd_samples=50"]
    base = simulate(resolve_config(overrides=tiny)).final_state
    mom_run = simulate(resolve_config(overrides=tiny + ["critic.optimizer=momentum"]))
    mom = mom_run.final_state
    sched = simulate(resolve_config(overrides=tiny + ["critic.lr_schedule=inv"])).final_state
    assert isinstance(mom_run.model.critic_optimizer, opt.Momentum) and mom.critic_opt.m is not None
    assert not np.array_equal(base.w, mom.w) and not np.array_equal(base.w, sched.w)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,options", [("sgd", {}), ("momentum", {"nesterov": True}),
                                          ("adam", {"amsgrad": True}), ("adam", {"reset_each_outer_step": True})])
def test_update_members_is_each_row_stepped_alone(name, options, dtype):
    """An ensemble's optimizer steps row b exactly as an optimizer of its own with rate lrs[b]."""
    from particlegan.model.optimizers import make_optimizer

    rng = np.random.default_rng(3)
    lrs = np.array([0.1, 0.013, 0.7])
    x = rng.standard_normal((3, 11)).astype(dtype)
    group = make_optimizer(name, 1.0, **options)
    group_state = group.init()
    alone = [_Run(make_optimizer(name, float(lr), **options)) for lr in lrs]
    rows = [x[b].copy() for b in range(3)]
    for step in range(4):
        g = rng.standard_normal((3, 11)).astype(dtype)
        if step == 2:
            group_state = group.begin_outer_step(group_state)
            for o in alone:
                o.state = o.rule.begin_outer_step(o.state)
        x, group_state = group.update_members(group_state, x, g, lrs, maximize=step % 2 == 1)
        rows = [o.step(r, g[b], maximize=step % 2 == 1) for b, (o, r) in enumerate(zip(alone, rows))]
        assert x.dtype == dtype
        for b in range(3):
            np.testing.assert_array_equal(x[b], rows[b])


def test_update_members_refuses_cg_and_bad_shapes():
    from particlegan.model.optimizers import make_optimizer

    with pytest.raises(ValueError, match="cannot step ensemble members"):
        make_optimizer("cg", 0.1).update_members(opt.OptState(), np.zeros((2, 3)), np.zeros((2, 3)), [0.1, 0.1])
    with pytest.raises(ValueError, match="learning rates"):
        make_optimizer("sgd", 0.1).update_members(opt.OptState(), np.zeros((2, 3)), np.zeros((2, 3)), [0.1])
    with pytest.raises(ValueError, match=r"\(B, P\)"):
        make_optimizer("sgd", 0.1).update_members(opt.OptState(), np.zeros(3), np.zeros(3), [0.1])
