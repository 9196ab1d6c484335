"""The high layer: ``vt.fit(model, ...)`` and the :class:`Fit` it returns."""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from threadpoolctl import threadpool_limits

from vitools import alerts, start, validate
from vitools.engine import default_optimizer, init_state, optimize
from vitools.families import Family, get_family
from vitools.families.base import draw_many
from vitools.objectives import Objective, get_objective
from vitools.targets import Target

__all__ = ["Fit", "NonFiniteLossError", "default_learning_rate", "fit"]


def _one_blas_thread(function):
    """Run ``function`` with OpenBLAS (behind JAX's CPU LAPACK calls: triangular solves,
    Cholesky, eigh) on one thread. Our LAPACK calls are small and many; with OpenBLAS's default
    threads, a 100 x 200 triangular solve took 12-16 ms on 2 busy cores against 0.4-0.8 ms on one
    thread (measured), and a 100-D full-rank forward-KL fit 53 s. XLA's own ops are unaffected."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN/inf. ``err.fit`` holds the fit with the last finite
    parameters, so nothing is lost."""

    def __init__(self, message: str, fit: Fit):
        super().__init__(message)
        self.fit = fit


@dataclasses.dataclass(frozen=True)
class Fit:
    """A finished (or stopped) fit: the variational parameters and how they were reached.

    Attributes:
        target, family, objective: what was fitted, and how.
        params: the variational parameters (last finite ones), in the frame of the initial
            Gaussian (``target.shift``/``target.scale``): use ``sample``, ``mean_and_covariance``
            or ``distribution`` for the model's space.
        losses: per-step loss; ``trace`` adds per-step ``ess`` and ``log_evidence`` where the
            objective reports them.
        num_steps: steps applied. num_grad_evals: target log-density evaluations spent (with
            their gradients for reparameterized objectives; ForwardKL needs values only).
        elapsed: optimisation wall time in seconds, compile_time: compilation seconds (0 when
            reused). status: "completed", "converged", "nonfinite" or "interrupted".
    """

    target: Target
    family: Family
    objective: Objective
    params: Any
    losses: np.ndarray
    trace: dict[str, np.ndarray]
    num_steps: int
    num_grad_evals: int
    elapsed: float
    compile_time: float
    status: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.objective.name}/{self.family.name}"

    @property
    def point_estimates(self) -> dict[str, np.ndarray]:
        """The model's ``numpyro.param`` sites, fitted as point estimates alongside q (type-II
        maximum likelihood: they maximise the objective's bound on log p(x; θ), as in NumPyro's
        SVI); empty for a model without them."""
        return jax.device_get(self.target.point_estimates())

    @property
    def distribution(self) -> dist.Distribution:
        """q over the model's flat unconstrained space (a NumPyro distribution)."""
        transforms, scale = dist.transforms, self.target.scale
        if scale.ndim == 2:
            frame = transforms.LowerCholeskyAffine(self.target.shift, scale)
        else:
            frame = transforms.IndependentTransform(transforms.AffineTransform(self.target.shift, scale), 1)
        return dist.TransformedDistribution(self.family.distribution(self.params), frame)

    @_one_blas_thread
    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and covariance of q in the model's flat unconstrained space (Gaussian
        families, or any q whose distribution has ``mean`` and a covariance or variance)."""
        q = self.family.distribution(self.params)
        cov = q.covariance_matrix if hasattr(q, "covariance_matrix") else jnp.diag(q.variance)
        scale = self.target.scale
        scale = scale if scale.ndim == 2 else jnp.diag(scale)
        return np.asarray(self.target.to_unconstrained(q.mean)), np.asarray(scale @ cov @ scale.T)

    @_one_blas_thread
    def sample_flat(self, num_draws: int, seed: int = 0) -> jax.Array:
        """``(num_draws, dim)`` draws of q in the model's flat unconstrained space."""
        return jax.vmap(self.target.to_unconstrained)(self._sample_frame(num_draws, seed))

    def _sample_frame(self, num_draws: int, seed: int) -> jax.Array:
        """Draws in the frame the fit was optimised in (see ``Target.whitened``)."""
        num_draws, seed = validate.count(num_draws, "num_draws"), validate.seed(seed)
        return _sample_flat(self.family, self.params, jax.random.PRNGKey(seed), num_draws)

    @_one_blas_thread
    def sample(self, num_draws: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Constrained draws: site name → array ``(num_draws, *site shape)`` (plus deterministic sites)."""
        return jax.device_get(_constrain_all(self.target, self._sample_frame(num_draws, seed)))

    @_one_blas_thread
    def log_prob(self, draws: dict[str, Any]) -> np.ndarray:
        """log q at constrained draws, Jacobian of the transform included: ``(S,)``.

        Args:
            draws: site name → array ``(S, *site shape)`` in the model's (constrained) space;
                other entries (deterministic sites) are ignored.

        Returns:
            ``(S,)`` log densities in nats; ``-inf`` where a draw lies outside the model's support.

        Raises:
            ValueError: a latent site is missing or has no leading draw axis or the wrong shape.
        """
        validate.draws(draws, self.target.constrained_shapes())
        values = {n: jnp.asarray(draws[n]) for n in self.target.site_names}
        return np.asarray(_log_prob_constrained(self.family, self.params, self.target, values))

    @_one_blas_thread
    def sample_with_log_densities(self, num_draws: int, seed: int = 0):
        """``(draws, log_p, log_q)``: constrained draws, the unnormalized log joint and log q at
        them, both in the constrained space, so ``log_p - log_q`` is the importance log weight."""
        flat = self._sample_frame(num_draws, seed)
        draws, log_p, log_q = _densities(self.family, self.params, self.target, flat)
        return jax.device_get(draws), np.asarray(log_p), np.asarray(log_q)

    def to_datatree(self, num_draws: int = 1000, seed: int = 0):
        """ArviZ DataTree of ``num_draws`` draws (see :mod:`vitools.convert`)."""
        from vitools.convert import fit_to_datatree

        return fit_to_datatree(self, num_draws=num_draws, seed=seed)

    def __repr__(self) -> str:
        loss = self.losses[-1] if len(self.losses) else float("nan")
        return (
            f"Fit({self.name}, dim={self.target.dim}, steps={self.num_steps}, "
            f"grad_evals={self.num_grad_evals}, loss={loss:.4g}, "
            f"status={self.status!r}, {self.elapsed:.2f}s + {self.compile_time:.2f}s compile)"
        )


@_one_blas_thread
def fit(
    model: Callable | Target,
    *model_args: Any,
    objective: str | Objective = "reverse_kl",
    family: str | Family = "fullrank",
    num_steps: int = 2000,
    seed: int = 0,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    init: str | tuple[jax.Array, jax.Array] = "laplace",
    tol: float | None = None,
    on_nonfinite: str = "raise",
    progress: bool = True,
    chunk_size: int = 100,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Fit:
    """Fit q to the posterior of a NumPyro model (or a :class:`Target`).

    Args:
        model: a NumPyro model, or a Target (e.g. ``Target.from_log_density(fn, dim)``).
        *model_args, **kwargs: the model's arguments, as NumPyro's NUTS takes them: arrays,
            NumPy or pandas values, dicts of data, Python numbers (see :meth:`Target.from_model`).
        model_kwargs: the model's keyword arguments as a dict, for those whose names are also
            options of ``vt.fit`` (``init``, ``family``, ``seed``...); merged with ``**kwargs``.
        objective: ``"reverse_kl"``, ``"forward_kl"``, ``"renyi"`` or an Objective object.
        family: ``"meanfield"``, ``"fullrank"``, ``"lowrank"``, ``"iaf"`` (a normalizing flow,
            for curved posteriors such as funnels), a Family, or a NumPyro ``AutoContinuous`` guide.
        num_steps: optimisation steps.
        seed: the one seed of the run (initialisation and every step): same seed, same result.
        learning_rate: peak learning rate of the default Adam, with 5% linear warm-up and cosine
            decay; also scheduled into any ``optax.inject_hyperparams`` optimizer. None: the
            objective's ``default_learning_rate(dim)`` (see :func:`default_learning_rate`).
        optimizer: an optax optimizer (default: Adam as above).
        init: ``"laplace"`` (path-selected Laplace approximation, see :mod:`vitools.init`;
            for mode-seeking objectives and ``num_steps >= 1000`` it races the simple start for
            100 pilot steps each, see ``vitools.start``), ``"median"`` (NumPyro's init point,
            scale 0.1) or ``(loc, scale_tril)`` in the model's flat unconstrained space. Except
            from the simple start, the fit runs in the frame of the initial scales
            (``Target.whitened``), so badly scaled models need no tuning.
        tol: early stopping on the relative change of the smoothed loss (None: off).
        on_nonfinite: ``"raise"`` (:class:`NonFiniteLossError`, carrying the fit) or ``"warn"``.
        progress: show progress (a bar on a terminal, periodic lines otherwise).
        chunk_size: steps per compiled chunk. Once a chunk is timed, a call runs as many chunks
            as fit in ``engine.CALL_SECONDS`` (progress and Ctrl-C between calls); early
            stopping checks after every chunk, one chunk per call.

    Example:
        >>> fit = vt.fit(model, x, y=y, objective="forward_kl", family="fullrank", num_steps=2000)
        >>> draws = fit.sample(1000, seed=1)
    """
    options = _checked_options(
        num_steps=num_steps, chunk_size=chunk_size, seed=seed, learning_rate=learning_rate,
        tol=tol, on_nonfinite=on_nonfinite, init=init, family=family, objective=objective,
        optimizer=optimizer,
    )  # fmt: skip
    num_steps, chunk_size, seed, learning_rate, tol, init, family, objective = (
        options[k]
        for k in ("num_steps", "chunk_size", "seed", "learning_rate", "tol", "init", "family", "objective")
    )
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise validate.ArgumentTypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    both = sorted(set(model_kwargs or {}) & set(kwargs))
    if both:
        raise validate.ArgumentValueError(f"model argument(s) {both} given in model_kwargs and by name")
    kwargs = {**(model_kwargs or {}), **kwargs}
    target = model if isinstance(model, Target) else Target.from_model(model, *model_args, **kwargs)

    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    laplace = isinstance(init, str) and init == "laplace"
    if laplace:
        alerts.warn_large_init(target.dim)
    tic = time.perf_counter()
    announce = progress and laplace and target.dim >= alerts.LARGE_DIM
    if announce:  # the Laplace init is one compiled program: say what it does before it starts
        print(f"vitools: initialising (Laplace: L-BFGS path, up to 9 Hessians of {target.dim} x "
              f"{target.dim})...", file=sys.stderr, flush=True)  # fmt: skip
    model_target = target
    target, loc, scale_tril, informed = start.starting_point(target, family, objective, init, init_key)
    if announce:
        print(f"vitools: initialised in {time.perf_counter() - tic:.1f} s", file=sys.stderr, flush=True)
    if hasattr(objective, "prepare"):
        objective = objective.prepare(target)
    if target.param_sites and objective.num_density_evals == 0:
        names = [name for name, _ in target.param_sites]
        raise validate.ArgumentValueError(
            f"the model has numpyro.param site(s) {names}, which {objective.name} cannot fit: it "
            "never evaluates the model's density; use 'reverse_kl' or 'forward_kl', or give them priors",
            "objective",
        )
    params = family.init(target, loc, scale_tril)
    alerts.warn_large_family(family, params, target.dim)
    if learning_rate is None:
        rule = getattr(objective, "default_learning_rate", default_learning_rate)
        learning_rate = rule(target.dim)
    optimizer = optimizer or default_optimizer()
    pilots = []
    if laplace and informed and num_steps >= start.RACE_MIN_STEPS and not start.mass_covering(objective):
        run = functools.partial(start.pilot, family, objective, optimizer, learning_rate, run_key, chunk_size)
        simple = start.simple_start(model_target, like=target)
        (target, loc, scale_tril), pilots = start.race([(target, loc, scale_tril), simple], run)
    if pilots and pilots[-1].outcome.status == "interrupted":  # Ctrl-C in a pilot: that is the fit
        outcome, pilots = pilots[-1].outcome, pilots[:-1]
    else:
        state = init_state(
            run_key, family.init(target, loc, scale_tril), optimizer, learning_rate, target.model_params
        )
        outcome = optimize(
            state,
            num_steps,
            objective,
            family,
            target,
            optimizer,
            chunk_size=chunk_size,
            progress=progress,
            tol=tol,
            desc=f"{objective.name}/{family.name}",
        )
    pilot_evals = len(pilots) * start.PILOT_STEPS * objective.num_density_evals
    pilot_seconds = sum(p.outcome.elapsed for p in pilots)
    pilot_compile = sum(p.outcome.compile_time for p in pilots)
    steps = int(outcome.state.step)
    result = Fit(
        target=target.with_model_params(outcome.state.model_params),
        family=family,
        objective=objective,
        params=outcome.state.params,
        losses=outcome.losses,
        trace=outcome.trace,
        num_steps=steps,
        num_grad_evals=steps * objective.num_density_evals + pilot_evals,
        elapsed=outcome.elapsed + pilot_seconds,
        compile_time=outcome.compile_time + pilot_compile,
        status=outcome.status,
        seed=int(seed),
    )
    if outcome.status == "nonfinite":
        message = (
            f"the {objective.name} loss or its gradient became non-finite at step {steps + 1}; "
            f"the fit keeps the parameters of step {steps}. Try a smaller learning_rate, "
            "another init, or check the model for regions of NaN density"
        )
        if on_nonfinite == "raise":
            raise NonFiniteLossError(message, result)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    alerts.warn_low_ess(result)
    alerts.warn_improper(result)
    return result


def default_learning_rate(dim: int) -> float:
    """``0.2 / sqrt(dim)`` clipped to [0.01, 0.1], for objectives without a rule of their own.

    Adam moves each coordinate by about the rate per step, gradient noise included, so the
    disturbance it adds to a fit grows like dim x rate²; this keeps it level across dimensions
    (at 0.1, a perfect initial fit of a 100-D Gaussian drifted far off; measured).
    """
    return min(0.1, max(0.01, 0.2 / dim**0.5))


def _checked_options(**options: Any) -> dict[str, Any]:
    """``vt.fit``'s options, validated before anything is traced or compiled (``vitools.validate``).

    A model keyword argument that shares an option's name (``init=``, ``family=``) is taken by
    ``vt.fit``; when its value cannot be the option's, the error says how to pass it to the model.
    """
    try:
        return dict(
            num_steps=validate.count(options["num_steps"], "num_steps"),
            chunk_size=validate.count(options["chunk_size"], "chunk_size"),
            seed=validate.seed(options["seed"]),
            learning_rate=_maybe(validate.positive, options["learning_rate"], "learning_rate"),
            tol=_maybe(validate.positive, options["tol"], "tol"),
            on_nonfinite=validate.choice(options["on_nonfinite"], "on_nonfinite", ("raise", "warn")),
            init=(
                validate.choice(options["init"], "init", ("laplace", "median"))
                if isinstance(options["init"], str)
                else validate.gaussian(options["init"], "init")
            ),
            family=validate.option(get_family, options["family"], "family"),
            objective=validate.option(get_objective, options["objective"], "objective"),
            optimizer=_optimizer(options["optimizer"], "optimizer"),
        )
    except validate.ArgumentError as err:
        if err.argument in ("init", "family", "objective", "optimizer", "tol", "seed"):
            name = err.argument
            hint = f"if {name!r} is an argument of your model, pass it as model_kwargs={{{name!r}: ...}}"
            raise type(err)(f"{err} ({hint})", err.argument) from None
        raise


def _maybe(check: Callable, value: Any, name: str) -> Any:
    return None if value is None else check(value, name)


def _optimizer(value: Any, name: str) -> Any:
    if value is not None and not isinstance(value, optax.GradientTransformation):
        raise validate.ArgumentTypeError(
            f"{name} must be an optax.GradientTransformation, got {type(value).__name__}", name
        )
    return value


@functools.partial(jax.jit, static_argnums=(3,))
def _sample_flat(family, params, key, num_draws):
    return draw_many(family.distribution(params), key, num_draws)


@jax.jit
def _constrain_all(target, flat):
    return jax.vmap(lambda u: target.constrain(u, deterministic=True))(flat)


@jax.jit
def _log_prob_constrained(family, params, target, values):
    def one(value):
        flat = target.unconstrain(value)
        log_q = family.distribution(params).log_prob(flat) - target.log_abs_det_jacobian(flat)
        return jnp.where(target.in_support(value), log_q, -jnp.inf)

    return jax.vmap(one)(values)


@jax.jit
def _densities(family, params, target, flat):
    q = family.distribution(params)

    def one(u):
        log_jac = target.log_abs_det_jacobian(u)
        return (
            target.constrain(u, deterministic=True),
            target.log_density(u) - log_jac,
            q.log_prob(u) - log_jac,
        )

    return jax.vmap(one)(flat)
