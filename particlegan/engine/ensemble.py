"""Batched ensembles: B runs of the same shapes advanced as one vectorised program (sweeps).

The particle engine's state gains a leading ensemble axis: particles x (B, N, d), critic
weights w (B, K), the critic optimizer state's moments (B, K). One :func:`ensemble_outer_step`
advances every member with the critic object of :mod:`particlegan.model.particle_critics`
built over stacked arrays (feature directions (B, K, d), per-member penalty weights, ...) and
the backend ops in their ensemble form (:func:`particlegan.backends.members`: on the cpu backend
one parallel numba program over (member, row group) work items; on cuda the feature kernels
launched once over the member axis, the host-side GEMMs looped; on numpy the members looped).
Each member is computed with the same code, in the same order, as its own run, so its result
is bitwise the result of :func:`particlegan.engine.simulate.simulate` (tested over mixed
grids); the Python and dispatch overhead of one outer step is paid once per group instead of
once per run. On the cpu backend the critic steps of every member run in one numba call
(:meth:`particlegan.model.particle_critics.FeatureCritic.fused_ascent`), as they do in a single
run.

What may differ between the members of one group: the keys of :data:`ENSEMBLE_VARYING`
(seed, phi, g1, g2, eta_G, eta_D, penalty weight, critic weight decay and width, target and
initialisation scales, observable widths); every other key is shared
(:func:`ensemble_key`). What can run in an ensemble (:func:`ensemble_refusal`): the particle
model with a random-feature critic (rff / relu_features), the IPM objective, a gradient
penalty other than ``interpolates``, an element-wise critic optimizer (sgd, momentum, adam),
no learning-rate schedule; any generator coupling, both update orders, both dtypes. Other runs
go unbatched.

Recording, divergence and the final row are the single run's
(:class:`particlegan.engine.simulate.RunRecorder`, one per member). A member that diverges is
frozen at its last good state (its rows of the batch are reset to it every step, so its
numbers stay harmless) while the others go on. Ensembles write no checkpoints: a killed group
restarts its unfinished members (a sweep's resume works per run directory, as before).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from particlegan.backends import members
from particlegan.engine import dynamics as dyn
from particlegan.model import critics as cr
from particlegan.model.coupling import Coupling, apply_coupling_members
from particlegan.model.optimizers import Optimizer, OptState
from particlegan.model.particle_critics import CriticLoss, FeatureCritic
from particlegan.progress import Reporter, null_reporter

#: config keys whose values may differ between the members of one ensemble
ENSEMBLE_VARYING = (("run", "seed"), ("generator", "phi"), ("generator", "g1"), ("generator", "g2"),
                    ("dynamics", "eta_g"), ("dynamics", "eta_d"), ("loss", "penalty_weight"),
                    ("critic", "weight_decay"), ("critic", "sigma"), ("target", "radius"),
                    ("target", "sigma"), ("target", "grid_spacing"), ("particles", "init_sigma"),
                    ("run", "divergence_bound"), ("observables", "mmd_sigma"), ("observables", "hq_sigmas"))


def ensemble_refusal(cfg: dict) -> str | None:
    """Why the resolved config ``cfg`` cannot run as an ensemble member (one line), or None."""
    from particlegan.model.from_config import objective_from_config

    if cfg["model"]["type"] != "particle":
        return "model.type is not 'particle'"
    if cfg["critic"]["type"] not in cr.FEATURE_CRITICS:
        return f"critic.type = {cfg['critic']['type']!r} (ensembles: {', '.join(cr.FEATURE_CRITICS)})"
    if objective_from_config(cfg["loss"]).name != "ipm":
        return "the loss is not the IPM objective"
    if cfg["loss"]["penalty"] == "interpolates":
        return "loss.penalty = 'interpolates' draws noise every critic step"
    if cfg["critic"]["optimizer"] == "cg":
        return "critic.optimizer = 'cg' couples the weights through dot products"
    if cfg["schedule"]["kind"] != "none":
        return "schedule.kind is not 'none'"
    return None


def ensemble_key(cfg: dict) -> str | None:
    """Runs with the same key can share an ensemble: their configs agree except on
    :data:`ENSEMBLE_VARYING`. None when the run cannot be an ensemble member."""
    from particlegan.store.config import canonical_json

    if ensemble_refusal(cfg) is not None:
        return None
    shared = {sec: dict(table) for sec, table in cfg.items()}
    for sec, key in ENSEMBLE_VARYING:
        shared[sec][key] = None
    return canonical_json(shared)


@dataclass(frozen=True)
class EnsembleModel:
    """Everything fixed during an ensemble's run: the members' own models (for recording and
    the final rows) and the stacked arrays of the batched step.

    Attributes
    ----------
    models : the B members' :class:`particlegan.engine.dynamics.Model`.
    critic : a :class:`particlegan.model.particle_critics.FeatureCritic` over stacked arrays
        (directions (B, K, d), offsets (B, K), target feature means (B, K), per-member penalty
        weights and weight decays (B,)) with the backend's ensemble ops.
    critic_optimizer : the members' critic optimizer rule (they agree but on the learning rate,
        which ``schedules`` carries per member).
    couplings : the members' couplings (applied together by
        :func:`particlegan.model.coupling.apply_coupling_members`).  eta_g : (B,) particle step
        sizes.  schedules : the members' critic learning-rate rules.  critic_steps, update :
        shared step constants.
    """

    models: tuple
    critic: FeatureCritic
    critic_optimizer: Optimizer
    couplings: tuple[Coupling, ...]
    eta_g: np.ndarray
    schedules: tuple
    critic_steps: int
    update: str
    dtype: np.dtype


@dataclass(frozen=True)
class EnsembleState:
    """Evolving state of an ensemble: step, x (B, N, d), w (B, K), the critic optimizer's state
    with (B, K) moments, and critic_finite (B,) (False once a member's critic step was not finite)."""

    step: int
    x: np.ndarray
    w: np.ndarray
    critic_opt: OptState
    critic_finite: np.ndarray


def _stacked_opt_state(states) -> OptState:
    """One optimizer state holding the members' moments stacked (B, K): their counters agree
    (they stepped in lockstep) and their arrays are stacked."""
    merged = {}
    for f in dataclasses.fields(OptState):
        values = [getattr(s, f.name) for s in states]
        if isinstance(values[0], np.ndarray):
            merged[f.name] = np.stack(values)
        else:
            if any(v != values[0] for v in values):
                raise ValueError(f"ensemble members' critic optimizers disagree on {f.name!r}")
            merged[f.name] = values[0]
    return OptState(**merged)


def build_ensemble(cfgs: list[dict]):
    """Build every member as its own run would (:func:`particlegan.engine.dynamics.build_model`),
    stack them, and run the members' start-up critic steps together (bitwise each member's own).

    Returns
    -------
    (EnsembleModel, EnsembleState, list of the members' (Model, observables stream))
    """
    keys = {ensemble_key(c) for c in cfgs}
    if None in keys or len(keys) != 1:
        why = next((ensemble_refusal(c) for c in cfgs if ensemble_refusal(c)), None)
        raise ValueError(f"these runs cannot share an ensemble: {why or 'their configs differ beyond ENSEMBLE_VARYING'}")
    built = []
    for cfg in cfgs:
        streams = dyn.seed_streams(cfg["run"]["seed"])
        model, state = dyn.build_model(cfg, streams, startup=False)
        built.append((model, state, streams["observables"]))
    models = tuple(m for m, _, _ in built)
    states = [s for _, s, _ in built]
    first = models[0].critic
    fmap = cr.FeatureMap(A=np.stack([m.critic.feature_map.A for m in models]),
                         b=np.stack([m.critic.feature_map.b for m in models]),
                         activation=first.feature_map.activation, scale=first.feature_map.scale)
    reals = [m.critic.real for m in models]
    kept = [r.dpsi for r in reals if r.dpsi is not None]
    # a member with penalty weight 0 keeps no target dpsi: zeros stand in (its coefficient is 0)
    real = cr.FeatureBatch(None, np.stack([r.dpsi if r.dpsi is not None else np.zeros_like(kept[0])
                                           for r in reals]) if kept else None,
                           np.stack([r.mean_psi for r in reals]))
    loss = CriticLoss(None, first.loss.objective, first.loss.penalty,
                      np.array([m.critic.loss.lam for m in models]),
                      np.array([m.critic.loss.weight_decay for m in models]))
    critic = FeatureCritic(fmap, real, loss, members(first.backend))
    em = EnsembleModel(models=models, critic=critic, critic_optimizer=models[0].critic_optimizer,
                       couplings=tuple(m.generator.coupling for m in models),
                       eta_g=np.array([m.generator.eta_g for m in models]),
                       schedules=tuple(m.critic_optimizer.schedule for m in models),
                       critic_steps=models[0].params.critic_steps, update=models[0].params.update,
                       dtype=models[0].dtype)
    es = EnsembleState(step=0, x=np.stack([s.x for s in states]), w=np.stack([s.w for s in states]),
                       critic_opt=_stacked_opt_state([s.critic_opt for s in states]),
                       critic_finite=np.array([s.critic_finite for s in states]))
    # a member may diverge here (it is then recorded as diverged at step 0): unwarned, as in the steps
    with np.errstate(over="ignore", invalid="ignore"):
        es = train_ensemble_critic(em, es, em.critic.prepare(es.x), cfgs[0]["dynamics"]["critic_steps_startup"])
    return em, es, [(m, rng) for m, _, rng in built]


def train_ensemble_critic(em: EnsembleModel, es: EnsembleState, ctx, n_steps: int | None = None) -> EnsembleState:
    """``n_steps`` (default ``em.critic_steps``) critic steps of every member, particles frozen
    (the ensemble form of :func:`particlegan.engine.dynamics.train_critic`; learning rates from
    each member's rule). A member whose step is not finite keeps its last finite weights and is
    marked (it is then stopped as diverged, as its own run would be)."""
    n_steps = em.critic_steps if n_steps is None else n_steps
    if n_steps == 0:
        return es
    opt = em.critic_optimizer
    opt_state = opt.begin_outer_step(es.critic_opt)
    out = em.critic.fused_ascent(opt, opt_state, es.w, ctx, cr.step_rates(em.schedules, opt_state.count, n_steps))
    if out is not None:  # the backend's one-call loop (cpu)
        return dataclasses.replace(es, w=out[0], critic_opt=out[2], critic_finite=es.critic_finite & out[1])
    w, finite = es.w, es.critic_finite.copy()
    for _ in range(n_steps):
        lrs = [s(opt_state.count) for s in em.schedules]
        w_new, opt_state = opt.update_members(opt_state, w, em.critic.objective_grad(w, es.x, ctx), lrs, maximize=True)
        ok = np.isfinite(w_new).all(axis=1)
        w = w_new if ok.all() else np.where(ok[:, None], w_new, w)
        finite &= ok
    return dataclasses.replace(es, w=w, critic_opt=opt_state, critic_finite=finite)


def ensemble_forces(em: EnsembleModel, es: EnsembleState, ctx) -> np.ndarray:
    """Critic gradients grad f_m(x_i) (B, N, d) = the particle forces of the IPM objective."""
    return em.critic.values_and_grads(es, ctx, False)[1]


def ensemble_outer_step(em: EnsembleModel, es: EnsembleState):
    """One outer step of every member (the ensemble form of
    :func:`particlegan.engine.dynamics.outer_step`). Returns (new state, critic gradients
    (B, N, d) at es.x)."""
    ctx = em.critic.prepare(es.x)
    if em.update == "simultaneous":
        grad = ensemble_forces(em, es, ctx)
        es = train_ensemble_critic(em, es, ctx)
    else:
        es = train_ensemble_critic(em, es, ctx)
        grad = ensemble_forces(em, es, ctx)
    moved = apply_coupling_members(em.couplings, grad, em.models[0].backend)
    x_new = es.x + cr.member_constant(em.eta_g, es.x) * moved
    return dataclasses.replace(es, step=es.step + 1, x=x_new.astype(em.dtype, copy=False)), grad


def _member_state(es: EnsembleState, m: int, x=None, w=None) -> dyn.State:
    """Member m of ``es`` as a single run's state (views unless ``x`` / ``w`` are given)."""
    return dyn.State(step=es.step, x=es.x[m] if x is None else x, w=es.w[m] if w is None else w,
                     kernel_state=None, critic_opt=None, critic_finite=bool(es.critic_finite[m]))


def simulate_ensemble(cfgs: list[dict], reporter: Reporter | None = None) -> list:
    """Run the resolved configs ``cfgs`` (one ensemble: :func:`ensemble_key` equal) as one
    batched program; returns each member's :class:`particlegan.engine.simulate.SimResult`,
    equal to its own :func:`particlegan.engine.simulate.simulate` result (``wall_time``: the
    group's time divided by its size; ``extra["ensemble_size"]``: B)."""
    from particlegan.engine.resources import check_memory
    from particlegan.engine.simulate import RunRecorder, require_resolved

    for cfg in cfgs:
        require_resolved(cfg)
        check_memory(cfg)
    reporter = reporter or null_reporter()
    t0 = time.perf_counter()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    em, es, built = build_ensemble(cfgs)
    recs = [RunRecorder(cfg, model, rng) for cfg, (model, rng) in zip(cfgs, built)]
    n_mem = len(cfgs)
    steps = cfgs[0]["run"]["steps"]
    final: list[dyn.State | None] = [None] * n_mem
    for m in range(n_mem):
        if not dyn.state_is_finite(em.models[m], _member_state(es, m)):  # the start-up critic steps diverged
            recs[m].diverge(0, "non-finite")
            final[m] = _member_state(es, m)
    reporter.start(total=steps, label="ensemble")
    while es.step < steps and any(f is None for f in final):
        for m in range(n_mem):
            if final[m] is None:
                recs[m].before_step(_member_state(es, m))
        # a frozen member's optimizer moments may be non-finite: its step is discarded, unwarned
        with np.errstate(over="ignore", invalid="ignore"):
            new, grad = ensemble_outer_step(em, es)
        new_finite = new.critic_finite & np.isfinite(new.x).all(axis=(1, 2)) & np.isfinite(new.w).all(axis=1)
        x_next, w_next = new.x, new.w
        for m in range(n_mem):
            if final[m] is not None:  # frozen: back to its last good state
                x_next[m], w_next[m] = final[m].x, final[m].w
            elif not recs[m].after_step(_member_state(es, m), new.x[m], grad[m], bool(new_finite[m])):
                final[m] = _member_state(es, m, es.x[m].copy(), es.w[m].copy())
                x_next[m], w_next[m] = final[m].x, final[m].w
        es = dataclasses.replace(new, x=x_next, w=w_next)
        reporter.advance(1)
    reporter.finish()
    wall = time.perf_counter() - t0
    results = []
    for m, (rec, model) in enumerate(zip(recs, em.models)):
        state = final[m] if final[m] is not None else _member_state(es, m, es.x[m].copy(), es.w[m].copy())
        _, grad = dyn.particle_forces(model, state)
        res = rec.result(state, grad, t0, started_at)
        res.wall_time = wall / n_mem
        res.extra["ensemble_size"] = n_mem
        results.append(res)
    return results
