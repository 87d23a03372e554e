"""Critic objects of the particle engine: one interface for every critic type, the MLP critic
on particles (gradients against finite differences, layer widths, fit of the ring)."""
import dataclasses

import numpy as np
import pytest

from particlegan.engine import dynamics as dyn
from particlegan.model import particle_critics as pc
from particlegan.model.from_config import critic_layer_sizes
from particlegan.store.config import resolve_config
from particlegan.model.critics import FEATURE_CRITICS, KERNEL_CRITICS

TINY = ["particles.n=24", "target.n_samples=48", "critic.features=32", "dynamics.critic_steps_startup=2",
        "observables.mmd_samples=32", "critic.width=16", "critic.depth=2"]
ALL_TYPES = [*FEATURE_CRITICS, *KERNEL_CRITICS, "learned_features", "mlp"]


def tiny(*extra, seed=0):
    return resolve_config(overrides=TINY + list(extra), seed=seed)


@pytest.mark.parametrize("ctype", ALL_TYPES)
def test_every_critic_type_runs_through_the_one_engine(ctype):
    extra = ['loss.penalty="none"'] if ctype in (*KERNEL_CRITICS, "learned_features") else []
    model, state = dyn.build_model(tiny(f"critic.type={ctype}", *extra))
    assert model.critic.trainable == (ctype not in KERNEL_CRITICS)
    for _ in range(2):
        state, grad = dyn.outer_step(model, state)
    assert grad.shape == state.x.shape and np.all(np.isfinite(state.x))


def test_mlp_critic_layers_follow_widths_or_width_and_depth():
    assert critic_layer_sizes(tiny("critic.widths=[64, 1024, 64]")) == [2, 64, 1024, 64, 1]
    assert critic_layer_sizes(tiny()) == [2, 16, 16, 1]
    model, _ = dyn.build_model(tiny("critic.type=mlp", "critic.widths=[8, 32, 8]"))
    assert [model.critic.net.weight(k).shape for k in range(4)] in (
        [(8, 2), (32, 8), (8, 32), (1, 8)], [(2, 8), (8, 32), (32, 8), (8, 1)])


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh"])
@pytest.mark.parametrize("penalty", ["none", "fake", "real", "interpolates"])
def test_mlp_critic_parameter_gradient_matches_finite_differences(activation, penalty):
    from particlegan.model.particle_critics import mlp_critic_objective

    cfg = tiny("critic.type=mlp", f"critic.activation={activation}", f"loss.penalty=\"{penalty}\"",
               "loss.penalty_weight=0.5", "critic.weight_decay=0.01", "critic.widths=[5, 4]")
    model, state = dyn.build_model(cfg)
    c, L = model.critic, model.critic.loss
    rng = np.random.default_rng(1)
    xhat = rng.normal(size=state.x.shape) * 0.3

    def J(w):
        return mlp_critic_objective(c.net.with_theta(w), L.y, state.x, L.objective, L.penalty, L.lam, xhat,
                                    L.weight_decay)

    _, grad = J(state.w)
    h = 1e-6
    idx = rng.choice(len(state.w), size=min(25, len(state.w)), replace=False)
    fd = [(J(state.w + h * e)[0] - J(state.w - h * e)[0]) / (2 * h) for e in np.eye(len(state.w))[idx]]
    np.testing.assert_allclose(grad[idx], fd, rtol=2e-5, atol=1e-8)


