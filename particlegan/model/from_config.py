"""Config to model parts: every function that reads a config section to build a part of the
model lives here, so that the model modules themselves (targets, coupling, critics, losses,
optimizers, generators) take explicit arguments and a newcomer finds in one file which key
builds what. The engine (:func:`particlegan.engine.dynamics.build_model`) composes these; the
config was validated before (:mod:`particlegan.store.config`), so values are trusted here
except where a file is read (data targets, coupling matrices, initial particles).

Sections -> builders: ``target`` :func:`make_target`; ``particles`` :func:`init_particles`;
``generator`` :func:`make_coupling` (particles), :func:`make_generator` /
:func:`generator_optimizer` (the MLP generator), :func:`build_generator` (``model.type``);
``critic`` :func:`build_critic` (every critic type), :func:`make_critic_optimizer`;
``loss`` :func:`objective_from_config`, :func:`penalty_coefficient`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from particlegan.errors import ConfigError, DataError
from particlegan.maths import nn
from particlegan.maths.kernels import KernelSpec, make_kernel
from particlegan.model import critics as cr
from particlegan.model.coupling import Coupling, sample_sphere, universal_top_eigenvalue
from particlegan.model.critics import make_feature_map, target_feature_batch
from particlegan.model.feature_critic import FEATURE_KERNELS, LearnedFeatureCritic
from particlegan.model.generators import MLPGenerator, MLPGeneratorState, ParticleGenerator, draw_latents
from particlegan.model.losses import Objective, make_objective
from particlegan.model.optimizers import OPTIMIZERS, Optimizer, make_optimizer
from particlegan.model.particle_critics import CriticLoss, FeatureCritic, KernelCritic, LearnedCritic, MLPCritic
from particlegan.model.targets import NORMALIZE, Target, grid_centres, ring_centres, sample_mixture
from particlegan.store.storage import load_sample_array, read_idx


# --------------------------------------------------------------------- targets, particles ----
def make_target(tcfg: dict, rng: np.random.Generator) -> Target:
    """Build the target of config section ``target`` (kinds: :mod:`particlegan.model.targets`)."""
    dim = tcfg["dim"]
    if tcfg["kind"] == "ring":
        centres = ring_centres(tcfg["modes"], tcfg["radius"], dim)
    elif tcfg["kind"] == "grid":
        centres = grid_centres(tcfg["grid_size"], tcfg["grid_spacing"], dim)
    else:
        samples = load_data_target(tcfg)
        return Target(samples=samples, centres=samples, sigma=float(tcfg["sigma"]))
    samples = sample_mixture(centres, tcfg["sigma"], tcfg["n_samples"], rng)
    return Target(samples=samples, centres=centres, sigma=float(tcfg["sigma"]))


def load_data_target(tcfg: dict) -> np.ndarray:
    """Samples (M, d) float64 of a ``file`` or ``idx`` target: the rows ``target.indices``
    (default: all rows of a file, the first ``target.n_samples`` images of an IDX file), each
    image flattened, scaled by ``target.normalize``."""
    dim, idx = tcfg["dim"], list(tcfg["indices"])
    if tcfg["kind"] == "idx":
        items = read_idx(tcfg["path"], "target.path", max_items=(max(idx) + 1) if idx else tcfg["n_samples"])
        flat = items.reshape(items.shape[0], -1)
        if flat.shape[1] != dim:
            raise DataError(f"target.path file '{tcfg['path']}' holds items of {' x '.join(map(str, items.shape[1:]))}"
                            f" = {flat.shape[1]} values, but target.dim = {dim}")
        samples = flat.astype(np.float64)
    else:
        samples = load_sample_array(tcfg["path"], "target.path", ncols=dim, min_rows=1)
    if idx:
        if max(idx) >= samples.shape[0]:
            raise DataError(f"target.indices asks for row {max(idx)}, but target.path file '{tcfg['path']}' "
                            f"has {samples.shape[0]} rows")
        samples = samples[idx]
    if samples.shape[0] < 2:
        raise DataError(f"target.path file '{tcfg['path']}': at least 2 target samples are needed, "
                        f"got {samples.shape[0]}")
    return NORMALIZE[tcfg["normalize"]](samples)


def init_particles(pcfg: dict, dim: int, rng: np.random.Generator,
                   target_mean: np.ndarray | None = None) -> np.ndarray:
    """Initial particles x_i(0), shape (N, d): N(0, init_sigma^2 I), N(mean, init_sigma^2 I)
    around ``target_mean`` (d,) for ``init = "target_mean"``, or loaded from a file."""
    n = pcfg["n"]
    if pcfg["init"] == "file":
        x = load_sample_array(pcfg["init_path"], "particles.init_path", ncols=dim)
        if x.shape[0] != n:
            raise DataError(f"particles.init_path file '{pcfg['init_path']}' has {x.shape[0]} rows, "
                            f"expected particles.n = {n}")
        return x
    x = pcfg["init_sigma"] * rng.standard_normal((n, dim))
    if pcfg["init"] == "target_mean":
        if target_mean is None:
            raise ValueError("particles.init = 'target_mean' needs the target mean")
        x += np.asarray(target_mean, dtype=np.float64)
    return x


# ------------------------------------------------------------------------------ coupling ----
def make_coupling(gcfg: dict, n: int, rng: np.random.Generator) -> Coupling:
    """Build the coupling of config section ``generator`` for N = n particles."""
    c = _unnormalised_coupling(gcfg, n, rng)
    norm = gcfg["normalization"]
    if norm == "ntk":
        return replace(c, scale=1.0 / n)
    if norm == "mean":
        return replace(c, collective=1.0 / n)
    if norm == "interpolated":  # relative modes x g1 / (g1 + c g2); centre of mass kept at g1
        cc = float(gcfg["interp_c"])
        return replace(c, scale=c.g1 / (c.g1 + cc * c.g2), collective=(1.0 + cc) / n)
    if norm == "spectral":
        if c.kind in ("universal", "identity"):
            top = universal_top_eigenvalue(c.g1, c.g2, n)
        elif c.dense is not None:
            top = float(np.linalg.eigvalsh(c.dense)[-1])
        else:
            raise ConfigError(f"generator.normalization = 'spectral' needs the kernel held densely: "
                              f"particles.n = {n} exceeds generator.dense_max = {gcfg['dense_max']}")
        if not top > 0:
            raise DataError(f"generator.normalization = 'spectral': the coupling kernel's largest "
                            f"eigenvalue is {top:.3g} (must be > 0)")
        return replace(c, scale=1.0 / top)
    return c


def _unnormalised_coupling(gcfg: dict, n: int, rng: np.random.Generator) -> Coupling:
    """The coupling C = K (scale 1, collective 1) of config section ``generator``."""
    kind = gcfg["kernel"]
    g1 = float(gcfg["g1"])
    if kind == "universal":
        return Coupling(kind, n, 1.0, g1=g1, g2=g1 * float(gcfg["phi"]))
    if kind == "identity":
        return Coupling(kind, n, 1.0, g1=g1, g2=0.0)
    if kind in ("ntk_relu", "ntk_erf"):
        from particlegan.maths.kernels import ntk_matrix

        ntk_kind = kind.split("_")[1]
        z = sample_sphere(n, gcfg["latent_dim"], rng)
        dense = None
        if n <= gcfg["dense_max"]:
            dense = ntk_matrix(z, z, ntk_kind, gcfg["sigma_w"], gcfg["sigma_b"])
        return Coupling(kind, n, 1.0, dense=dense, latents=z, ntk_kind=ntk_kind,
                        sigma_w=float(gcfg["sigma_w"]), sigma_b=float(gcfg["sigma_b"]))
    # user matrix
    path = gcfg["matrix_path"]
    k = load_sample_array(path, "generator.matrix_path")
    if k.shape != (n, n):
        raise DataError(f"generator.matrix_path file '{path}' has shape {k.shape}, expected ({n}, {n})")
    if not np.allclose(k, k.T, rtol=1e-10, atol=1e-12 * np.abs(k).max()):
        raise DataError(f"generator.matrix_path file '{path}' is not symmetric")
    eig_min = np.linalg.eigvalsh(k)[0]
    if eig_min < -1e-8 * max(1.0, np.abs(k).max()):
        raise DataError(f"generator.matrix_path file '{path}' is not positive semi-definite "
                        f"(smallest eigenvalue {eig_min:.3g})")
    return Coupling(kind, n, 1.0, dense=k)


# -------------------------------------------------------------------------------- losses ----
def objective_from_config(lcfg: dict) -> Objective:
    """:func:`make_objective` from config section ``loss``."""
    return make_objective(lcfg["kind"], lcfg["alpha_d"], lcfg["alpha_g"], lcfg["saturating"])


def penalty_coefficient(lcfg: dict, n_points: int | None = None) -> float:
    """Effective lambda multiplying E||grad f||^2: lambda, lambda/2 for 'half_lambda', or
    lambda / n_points^2 for 'mean_grad' (the penalty on the gradient of the batch mean
    (1/n) sum_j f(x_j), whose per-point part is grad f(x_i) / n: IBM/USD's convention).

    n_points : number n of points the penalty is evaluated on (needed for 'mean_grad').
    """
    if lcfg["penalty"] == "none":
        return 0.0
    lam = float(lcfg["penalty_weight"])
    form = lcfg["penalty_form"]
    if form == "mean_grad":
        if n_points is None:
            raise ValueError("penalty_form 'mean_grad' needs the number of penalty points")
        return lam / float(n_points) ** 2
    return 0.5 * lam if form == "half_lambda" else lam


def run_penalty_coefficient(cfg: dict, n_targets: int) -> float:
    """:func:`penalty_coefficient` of a run: the penalty points are the M = ``n_targets`` target
    samples for ``loss.penalty = 'real'``, else the N = ``particles.n`` particles (or their
    interpolates)."""
    n = n_targets if cfg["loss"]["penalty"] == "real" else cfg["particles"]["n"]
    return penalty_coefficient(cfg["loss"], int(n))


# ---------------------------------------------------------------------------- optimizers ----
# config key (in a player section) -> make_optimizer option, and the optimizers it applies to
_CONFIG_KEYS = {
    "momentum": ("momentum", ("momentum",)),
    "nesterov": ("nesterov", ("momentum",)),
    "betas": ("betas", ("adam",)),
    "amsgrad": ("amsgrad", ("adam",)),
    "adam_eps": ("eps", ("adam",)),
    "adam_reset": ("reset_each_outer_step", OPTIMIZERS),
    "cg_rule": ("rule", ("cg",)),
    "cg_beta_scale": ("beta_scale", ("cg",)),
    "cg_beta_clip": ("beta_clip", ("cg",)),
    "lr_schedule": ("lr_schedule", OPTIMIZERS),
    "lr_power": ("lr_power", OPTIMIZERS),
    "lr_decay": ("lr_decay", OPTIMIZERS),
    "lr_every": ("lr_every", OPTIMIZERS),
}


def optimizer_from_config(section: Mapping, lr: float, player: str,
                          slices: Sequence[slice] | None = None,
                          lr_key: str = "lr") -> Optimizer:
    """Optimizer of a player's config section (e.g. ``cfg["critic"]``), learning rate ``lr``.

    Reads ``section["optimizer"]`` and, where present, the keys listed in the module docstring;
    keys that do not apply to the chosen optimizer are ignored. ``slices`` (e.g.
    ``MLP.tensor_slices()``) switches CG to one beta per tensor. Errors name
    ``<player>.<key>``; ``lr_key`` (e.g. "dynamics.eta_d") names the learning rate. A player's
    weight decay is not read here (the critic objective applies ``critic.weight_decay``).
    """
    name = section.get("optimizer", "sgd")
    options, names = {}, {"name": "optimizer", "lr": lr_key}
    for key, (opt, applies) in _CONFIG_KEYS.items():
        if key in section and name in applies:
            value = section[key]
            if opt == "betas" and isinstance(value, list):
                value = tuple(value)
            options[opt] = value
            names[opt] = key
    if name == "cg" and slices is not None:
        options["per_tensor"] = True
        options["slices"] = list(slices)
    return make_optimizer(name, lr, key_prefix=player, key_names=names, **options)


def make_critic_optimizer(cfg: dict) -> Optimizer:
    """Critic optimizer of ``critic.optimizer`` and the ``critic`` optimizer keys (momentum,
    betas, cg_rule, lr_schedule, ...; see :func:`optimizer_from_config`), learning rate
    eta_D = ``dynamics.eta_d``; used for gradient ascent."""
    return optimizer_from_config(cfg["critic"], cfg["dynamics"]["eta_d"], "critic",
                                 lr_key="dynamics.eta_d")


def generator_optimizer(cfg: dict):
    """Generator optimizer (``generator.*`` optimizer keys, learning rate dynamics.eta_g)."""
    return optimizer_from_config(cfg["generator"], cfg["dynamics"]["eta_g"], "generator",
                                 lr_key="dynamics.eta_g")


# ------------------------------------------------------------------------------- critics ----
def target_feature_needs(lcfg: dict) -> tuple[bool, bool]:
    """Which per-sample features of the targets the critic objective of config section
    ``loss`` reads: (psi, dpsi).

    The IPM objective reads only their mean; the other objectives read psi_m w (psi); the
    penalty on the real samples reads the input gradients (dpsi). Nothing else does.
    """
    return (objective_from_config(lcfg).name != "ipm",
            lcfg["penalty"] == "real" and lcfg["penalty_weight"] > 0)


def build_feature_critic(ccfg: dict, y: np.ndarray, backend, rng: np.random.Generator,
                         needs: tuple[bool, bool] = (True, True)):
    """Random-feature critic of config section ``critic`` (type rff / relu_features) in y's dtype.

    ``needs``: (psi, dpsi) of the targets to keep (:func:`target_feature_needs`).
    Returns (feature map, features of the targets y (M, d), zero initial weights (K,)).
    """
    dtype = y.dtype
    fmap = make_feature_map(ccfg["type"], ccfg["sigma"], ccfg["features"], y.shape[1], rng)
    fmap = dataclasses.replace(fmap, A=fmap.A.astype(dtype), b=fmap.b.astype(dtype))
    return (fmap, target_feature_batch(fmap, y, backend, *needs),
            np.zeros(ccfg["features"], dtype=dtype))


def _distance_kernel(kind: str, ccfg: dict) -> KernelSpec | None:
    """The kernel a critic section names for an MMD-type distance: "gaussian" (widths
    ``mmd_sigmas``, a mixture when several), "energy", or "riesz" (``riesz_s``, ``riesz_eps``);
    None for any other name."""
    if kind == "gaussian":
        sig = ccfg["mmd_sigmas"]
        return (make_kernel("gaussian", sigma=sig[0]) if len(sig) == 1
                else make_kernel("gaussian_mixture", sigmas=tuple(sig)))
    if kind == "energy":
        return make_kernel("energy")
    if kind == "riesz":
        return make_kernel("riesz", s=ccfg["riesz_s"], eps=ccfg["riesz_eps"])
    return None


def critic_kernel(ccfg: dict) -> KernelSpec:
    """Kernel of a fixed-kernel critic type: "kernel" (a Gaussian of width ``sigma``), "mmd" (the
    Gaussian widths ``mmd_sigmas``), "energy" or "riesz"."""
    kind = ccfg["type"]
    if kind == "kernel":
        return make_kernel("gaussian", sigma=ccfg["sigma"])
    spec = _distance_kernel({"mmd": "gaussian", "energy": "energy", "riesz": "riesz"}.get(kind, ""), ccfg)
    if spec is None:
        raise ValueError(f"{kind!r} is not a fixed-kernel critic")
    return spec


def feature_kernel(ccfg: dict) -> KernelSpec:
    """Feature-space kernel of config section ``critic``: ``feature_kernel`` = gaussian (widths
    ``mmd_sigmas``), energy, or riesz (``riesz_s``, ``riesz_eps``)."""
    kind = ccfg["feature_kernel"]
    spec = _distance_kernel(kind, ccfg)
    if spec is None:
        raise ValueError(f"critic.feature_kernel must be one of {FEATURE_KERNELS}, got {kind!r}")
    return spec


def build_learned_critic(ccfg: dict, dim: int, rng: np.random.Generator,
                         dtype=np.float64) -> tuple[LearnedFeatureCritic, np.ndarray]:
    """Learned-feature critic of config section ``critic`` for data of dimension ``dim``.

    The feature MLP is (dim, width x depth, feature_dim) with biases and the PyTorch-default
    initialisation (as the MLP critic). Returns the critic and its initial parameters theta.
    """
    sizes = [dim] + [ccfg["width"]] * ccfg["depth"] + [ccfg["feature_dim"]]
    net = nn.init_mlp(sizes, ccfg["activation"], True, "standard", rng, dtype=dtype,
                      config_prefix="critic")
    critic = LearnedFeatureCritic(net=net, kernel=feature_kernel(ccfg), beta=float(ccfg["beta"]),
                                  stabilizer=ccfg["stabilizer"])
    return critic, net.theta.copy()


def critic_layer_sizes(cfg: dict) -> list[int]:
    """Layer sizes of an MLP critic: d, then ``critic.widths`` (or ``critic.depth`` x
    ``critic.width`` when widths is empty), then 1."""
    c = cfg["critic"]
    hidden = list(c["widths"]) or [c["width"]] * c["depth"]
    return [cfg["target"]["dim"], *hidden, 1]


def make_critic_mlp(cfg: dict, rng: np.random.Generator, dtype=np.float64) -> nn.MLP:
    """Critic MLP of :func:`critic_layer_sizes` with biases (the output layer's only with
    ``critic.output_bias``), PyTorch-default init; output = f(x)."""
    return nn.init_mlp(critic_layer_sizes(cfg), cfg["critic"]["activation"], True, "standard", rng,
                       dtype=dtype, config_prefix="critic", output_bias=cfg["critic"]["output_bias"])


def build_critic(cfg: dict, y: np.ndarray, backend, rng: np.random.Generator):
    """The critic object of config section ``critic`` and its initial parameters (or None).

    Parameters
    ----------
    y : (M, d) target samples in the run dtype.  rng : the critic's random stream (features,
    initial weights). The noise the critic steps draw (interpolates, dropout) comes from the
    engine's state (``objective_grad``'s ``rng``).
    """
    ccfg, lcfg = cfg["critic"], cfg["loss"]
    ctype, dtype, wd = ccfg["type"], y.dtype, ccfg["weight_decay"]
    loss = CriticLoss(y, objective_from_config(lcfg), lcfg["penalty"], run_penalty_coefficient(cfg, len(y)), wd)
    if ctype in cr.FEATURE_CRITICS:
        fmap, real, w = build_feature_critic(ccfg, y, backend, rng, target_feature_needs(lcfg))
        return FeatureCritic(fmap, real, loss, backend), w
    if ctype == "learned_features":
        learned, w = build_learned_critic(ccfg, cfg["target"]["dim"], rng, dtype)
        return LearnedCritic(learned, y, wd, backend), w
    if ctype == "mlp":
        net = make_critic_mlp(cfg, rng, dtype)
        return MLPCritic(net, loss, tuple(ccfg["dropout"])), net.theta.copy()
    if ctype in cr.KERNEL_CRITICS:
        return KernelCritic(critic_kernel(ccfg), y, backend, float(ccfg["ridge"]), int(ccfg["memory"])), None
    raise NotImplementedError(f"critic.type = {ctype!r} is not available in the particle model")


# ---------------------------------------------------------------------------- generators ----
def make_generator(cfg: dict, rng: np.random.Generator, dtype=np.float64) -> nn.MLP:
    """Generator MLP of config section ``generator`` (output dimension ``target.dim``)."""
    g = cfg["generator"]
    sizes = [g["latent_dim"]] + [g["width"]] * g["depth"] + [cfg["target"]["dim"]]
    return nn.init_mlp(sizes, g["activation"], g["bias"], g["parameterization"], rng,
                       sigma_w=g["sigma_w"], sigma_b=g["sigma_b"], dtype=dtype,
                       config_prefix="generator")


def latent_shape(cfg: dict) -> tuple:
    """(N, d_z, kind) = (particles.n, generator.latent_dim, generator.latent)."""
    g = cfg["generator"]
    return (int(cfg["particles"]["n"]), int(g["latent_dim"]), str(g["latent"]))


def particle_generator(cfg: dict, streams: dict, target: Target, backend, dtype):
    """(ParticleGenerator, x0 (N, d), None): initial particles from stream ``particles``
    (``particles.*``), the coupling from ``coupling`` (``generator.*``)."""
    x0 = init_particles(cfg["particles"], cfg["target"]["dim"], streams["particles"],
                        target_mean=target.samples.mean(axis=0)).astype(dtype)
    coupling = make_coupling(cfg["generator"], cfg["particles"]["n"], streams["coupling"])
    return ParticleGenerator(coupling, float(cfg["dynamics"]["eta_g"]), backend, dtype), x0, None


def mlp_generator(cfg: dict, streams: dict, target: Target | None, backend, dtype):
    """(MLPGenerator, x0 = G_theta0(z) (N, d), initial MLPGeneratorState): weights from stream
    ``coupling``, latents from ``particles`` (which the state keeps for fresh minibatches)."""
    net = make_generator(cfg, streams["coupling"], dtype)
    shape = latent_shape(cfg)
    z = draw_latents(shape, streams["particles"], dtype)
    opt = generator_optimizer(cfg)
    gen = MLPGenerator(net, opt, shape, bool(cfg["generator"]["fresh_latents"]), dtype)
    state = MLPGeneratorState(theta=net.theta.copy(), z=z, opt=opt.init(), latents=streams["particles"])
    return gen, nn.mlp_apply(net, z), state


#: ``model.type`` -> the generator kind's builder
GENERATORS = {"particle": particle_generator, "neural": mlp_generator}


def build_generator(cfg: dict, streams: dict, target: Target, backend, dtype):
    """(generator object, initial points x0 (N, d) in ``dtype``, initial generator state) of
    ``model.type``."""
    return GENERATORS[cfg["model"]["type"]](cfg, streams, target, backend, dtype)
