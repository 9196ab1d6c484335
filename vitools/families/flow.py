r"""A normalizing-flow family: inverse autoregressive flow (IAF) layers under a full affine map.

q is the law of :math:`z = \mathrm{loc} + L\, f_K \circ P \circ \dots \circ P \circ f_1(\varepsilon)`,
:math:`\varepsilon \sim N(0, I_d)`, where each :math:`f_k(x) = \mu_k(x) + \sigma_k(x) \odot x` is
NumPyro's :class:`~numpyro.distributions.flows.InverseAutoregressiveTransform` driven by a MADE
network (:func:`numpyro.nn.AutoregressiveNN`), P reverses the coordinates between layers, and L is
a lower-triangular Cholesky factor parameterized as in :class:`~vitools.families.FullRank`. The
flow layers are those of NumPyro's ``AutoIAFNormal`` (Kingma et al. 2016, "Improving variational
inference with inverse autoregressive flow"); the final affine map makes the family closed under
affine maps, and with identity layers q is exactly the full-rank Gaussian N(loc, L Lᵀ).

Draws cost one network pass per layer; ``log_prob`` at an arbitrary point inverts each layer by
NumPyro's fixed-point loop, d network passes per layer (exact after d passes, since the network
is autoregressive).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.example_libraries import stax
from numpyro.distributions.flows import InverseAutoregressiveTransform
from numpyro.distributions.transforms import LowerCholeskyAffine, PermuteTransform
from numpyro.nn import AutoregressiveNN

from vitools import validate
from vitools.families.gaussian import FullRank, FullRankParams, _check_whiten
from vitools.targets import Target

__all__ = ["IAF", "IAFParams"]


class IAFParams(NamedTuple):
    loc: jax.Array
    raw_tril: jax.Array  # as FullRankParams.raw_tril: the final affine map's Cholesky factor
    layers: tuple[Any, ...]  # one stax parameter pytree per AutoregressiveNN, in flow order


_NO_MOMENTS = (
    "a normalizing flow has no closed-form mean or covariance; estimate them from draws, e.g. "
    "draws = fit.sample_flat(4000); draws.mean(0), numpy.cov(draws, rowvar=False)"
)


class _FlowDistribution(dist.TransformedDistribution):
    """NumPyro's TransformedDistribution, whose ``mean``/``variance`` raise with a message (the
    base of both flow families' distributions)."""

    @property
    def mean(self):
        raise NotImplementedError(_NO_MOMENTS)

    @property
    def variance(self):
        raise NotImplementedError(_NO_MOMENTS)


# In one dimension the MADE network's one output conditions on nothing: every layer is an affine map
# with constant shift and scale, so q is a Gaussian. It still fits (as "fullrank" would); init warns.
# A 1-D mixture 0.3 N(-3, 0.7) + 0.7 N(2, 1) by forward KL, seeds 0/1/2 (measured): the IAF's w1 to
# the target 0.303/0.308/0.303 (one hump over both modes), the 2-component mixture's 0.033/0.046/0.037;
# on a skewed and a heavy-tailed 1-D target the mixture read closer too (vitools.advice.ONE_DIM_MIXTURE).
ONE_DIMENSION = (
    "IAF in one dimension is an affine map of its Gaussian base (each layer's shift and scale condition "
    "on nothing), so q is a Gaussian, no more than family='fullrank'; for several modes, a skew or heavy "
    "tails use family='mixture' (by objective='forward_kl')"
)

# NumPyro's clip range of each layer's log-scale.
_LOG_SCALE_MIN, _LOG_SCALE_MAX = -5.0, 3.0