@pytest.mark.parametrize("penalty", ["none", "fake", "real", "interpolates"])
def test_mlp_critic_gradient_with_dropout_and_no_output_bias_matches_finite_differences(penalty):
    """With the dropout masks of one critic step held fixed (as autograd sees them), dJ/dphi of
    the fused pass (objective + penalty on the same rows and masks) against central FD."""
    from particlegan.maths import nn

    cfg = tiny("critic.type=mlp", "critic.activation=tanh", f"loss.penalty=\"{penalty}\"", "loss.penalty_weight=0.5",
               "critic.widths=[5, 6, 4]", "critic.dropout=[0, 0.4, 0.2]", "critic.output_bias=false",
               "critic.weight_decay=0.01")
    model, state = dyn.build_model(cfg)
    c, L = model.critic, model.critic.loss
    assert c.net.bias_vector(3) is None
    rng = np.random.default_rng(2)
    masks = nn.dropout_masks(c.net, len(L.y) + len(state.x), c.dropout, rng)
    xhat = rng.normal(size=state.x.shape) * 0.3
    xmasks = nn.dropout_masks(c.net, len(xhat), c.dropout, rng)

    def J(w):
        return pc.mlp_critic_objective(c.net.with_theta(w), L.y, state.x, L.objective, L.penalty, L.lam, xhat,
                                       L.weight_decay, masks, xmasks)

    _, grad = J(state.w)
    h = 1e-6
    idx = rng.choice(len(state.w), size=25, replace=False)
    fd = [(J(state.w + h * e)[0] - J(state.w - h * e)[0]) / (2 * h) for e in np.eye(len(state.w))[idx]]
    np.testing.assert_allclose(grad[idx], fd, rtol=2e-5, atol=1e-8)


def test_mlp_critic_steps_draw_fresh_dropout_masks_and_forces_use_none():
    from particlegan.maths import nn

    model, state = dyn.build_model(tiny("critic.type=mlp", "critic.widths=[6, 6]", "critic.dropout=[0.5, 0]"))
    assert model.critic.draws_noise
    rng = np.random.default_rng(0)
    g1 = model.critic.objective_grad(state.w, state.x, None, rng)
    g2 = model.critic.objective_grad(state.w, state.x, None, rng)
    assert not np.array_equal(g1, g2)  # a new mask per step
    values, grads = model.critic.values_and_grads(state, None, True)
    v_ref, g_ref = nn.critic_values_and_input_grads(model.critic.net.with_theta(state.w), state.x)
    np.testing.assert_array_equal(grads, g_ref)
    np.testing.assert_array_equal(values, v_ref)


def test_mlp_critic_input_gradients_drive_the_particles_and_match_finite_differences():
    model, state = dyn.build_model(tiny("critic.type=mlp", "critic.activation=tanh"))
    values, grads = model.critic.values_and_grads(state, None, True)
    h = 1e-6
    for i in range(3):
        for k in range(2):
            e = np.zeros_like(state.x)
            e[i, k] = h
            up = model.critic.values_and_grads(dataclasses.replace(state, x=state.x + e), None, True)[0]
            dn = model.critic.values_and_grads(dataclasses.replace(state, x=state.x - e), None, True)[0]
            assert abs((up[i] - dn[i]) / (2 * h) - grads[i, k]) < 1e-6
    forces, g = dyn.particle_forces(model, state)
    np.testing.assert_array_equal(forces, grads)  # the IPM objective: F = grad f


@pytest.mark.trajectory
def test_particles_against_an_mlp_critic_fit_the_ring():
    # measured (seeds 0-2, 300 steps): 8/8 modes covered, MMD^2 0.03-0.05 from 0.73 at the start;
    # bounds: a seed mean of at least 6 modes and MMD^2 below a third of the start
    from particlegan.engine.simulate import simulate

    modes, mmd_end, mmd_start = [], [], []
    for seed in range(3):
        cfg = resolve_config(overrides=["critic.type=mlp", "critic.width=64", "critic.depth=2",
                                        "critic.optimizer=adam", "dynamics.eta_d=1e-3", "particles.n=128",
                                        "target.n_samples=512", "run.steps=300", "observables.mmd_samples=256"],
                             seed=seed)
        res = simulate(cfg)
        assert res.status == "ok"
        modes.append(res.series["modes_covered"][-1])
        mmd_end.append(res.series["mmd2"][-1])
        mmd_start.append(res.series["mmd2"][0])
    assert np.mean(modes) >= 6
    assert np.mean(mmd_end) < np.mean(mmd_start) / 3


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "cg"])
@pytest.mark.parametrize("model_type", ["particle", "neural"])
def test_outer_step_leaves_its_input_state_unchanged(optimizer, model_type):
    # the optimizers' moments used to live in the state object and be stepped in place, so a
    # second call on the same state gave another result
    extra = [f"critic.optimizer={optimizer}", f"model.type={model_type}"]
    if model_type == "neural":
        extra += ["generator.optimizer=adam", "generator.width=8"]
    cfg = tiny("critic.type=mlp", *extra)
    model, state = dyn.build_model(cfg)
    state, _ = dyn.outer_step(model, state)  # moments are non-zero from here on
    a, _ = dyn.outer_step(model, state)
    b, _ = dyn.outer_step(model, state)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.w, b.w)
    if model_type == "neural":
        np.testing.assert_array_equal(a.gen.theta, b.gen.theta)
        assert a.gen.opt.count == b.gen.opt.count == state.gen.opt.count + 1
    c, _ = dyn.outer_step(model, a)  # and the chain continues from the returned state
    assert c.step == a.step + 1


