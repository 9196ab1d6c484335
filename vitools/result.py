"""The :class:`Fit` record ``vt.fit`` returns: q's parameters, how they were reached, and q in
the model's space (draws, log densities, moments)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from vitools import batched, validate
from vitools.blas import one_blas_thread
from vitools.families import Family, FullRank, LowRank, MeanField
from vitools.frame import Frame
from vitools.targets import Target

if TYPE_CHECKING:
    import os
    from pathlib import Path

    from vitools.convergence import Convergence
    from vitools.objectives import Objective
    from vitools.predictive import FitGuide

__all__ = ["Fit", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN/inf. ``err.fit`` holds the fit with the last finite
    parameters, so nothing is lost.

    Raised by ``vt.fit`` with ``on_nonfinite="raise"`` (its default); ``on_nonfinite="warn"``
    returns that fit with ``status == "nonfinite"`` instead.

    Examples:
        >>> try:
        ...     fit = vt.fit(model, x, y=y, learning_rate=1e6, seed=0)
        ... except vt.NonFiniteLossError as err:
        ...     fit = err.fit  # the last finite parameters
        >>> fit.status
        'nonfinite'
    """

    def __init__(self, message: str, fit: Fit):
        super().__init__(message)
        self.fit = fit


@dataclasses.dataclass(frozen=True)
class Fit:
    """A finished (or stopped) fit: the variational parameters and how they were reached.

    Attributes:
        target: what was fitted, in the frame the fit ran in (``target.frame``, see
            :mod:`vitools.frame`).
        family: the family of q (a :class:`~vitools.families.Family`, e.g. ``FullRank()``).
        objective: the objective minimised (an :class:`~vitools.objectives.Objective`), or a string
            naming where q came from for a Gaussian fitted elsewhere (:meth:`from_gaussian`).
        params: the family's parameters (the last finite ones) **in the frame's coordinates**
            ``v``, where ``u = shift + scale v``: ``params.loc`` of a Gaussian is q's centre
            measured from the initial Gaussian's centre in units of its scales (0 at the start),
            not the posterior mean. Use :meth:`sample`, :meth:`mean_and_covariance` or
            :attr:`distribution` for the model's space.
        losses: the loss (nats) of every step run, ``(num_steps,)``, plus the non-finite step's
            own (NaN/inf) loss last when ``status == "nonfinite"``.
        trace: per-step diagnostics, name -> ``(num_steps,)``: ``"loss"`` always, ``"ess"`` and
            ``"log_evidence"`` (nats) where the objective reports them.
        num_steps: optimisation steps applied.
        num_grad_evals: target log-density evaluations spent in all, the start's included (with
            their gradients for reparameterized objectives; ForwardKL needs values only).
        init_grad_evals: the start's share of ``num_grad_evals`` (the Laplace init's L-BFGS path,
            Newton steps, Hessians at dim gradient evaluations each, and candidate ELBOs).
        elapsed: optimisation wall time in seconds (the loop and the start race's pilots).
        compile_time: the loop's compilation time in seconds (0 when a compiled loop was reused).
        init_time: the start's wall time in seconds, its compilation included.
        status: ``"completed"`` (the whole budget), ``"converged"``, ``"nonfinite"`` or
            ``"interrupted"``.
        seed: the ``seed`` of ``vt.fit`` (None when it was given a ``key``).
        convergence: whether the loss had stopped falling (:class:`vitools.convergence.Convergence`:
            ``converged``, the fitted fall of the loss over the last window and its standard
            error, in nats), assessed where the fit stopped or, after the whole budget, on its
            last window; None for a Gaussian fitted elsewhere. ``status == "completed"`` with
            ``converged`` False: the budget ran out while the loss still fell.
        auto: the automatic mode's path to this fit (:class:`vitools.auto.AutoPath`: every
            attempt's configuration, verdict, gradient evaluations and time), None for a fit
            made otherwise.
        layout: what ``vt.fit(..., devices=...)`` split over the devices, in words
            (:func:`vitools.sharding.layout`: the mesh, the draws, the data rows); None on one
            device.

    Examples:
        >>> fit = vt.fit(model, x, y=y, seed=0)  # model(x, y=None): alpha, beta, sigma
        >>> fit.status, fit.params.loc.shape
        ('converged', (3,))
        >>> fit.sample(1000, seed=1)["beta"].shape
        (1000,)
    """

    target: Target
    family: Family
    objective: Objective | str
    params: Any
    losses: np.ndarray
    trace: dict[str, np.ndarray]
    num_steps: int
    num_grad_evals: int
    elapsed: float
    compile_time: float
    status: str
    seed: int | None
    convergence: Convergence | None = None
    init_grad_evals: int = 0
    init_time: float = 0.0
    auto: Any = None
    layout: str | None = None
    # the latest (num_draws, seed) -> (draws, log p, log q) of sample_with_log_densities: diagnose,
    # summary, to_datatree and report each draw the same 10,000 (at 10^5 rows, ~23 CPU s a time)
    _densities_memo: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_gaussian(
        cls,
        target: Target,
        loc: jax.Array,
        scale_tril: jax.Array,
        *,
        family: Family | None = None,
        source: str = "gaussian",
        **record: Any,
    ) -> Fit:
        """A Fit of q = N(loc, scale_tril scale_trilᵀ) over the model's flat unconstrained space,
        fitted elsewhere (NumPyro's SVI guides, a Laplace approximation), so it is drawn from,
        diagnosed and compared exactly as vitools' own fits.

        Args:
            target: the target (any frame; q is placed in the model's space).
            loc: q's mean, ``(dim,)``.
            scale_tril: q's Cholesky factor, ``(dim, dim)``, lower-triangular with a positive
                diagonal.
            family: the Gaussian family holding q (default ``FullRank()``; ``MeanField()`` for a
                diagonal ``scale_tril``; a ``LowRank`` keeps its top principal directions).
            source: the name in the objective column (e.g. ``"svi"``).
            **record: ``num_steps``, ``num_grad_evals``, ``elapsed``, ``compile_time``,
                ``status``, ``seed`` of the outside fit (default 0, 0, 0.0, 0.0, "completed", None).

        Raises:
            ValueError: ``loc`` or ``scale_tril`` do not have the target's shapes, have NaN/inf
                entries, or ``scale_tril`` is not lower-triangular with a positive diagonal (a
                covariance passed by mistake is refused: give ``np.linalg.cholesky(cov)``).
            TypeError: ``family`` is not one of vitools' Gaussian families.

        Examples:
            >>> target = vt.Target.from_model(model, x, y=y)
            >>> laplace = vt.Fit.from_gaussian(target, np.zeros(3), np.eye(3), source="laplace")
            >>> laplace.name, laplace.mean_and_covariance()[1].shape
            ('laplace/fullrank', (3, 3))
        """
        loc, scale_tril = (jnp.asarray(a) for a in validate.gaussian((loc, scale_tril), "from_gaussian"))
        if loc.shape != (target.dim,) or scale_tril.shape != (target.dim, target.dim):
            raise ValueError(
                f"loc and scale_tril must have shapes ({target.dim},) and ({target.dim}, {target.dim}), "
                f"got {loc.shape} and {scale_tril.shape}"
            )
        family = FullRank() if family is None else family
        if not isinstance(family, FullRank | MeanField | LowRank):
            raise TypeError(
                f"from_gaussian needs a Gaussian family (FullRank, MeanField, LowRank), got {family.name}"
            )
        target = target.in_frame(Frame.identity(target.dim, loc.dtype))
        defaults = dict(
            num_steps=0, num_grad_evals=0, elapsed=0.0, compile_time=0.0, status="completed", seed=None
        )
        fields = {**defaults, **record}
        params = family.init(None, target, loc, scale_tril)  # a Gaussian family draws nothing
        empty = np.zeros(0)
        return cls(target, family, source, params, empty, {"loss": empty}, **fields)

    @property
    def objective_name(self) -> str:
        return self.objective if isinstance(self.objective, str) else self.objective.name

    @property
    def name(self) -> str:
        return f"{self.objective_name}/{self.family.name}"

    @property
    def converged(self) -> bool | None:
        """Whether the loss had stopped falling within its noise (None: not assessed).

        Examples:
            >>> fit.converged
            True
        """
        return None if self.convergence is None else self.convergence.converged

    @property
    def point_estimates(self) -> dict[str, np.ndarray]:
        """The model's ``numpyro.param`` sites, fitted as point estimates alongside q (type-II
        maximum likelihood: they maximise the objective's bound on log p(x; θ), as in NumPyro's
        SVI); empty for a model without them."""
        return jax.device_get(self.target.point_estimates())

    @property
    def distribution(self) -> dist.Distribution:
        """q over the model's flat unconstrained space (a NumPyro distribution, event shape
        ``(dim,)``).

        Examples:
            >>> fit.distribution.sample(jax.random.key(0), (4,)).shape
            (4, 3)
        """
        return dist.TransformedDistribution(
            self.family.distribution(self.params), self.target.frame.transform()
        )

    @property
    def guide(self) -> FitGuide:
        """q as a NumPyro guide, for NumPyro code that takes one:
        ``Predictive(model, guide=fit.guide, num_samples=1000)(key, x_new)``
        (:class:`vitools.predictive.FitGuide`; its draws are fresh, made with Predictive's key).

        Raises:
            ValueError: the fit is of a plain log density (no model)."""
        from vitools.predictive import FitGuide  # it reads fits: imported on use

        return FitGuide(self)

    def predictive(
        self,
        num_draws: int,
        *model_args: Any,
        seed: int = 0,
        return_sites: list[str] | None = None,
        **model_kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Posterior predictive draws ``site -> (num_draws, ...)``, made from the draws
        ``fit.sample(num_draws, seed)``: ``fit.predictive(1000, x_new)`` with the model's observed
        argument left None; no model arguments: replicates of the fitted data
        (:func:`vitools.predictive.predict`, which documents the arguments and errors).

        Examples:
            >>> fit.predictive(1000, x_new)["y"].shape  # model(x, y=None), x_new (5,)
            (1000, 5)
        """
        from vitools.predictive import predict  # it reads fits: imported on use

        return predict(self, num_draws, *model_args, seed=seed, return_sites=return_sites, **model_kwargs)

    @one_blas_thread
    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean ``(dim,)`` and covariance ``(dim, dim)`` of q in the model's flat
        unconstrained space (Gaussian families: any q whose distribution has ``mean`` and
        ``covariance_matrix``, or ``variance`` for a diagonal one; mixtures of those).

        Raises:
            NotImplementedError: q has no closed-form moments (IAF); estimate them from
                :meth:`sample_flat`.

        Examples:
            >>> mean, cov = fit.mean_and_covariance()
            >>> mean.shape, cov.shape
            ((3,), (3, 3))
        """
        q = self.family.distribution(self.params)
        mean, cov = gaussian_moments(q)
        frame = self.target.frame
        return np.asarray(frame.forward(mean)), np.asarray(frame.covariance_to_model(cov))

    @one_blas_thread
    def sample_flat(
        self, num_draws: int, seed: int | None = None, *, key: jax.Array | None = None
    ) -> jax.Array:
        """``(num_draws, dim)`` draws of q in the model's flat unconstrained space; ``seed``
        (None: 0) or ``key``, not both (errors as :meth:`sample`).

        Examples:
            >>> fit.sample_flat(1000, seed=1).shape
            (1000, 3)
        """
        return jax.vmap(self.target.to_unconstrained)(self._sample_frame(num_draws, seed, key))

    def _sample_frame(self, num_draws: int, seed: int | None, key: jax.Array | None) -> jax.Array:
        """Draws in the frame the fit was optimised in; ``seed`` (None: 0) or ``key``, not both."""
        num_draws = validate.count(num_draws, "num_draws")
        return batched.sample_flat(self.family, self.params, validate.seed_or_key(seed, key), num_draws)

    @one_blas_thread
    def sample(
        self,
        num_draws: int,
        seed: int | None = None,
        *,
        key: jax.Array | None = None,
        resample: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Constrained draws of q: site name → array ``(num_draws, *site shape)``, in the model's
        own space (plus deterministic sites).

        ``resample="psis"``: draws of q resampled by their PSIS importance weights, approximate
        draws of p (:func:`vitools.importance.psis_resample`; warns when k̂ is above threshold,
        where resampling cannot fix q). ``vt.to_datatree(draws)`` makes a tree of them.

        Args:
            num_draws: how many draws, a positive integer.
            seed: seed of the draws (None: 0); the same seed gives the same draws.
            key: a JAX PRNG key instead of ``seed``; give one of the two at most.
            resample: None, or ``"psis"`` as above.

        Raises:
            ValueError: ``num_draws`` is not a positive integer (at least 25 to resample), both seed
                and key are given, or ``resample`` is not None or "psis".
            TypeError: ``key`` is not a PRNG key.

        Examples:
            >>> draws = fit.sample(1000, seed=1)
            >>> {name: value.shape for name, value in draws.items()}
            {'alpha': (1000,), 'beta': (1000,), 'sigma': (1000,)}
        """
        if resample is not None:
            validate.choice(resample, "resample", ("psis",))
            from vitools.importance import psis_resample  # it draws from Fits: imported on use

            return psis_resample(self, num_draws, seed, key=key)
        flat = self._sample_frame(num_draws, seed, key)
        return jax.device_get(batched.constrain_all(self.target, flat, batched.draw_batch(self.target)))

    @one_blas_thread
    def log_prob(self, draws: dict[str, Any]) -> np.ndarray:
        """log q at constrained draws, Jacobian of the transform included: ``(S,)``.

        Args:
            draws: site name → array ``(S, *site shape)`` in the model's (constrained) space;
                other entries (deterministic sites) are ignored.

        Returns:
            ``(S,)`` log densities in nats; ``-inf`` where a draw lies outside the model's support.

        Raises:
            ValueError: a latent site is missing or has no leading draw axis or the wrong shape.

        Examples:
            >>> fit.log_prob(fit.sample(10, seed=1)).shape
            (10,)
        """
        validate.draws(draws, self.target.constrained_shapes())
        values = {n: jnp.asarray(draws[n]) for n in self.target.site_names}
        batch_size = batched.draw_batch(self.target)
        return np.asarray(
            batched.log_prob_constrained(self.family, self.params, self.target, values, batch_size)
        )

    @one_blas_thread
    def sample_with_log_densities(
        self, num_draws: int, seed: int | None = None, *, key: jax.Array | None = None
    ):
        """``(draws, log_p, log_q)``: constrained draws (dict of ``(num_draws, ...)``), the
        unnormalized log joint and log q at them (``(num_draws,)`` each, nats), both in the
        constrained space, so ``log_p - log_q`` is the importance log weight. ``seed`` (None: 0)
        or ``key``, not both (errors as :meth:`sample`). By ``seed`` the fit keeps the latest
        result (copies are returned), so ``vt.diagnose``, ``vt.summary``, ``vt.to_datatree`` and
        ``vt.report`` at the same ``num_draws`` and ``seed`` evaluate the model once; over large
        data a progress line counts the draws.

        Examples:
            >>> draws, log_p, log_q = fit.sample_with_log_densities(1000, seed=1)
            >>> draws["sigma"].shape, (log_p - log_q).shape
            ((1000,), (1000,))
        """
        num_draws = validate.count(num_draws, "num_draws")
        memo = None if key is not None else (num_draws, seed or 0)  # a key's draws are not kept
        key = validate.seed_or_key(seed, key)
        if memo not in self._densities_memo:
            flat, log_q = batched.sample_flat_with_log_q(self.family, self.params, key, num_draws)
            with jax.enable_x64(True):  # log p in float64: see batched.densities
                found = batched.densities_in_pieces(self.family, self.params, self.target, flat, log_q)
            self._densities_memo.clear()  # one entry: the draws the diagnostics read
            self._densities_memo[memo] = found
        draws, log_p, log_q = self._densities_memo[memo]
        if memo is None:
            self._densities_memo.clear()
        return {k: v.copy() for k, v in draws.items()}, log_p.copy(), log_q.copy()  # kept ones stay

    def save(self, path: str | os.PathLike) -> Path:
        """Write this fit to one file (:func:`vitools.persist.save`); read it back with
        ``vt.load(path, model, *model_args, **model_kwargs)``.

        Returns:
            The path written.

        Raises:
            TypeError: the family or objective has configuration a file cannot hold (code).

        Examples:
            >>> fit.save("model.vitools.npz")
            PosixPath('model.vitools.npz')
        """
        from vitools.persist import save  # persist imports Fit: imported on use

        return save(self, path)

    def __repr__(self) -> str:
        finite = self.losses[np.isfinite(self.losses)]
        loss = finite[-1] if len(finite) else float("nan")  # that of the parameters kept
        return (
            f"Fit({self.name}, dim={self.target.dim}, steps={self.num_steps}, "
            f"grad_evals={self.num_grad_evals} (init {self.init_grad_evals}), loss={loss:.4g}, "
            f"status={self.status!r}, init {self.init_time:.2f}s, {self.elapsed:.2f}s + "
            f"{self.compile_time:.2f}s compile"
            + ("" if self.convergence is None else f"; {self.convergence}")
            + ("" if self.layout is None else f"; {self.layout}")
            + ")"
        )


def gaussian_moments(q: dist.Distribution) -> tuple[jax.Array, jax.Array]:
    """Mean and covariance of a Gaussian q, diagonal or full, or of a mixture of such (the law of
    total covariance: the components' average covariance plus the covariance of their means).
    Batched Gaussians (a mixture's components) give ``(..., dim)`` and ``(..., dim, dim)``."""
    if isinstance(q, dist.MixtureSameFamily):
        weights = q.mixing_distribution.probs
        means, covs = gaussian_moments(q.component_distribution)
        mean = weights @ means
        centred = means - mean[None, :]
        spread = jnp.einsum("k,ki,kj->ij", weights, centred, centred)
        return mean, jnp.einsum("k,kij->ij", weights, covs) + spread
    if isinstance(q, dist.MultivariateNormal | dist.LowRankMultivariateNormal):
        return q.mean, q.covariance_matrix
    variance = q.variance  # a diagonal q (or one that raises, like IAF's, saying why)
    return q.mean, variance[..., :, None] * jnp.eye(variance.shape[-1], dtype=variance.dtype)