def _soft_clip(log_scale: jax.Array) -> jax.Array:
    """The log-scale squashed smoothly into (-5, 3) (``b tanh(s / b)``, b = 5 below 0, 3 above).

    NumPyro clamps the log-scale with a straight-through gradient: past the bound the gradient
    still pushes the network's output further, and nothing pushes back. On the 10-D funnel
    (weights stored as in :func:`_fan_in`, default rate) the raw outputs ran past the clamp on
    2 of 3 seeds (to 155) and w1 spread over 0.16-0.30; squashed, the gradient fades at the
    bounds, the clamp is never reached, and 5 of 5 seeds gave w1 0.13-0.15 (measured). Identity
    at 0 with slope 1, so the zero-initialised layers start exact.
    """
    bound = jnp.where(log_scale < 0, -_LOG_SCALE_MIN, _LOG_SCALE_MAX)
    return bound * jnp.tanh(log_scale / bound)


def _fan_in(leaf: jax.Array) -> int:
    """Weight matrices (input, output) are stored times their fan-in; biases as they are.

    The reason is FullRank's: Adam moves every parameter by about the learning rate per step,
    so a layer with n inputs moves its outputs about n times faster than a bias. Stored times
    n, a weight moves 1/n as fast, and vt.fit's default learning rates, set for Gaussian
    families, suit the networks too. Unscaled, the default rate (0.063) sent the 10-D funnel
    fit to NaN on 3 of 3 seeds within 240 steps (4 of 4 with the soft clip): the networks grew
    so steep that NumPyro's fixed-point inverse behind ``log_prob`` lost all precision (log q
    off by 1e10 at q's own draws), and reverse KL chased the error (measured).
    """
    return leaf.shape[0] if leaf.ndim == 2 else 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class IAF:
    """Inverse autoregressive flow layers followed by a full-rank affine map.

    Parameters: the affine map's dim + dim(dim+1)/2, plus each layer's MADE network (about
    ``3 d h + h²`` weights for hidden widths (h, h)). ``init`` returns layers that are
    exactly the identity (the network's last layer is zero), so q starts as the initial Gaussian.

    Args:
        num_flows: IAF layers (K), with the coordinates reversed between consecutive layers.
        hidden_dims: hidden widths of each layer's network, each at least the dimension;
            None: (2 d, 2 d). The networks use ELU, as NumPyro's ``AutoIAFNormal``.
        whiten: the frame ``vt.fit`` runs in: ``"full"`` (default), ``"diagonal"`` or False.

    Raises:
        ValueError (:class:`vitools.validate.ArgumentValueError`): ``num_flows`` is not a
            positive integer, ``hidden_dims`` is empty or not positive integers, or ``whiten``
            is none of the above; at the fit, a hidden width below the dimension (a MADE
            network needs as many hidden units to reach every output).

    Warns:
        UserWarning: at the fit, a target of one dimension: there every layer is an affine map
            (its network's one output conditions on nothing), so q is a Gaussian; it still fits
            (:data:`ONE_DIMENSION`; ``"coupling"`` refuses one dimension).

    Examples:
        >>> fit = vt.fit(model, family=vt.IAF(num_flows=2), num_steps=2000)
        >>> draws = fit.sample(1000)
    """

    num_flows: int = dataclasses.field(default=2, metadata=dict(static=True))
    hidden_dims: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))
    name: str = dataclasses.field(default="iaf", metadata=dict(static=True))
    # Ends in a full affine map, so like FullRank it is closed under affine maps and vt.fit may
    # fit it in the frame of the initial Gaussian's Cholesky factor.
    whiten: str = dataclasses.field(default="full", metadata=dict(static=True))

    def __post_init__(self):
        object.__setattr__(self, "num_flows", validate.count(self.num_flows, "IAF num_flows"))
        if self.hidden_dims is not None:
            object.__setattr__(self, "hidden_dims", validate.widths(self.hidden_dims, "IAF hidden_dims"))
        _check_whiten(self.whiten, "IAF whiten")

    def _hidden(self, dim: int) -> tuple[int, ...]:
        # Default (2 d, 2 d), twice AutoIAFNormal's (d, d): on a 3-D funnel (d, d) left sd(v)
        # anywhere in 0.44-2.45 over 5 seeds against 2.01-2.53 (true 3); on the 10-D funnel
        # both gave w1 0.13-0.14 (measured).
        hidden = self.hidden_dims if self.hidden_dims is not None else (2 * dim, 2 * dim)
        if min(hidden) < dim:
            raise ValueError(
                f"IAF hidden_dims must each be at least the dimension {dim} (a MADE network needs "
                f"that many hidden units to reach every output), got {hidden}"
            )
        return hidden

    def _network(self, dim: int):
        """The (init, apply) pair of one layer's MADE network (identity variable order)."""
        return AutoregressiveNN(
            dim, list(self._hidden(dim)), permutation=np.arange(dim), nonlinearity=stax.Elu
        )

    def init(self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array) -> IAFParams:
        """Identity layers under the affine map of N(loc, scale_tril scale_trilᵀ): exactly that Gaussian."""
        dim = loc.shape[0]
        if dim == 1:
            # stacklevel 1: shown once a process by Python's default filter (init runs 3 times a fit)
            warnings.warn(ONE_DIMENSION, UserWarning, stacklevel=1)
        init_network, _ = self._network(dim)
        affine = FullRank().init(key, target, loc, scale_tril)
        layers = []
        for index in range(self.num_flows):
            # The random weights only break the symmetry between hidden units: the last layer is
            # zeroed below, so q is the initial Gaussian whatever the key.
            _, network = init_network(jax.random.fold_in(key, index), (dim,))
            network = jax.tree.map(lambda a: jnp.asarray(a, loc.dtype), tuple(network))
            # Zero output layer: mean 0 and log-scale 0 at every input, an identity layer. Its
            # gradient (the hidden activations times the output's gradient) is not zero, so the
            # layer moves off the identity on the first step.
            *hidden, (weights, bias) = network
            network = (*hidden, (jnp.zeros_like(weights), jnp.zeros_like(bias)))
            layers.append(jax.tree.map(lambda a: a * _fan_in(a), network))
        return IAFParams(affine.loc, affine.raw_tril, tuple(layers))

    def _transforms(self, params: IAFParams) -> list:
        dim = params.loc.shape[0]
        _, apply_network = self._network(dim)

        def network_output(network, x):
            mean, log_scale = apply_network(jax.tree.map(lambda a: a / _fan_in(a), network), x)
            return mean, _soft_clip(log_scale)

        transforms = []
        for index, network in enumerate(params.layers):
            if index > 0:  # as AutoIAFNormal: reverse the order so every coordinate gets conditioned
                transforms.append(PermuteTransform(np.arange(dim)[::-1]))
            transforms.append(
                InverseAutoregressiveTransform(
                    functools.partial(network_output, network),
                    log_scale_min_clip=_LOG_SCALE_MIN,
                    log_scale_max_clip=_LOG_SCALE_MAX,
                )
            )
        scale_tril = FullRank.scale_tril(FullRankParams(params.loc, params.raw_tril))
        transforms.append(LowerCholeskyAffine(params.loc, scale_tril))
        return transforms

    def _base(self, params: IAFParams, scale: float) -> dist.Distribution:
        dim = params.loc.shape[0]
        zeros = jnp.zeros(dim, dtype=params.loc.dtype)
        scales = jnp.full(dim, scale, dtype=params.loc.dtype)
        return dist.Normal(zeros, scales, validate_args=False).to_event(1)  # valid by construction

    def distribution(self, params: IAFParams) -> dist.Distribution:
        return _FlowDistribution(self._base(params, 1.0), self._transforms(params))

    def sample_with_log_prob(self, params: IAFParams, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One reparameterized draw and its log q from the same forward pass (NumPyro's
        intermediates), with no inverse: reverse KL uses this. ``log_prob`` at the draw would
        invert every layer, d sequential network passes each: on stochastic_volatility (d = 103)
        a reverse-KL step took 25 ms that way (measured)."""
        q = self.distribution(params)
        draw, intermediates = q.sample_with_intermediates(key)
        return draw, q.log_prob(draw, intermediates)

    def widened(self, params: IAFParams, factor: float) -> dist.Distribution:
        """The same flow and affine map applied to N(0, factor² I)."""
        return _FlowDistribution(self._base(params, factor), self._transforms(params))