@pytest.mark.parametrize("model_type", ["particle", "neural"])
@pytest.mark.parametrize("noise", [["loss.penalty=interpolates"], ["critic.dropout=[0.3, 0]"]])
def test_outer_step_is_pure_with_noise_drawn_in_the_step(model_type, noise):
    """Interpolates, dropout masks and fresh latents draw from streams in the state: two calls
    on one state agree bitwise, the input's streams are not advanced, the output's are."""
    extra = ["critic.type=mlp", f"model.type={model_type}", *noise]
    if model_type == "neural":
        extra += ["generator.width=8", "generator.fresh_latents=true"]
    model, state = dyn.build_model(tiny(*extra))
    before = state.noise.bit_generator.state
    a, _ = dyn.outer_step(model, state)
    b, _ = dyn.outer_step(model, state)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.w, b.w)
    assert state.noise.bit_generator.state == before != a.noise.bit_generator.state
    if model_type == "neural":
        assert not np.array_equal(a.gen.z, state.gen.z)  # a fresh minibatch, drawn from a copy
        assert a.gen.latents.bit_generator.state != state.gen.latents.bit_generator.state
    c, _ = dyn.outer_step(model, a)  # the next step draws new noise
    assert not np.array_equal(c.w, dyn.outer_step(model, dataclasses.replace(a, noise=state.noise))[0].w)


@pytest.mark.parametrize("critic", ["mlp", "rff", "kernel"])
@pytest.mark.parametrize("model_type", ["particle", "neural"])
def test_outer_step_reads_no_config(critic, model_type):
    """The step uses only what was fixed at build time: with the model's config dict emptied
    the step is bitwise the one of the full model (fresh latents on the neural side)."""
    extra = [f"critic.type={critic}", f"model.type={model_type}", "dynamics.update=simultaneous"]
    if critic == "kernel":
        extra += ["loss.penalty=none", "critic.memory=2"]
    if model_type == "neural":
        extra += ["generator.width=8", "generator.fresh_latents=true"]
    model, state = dyn.build_model(tiny(*extra))
    a, ga = dyn.outer_step(model, state)
    model2, state2 = dyn.build_model(tiny(*extra))  # fresh noise / latent streams, same seeds
    b, gb = dyn.outer_step(dataclasses.replace(model2, cfg={}), state2)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(ga, gb)


# ------------------------------------------------------ fused critic steps (cpu backend) --
def _critic_and_state(*extra):
    cfg = tiny("run.backend=cpu", "dynamics.critic_steps_startup=3", *extra, seed=2)
    model, state = dyn.build_model(cfg, dyn.seed_streams(2))
    return model, state


def _both_loops(model, state, n_steps, calls=2):
    """The backend's one-call loop and the engine's Python loop from the same state, ``calls``
    times in a row (moments carried over); returns ((w, finite, opt_state), (w, finite, opt_state))."""
    from particlegan.model import critics as cr

    critic, opt = model.critic, model.critic_optimizer
    ctx = critic.prepare(state.x)
    out = []
    for fused in (True, False):
        opt_state, w, finite = state.critic_opt, state.w, True
        for _ in range(calls):
            opt_state = opt.begin_outer_step(opt_state)
            if fused:
                w, ok, opt_state = critic.fused_ascent(opt, opt_state, w, ctx,
                                                       cr.step_rates([opt.schedule], opt_state.count, n_steps))
            else:
                w, ok, opt_state = cr.ascend_critic(opt, opt_state, w, n_steps,
                                                    lambda v: critic.objective_grad(v, state.x, ctx))
            finite = finite and ok
        out.append((w, finite, opt_state))
    return out


def _same_states(a, b):
    return all((x is None and y is None) or (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y)
               for x, y in zip(vars(a).values(), vars(b).values()))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("ctype", FEATURE_CRITICS)
@pytest.mark.parametrize("penalty", ["none", "fake", "real"])
@pytest.mark.parametrize("opt", [["critic.optimizer=sgd"], ["critic.optimizer=momentum"],
                                 ["critic.optimizer=momentum", "critic.nesterov=true", "critic.weight_decay=0.05"],
                                 ["critic.optimizer=adam"],
                                 ["critic.optimizer=adam", "critic.amsgrad=true", "critic.adam_reset=true",
                                  "critic.weight_decay=0.01"],
                                 ["critic.optimizer=sgd", "loss.penalty_weight=0", "critic.lr_schedule=inv_sqrt"]])
def test_fused_critic_steps_are_bitwise_the_engine_loop(dtype, ctype, penalty, opt):
    """The cpu backend's one-call critic loop computes, op by op, what the engine's loop over
    objective_grad and the optimizer computes: same weights and optimizer state, bitwise."""
    model, state = _critic_and_state(f"run.dtype={dtype}", f"critic.type={ctype}", f"loss.penalty={penalty}", *opt)
    (w1, f1, s1), (w2, f2, s2) = _both_loops(model, state, n_steps=4)
    assert f1 and f2 and w1.dtype == w2.dtype == np.dtype(dtype)
    assert np.array_equal(w1, w2) and not np.array_equal(w1, state.w)
    assert _same_states(s1, s2) and s1.count == state.critic_opt.count + 8


@pytest.mark.parametrize("opt", ["sgd", "momentum"])  # (Adam's normalised steps stay finite)
def test_fused_critic_steps_stop_at_the_first_non_finite_step_like_the_loop(opt):
    model, state = _critic_and_state(f"critic.optimizer={opt}", "dynamics.eta_d=1e300")
    with np.errstate(over="ignore", invalid="ignore"):  # the loops run into inf on purpose
        (w1, f1, s1), (w2, f2, s2) = _both_loops(model, state, n_steps=5, calls=1)
    assert not f1 and not f2
    assert np.all(np.isfinite(w1)) and np.array_equal(w1, w2)  # the last finite weights
    assert s1.count == s2.count < state.critic_opt.count + 5


@pytest.mark.parametrize("extra", [["run.backend=numpy"], ["run.backend=cpu", "loss.penalty=interpolates"],
                                   ["run.backend=cpu", "critic.optimizer=cg"]])
def test_fused_critic_steps_are_declined_where_the_loop_does_not_exist(extra):
    from particlegan.model import critics as cr

    cfg = tiny(*extra)
    model, state = dyn.build_model(cfg, dyn.seed_streams(0))
    opt = model.critic_optimizer
    rates = cr.step_rates([opt.schedule], state.critic_opt.count, 3)
    assert model.critic.fused_ascent(opt, state.critic_opt, state.w, model.critic.prepare(state.x), rates) is None


# ------------------------------------------- the MNIST setting against an independent torch run --
def _usd_descent_in_torch(theta_layers, x0, y, C, *, steps, n_c, n_c_startup, lr_d, lr_q, wd, lam):
    """The paper's MNIST loop (IBM/USD's unbalanced descent, alpha = rho = 0, no dropout)
    transcribed with torch autograd and torch.optim.Adam: the critic maximises
    E_y f - E_x f - lam mean_i ||d/dx_i E_x f||^2 with Adam(amsgrad, weight decay) re-created every
    critic block; then x <- x + lr_q C grad f(x). ``theta_layers``: [(W_k, b_k or None)], float64.

    Block order as particlegan's engine: ``n_c_startup`` critic steps, then every outer step
    ``n_c`` critic steps and one particle step (USD's first outer step runs its ``n_c_startup``
    steps instead of, not before, its ``n_c``; see sims/mnist/results.md)."""
    torch = pytest.importorskip("torch")
    layers = []
    for k, (W, b) in enumerate(theta_layers):
        lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            if b is not None:
                lin.bias.copy_(torch.from_numpy(b))
        layers += [lin] if k == len(theta_layers) - 1 else [lin, torch.nn.ReLU()]
    D = torch.nn.Sequential(*layers)
    x, yt, Ct = (torch.from_numpy(np.array(a, dtype=np.float64)) for a in (x0, y, C))

    def critic_block(n_steps):
        opt = torch.optim.Adam(D.parameters(), lr=lr_d, weight_decay=wd, amsgrad=True)
        for _ in range(n_steps):
            opt.zero_grad()
            xq = x.clone().requires_grad_(True)
            eq = D(xq).mean()
            g = torch.autograd.grad(eq, xq, create_graph=True)[0]
            loss = -(D(yt).mean() - eq - lam * (g ** 2).sum(1).mean())
            loss.backward()
            opt.step()

    critic_block(n_c_startup)
    for _ in range(steps):
        critic_block(n_c)
        xq = x.clone().requires_grad_(True)
        g = torch.autograd.grad(D(xq).sum(), xq)[0]
        x = (x + lr_q * Ct @ g).detach()
    return x.numpy()


@pytest.mark.parametrize("phi", [0.0, 0.5])
def test_mlp_critic_particle_run_matches_an_independent_torch_run_of_the_mnist_setting(phi):
    """sims/mnist's settings (USD penalty convention, Adam amsgrad re-created each outer step with
    coupled weight decay, no output bias, spectral coupling) at a small size, float64, dropout
    off (the two RNGs differ): the particles after 3 outer steps agree with a torch autograd run
    from the same initial weights and particles to ~1e-9 relative (float64 rounding only)."""
    n, d, lr_d, lr_q = 12, 10, 1e-2, 0.5
    cfg = resolve_config(overrides=[
        "target.kind=ring", f"particles.n={n}", "target.n_samples=16", f"target.dim={d}",
        "critic.type=mlp", "critic.widths=[6, 20, 6]", "critic.activation=relu",
        "critic.output_bias=false", "critic.optimizer=adam", "critic.amsgrad=true", "critic.adam_reset=true",
        "critic.weight_decay=1e-2", "loss.kind=ipm", "loss.penalty=fake", "loss.penalty_weight=1.25",
        "loss.penalty_form=mean_grad", f"dynamics.eta_g={lr_q}", f"dynamics.eta_d={lr_d}",
        "dynamics.critic_steps=4", "dynamics.critic_steps_startup=7", "generator.kernel=universal",
        f"generator.phi={phi}", "generator.normalization=spectral", "run.dtype=float64"], seed=3)
    model, state = dyn.build_model(cfg, startup=False)
    net = model.critic.net.with_theta(state.w)
    layers = [(net.weight(k).copy(), None if net.bias_vector(k) is None else net.bias_vector(k).copy())
              for k in range(net.n_layers)]
    x0 = state.x.copy()
    state = dyn.train_critic(model, state, 7)
    for _ in range(3):
        state, _ = dyn.outer_step(model, state)
    C = ((1 - phi) * np.eye(n) + phi) / (1 + (n - 1) * phi)
    ref = _usd_descent_in_torch(layers, x0, model.y, C, steps=3, n_c=4, n_c_startup=7, lr_d=lr_d,
                                lr_q=lr_q, wd=1e-2, lam=1.25)
    moved = np.abs(ref - x0).max()
    assert moved > 1e-3  # the particles moved: the comparison is not of x0 with itself
    np.testing.assert_allclose(state.x, ref, rtol=0, atol=1e-9 * np.abs(ref).max())
