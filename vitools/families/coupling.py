r"""A coupling-flow family (RealNVP / neural spline coupling) under a full affine map: cheap both ways.

q is the law of :math:`z = \mathrm{loc} + L\, (P \circ c_K) \circ \dots \circ (P \circ c_1)(\varepsilon)`,
:math:`\varepsilon \sim N(0, I_d)`. Each coupling layer :math:`c_k` keeps the first
:math:`\lfloor d/2 \rfloor` coordinates and maps each of the others through a scalar bijection
whose parameters a network reads off the kept half; P reverses the coordinates, so consecutive
layers swap halves; L is a lower-triangular Cholesky factor parameterized as in
:class:`~vitools.families.FullRank`, which makes the family closed under affine maps and q exactly
the full-rank Gaussian N(loc, L Lᵀ) when the layers are the identity.

The scalar bijection is affine, :math:`y = \mu + e^{s} x` (RealNVP: Dinh, Sohl-Dickstein & Bengio
2017, "Density estimation using Real NVP"), or a monotone rational-quadratic spline on [-4, 4],
the identity outside (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural spline flows").

Why coupling: both directions cost one network pass per layer, so ``log_prob`` at given points
(forward KL, PSIS, ``Fit.log_prob``) is as cheap as a draw. IAF's inverse takes d sequential
passes per layer: a 103-D IAF forward-KL fit ran past 15 minutes.

The layers are flowjax's (:class:`flowjax.bijections.Coupling` with its ``Affine`` or
``RationalQuadraticSpline`` transformer, stacked under ``Scan`` so the program traces one
layer whatever their number; Ward 2023, flowjax). NumPyro has no coupling transform; flowjax
brings the coupling layer, the spline and its inverse, maintained. Its parameters are an
equinox module: ``eqx.partition`` splits off the array leaves (the family's parameters) from the
structure, which :func:`_structure` rebuilds from the configuration alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from flowjax.bijections import Affine, Chain, Flip, RationalQuadraticSpline, Scan
from flowjax.bijections import Coupling as CouplingLayer
from numpyro.distributions import constraints
from numpyro.distributions.transforms import LowerCholeskyAffine, Transform
from paramax import Parameterize

from vitools import validate
from vitools.families.flow import _FlowDistribution, _soft_clip
from vitools.families.gaussian import FullRank, FullRankParams, _check_whiten
from vitools.targets import Target

__all__ = ["Coupling", "CouplingParams"]


class CouplingParams(NamedTuple):
    loc: jax.Array
    raw_tril: jax.Array  # as FullRankParams.raw_tril: the final affine map's Cholesky factor
    # The array leaves of flowjax's Scan of coupling layers (eqx.partition; None elsewhere), each
    # with a leading layer axis; Linear weights stored times their fan-in (see _stored).
    layers: Any


# The spline acts on [-4, 4] of the frame's standard-normal scale (the identity outside: 6e-5 of
# N(0, 1) mass), with 8 bins, flowjax's and the paper's usual choice.
_SPLINE_INTERVAL, _SPLINE_KNOTS = 4.0, 8


def _affine_transformer() -> Affine:
    """y = mu + exp(soft_clip(s)) x, identity at mu = s = 0.

    The log-scale goes through IAF's soft clip (squashed into (-5, 3), gradient fading at the
    bounds) rather than flowjax's default ``softplus`` scale, which has no upper bound: the
    reasons measured for IAF (:func:`vitools.families.flow._soft_clip`) hold for any affine
    layer driven by a network.
    """
    return eqx.tree_at(
        lambda affine: affine.scale,
        Affine(),
        replace=Parameterize(lambda s: jnp.exp(_soft_clip(s)), jnp.zeros(())),
    )


def _transformer(kind: str):
    if kind == "affine":
        return _affine_transformer()
    return RationalQuadraticSpline(knots=_SPLINE_KNOTS, interval=_SPLINE_INTERVAL)


def _build(family: Coupling, dim: int, key: jax.Array) -> Scan:
    """flowjax's Scan of ``num_layers`` (coupling layer, then reversal) pairs, random weights."""
    width, depth = family._hidden(dim)[0], len(family._hidden(dim))
    transformer = _transformer(family.transformer)

    def make_layer(key):
        layer = CouplingLayer(
            key,
            transformer=transformer,
            untransformed_dim=dim // 2,
            dim=dim,
            nn_width=width,
            nn_depth=depth,
            nn_activation=jax.nn.elu,  # as IAF (NumPyro's AutoIAFNormal): smooth, so is q's density
        )
        return Chain([layer, Flip((dim,))])

    return Scan(eqx.filter_vmap(make_layer)(jax.random.split(key, family.num_layers)))


def _structure(family: Coupling, dim: int) -> Scan:
    """The flow's structure (everything but its float arrays), for ``eqx.combine`` with params.

    Built afresh in each trace: flowjax's coupling layer closes over its transformer's initial
    values, so a structure cached from one trace would hold that trace's tracers (and
    ``jax.ensure_compile_time_eval`` breaks paramax's ``error_if`` check). The fixed key only
    fills weights that are dropped here, and XLA drops their computation from the program.
    """
    return eqx.partition(_build(family, dim, jax.random.key(0)), eqx.is_inexact_array)[1]


def _is_weight(path) -> bool:
    return getattr(path[-1], "name", None) == "weight"


def _stored(layers: Any, inverse: bool = False) -> Any:
    """Linear weights (layer, out, in) times their fan-in ``in``; biases as they are.

    The reason is IAF's and FullRank's (:func:`vitools.families.flow._fan_in`): Adam moves each
    parameter by about the learning rate per step, so unscaled, a layer with n inputs would move
    its outputs n times faster than a bias, and vt.fit's default rates (set for Gaussian families)
    would be n times too large for the networks.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, a: (a / a.shape[-1] if inverse else a * a.shape[-1]) if _is_weight(path) else a,
        layers,
    )


@jax.jit
def _initial_layers(family: Coupling, key: jax.Array, loc: jax.Array) -> Any:
    """The layers' stored parameters (:func:`_stored`), every layer exactly the identity.

    Hidden weights are drawn as equinox's ``Linear`` draws them, U(±1/sqrt(fan-in)), but in one
    draw for all: equinox's initialisers draw once per array, and each draw compiles its own
    random-bits kernel (2.3 s of CPU to compile this program at d = 4 that way, 0.3 s in one
    draw; measured). Biases start at 0. The random weights only break the symmetry between
    hidden units: the output layer is zero, so q is the initial Gaussian whatever the key.
    """
    shapes = eqx.filter_eval_shape(_build, family, loc.shape[0], key)
    shapes = eqx.partition(shapes, lambda a: isinstance(a, jax.ShapeDtypeStruct))[0]
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [int(np.prod(a.shape)) for _, a in leaves]
    bits = jnp.split(jax.random.uniform(key, (sum(sizes),), loc.dtype, -1.0, 1.0), np.cumsum(sizes)[:-1])
    values = [
        u.reshape(a.shape) / np.sqrt(a.shape[-1]) if _is_weight(path) else jnp.zeros(a.shape, loc.dtype)
        for (path, a), u in zip(leaves, bits, strict=True)
    ]
    layers = jax.tree.unflatten(tree, values)
    # Zero output layer: the transformer's parameters stay at their initial values (flowjax adds
    # the network's output to them), the identity for both transformers. Its gradient (hidden
    # activations x the output's gradient) is not zero, so each layer leaves the identity on the
    # first step.
    output = lambda flow: flow.bijection.bijections[0].conditioner.layers[-1]  # noqa: E731
    zeroed = eqx.tree_at(lambda linear: linear.weight, output(layers), replace_fn=jnp.zeros_like)
    return _stored(eqx.tree_at(output, layers, replace=zeroed))


class _BijectionTransform(Transform):
    """A flowjax bijection over R^d as a NumPyro transform (the forward pass returns its log det)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, bijection):
        self.bijection = bijection

    def __call__(self, x):
        return self.bijection.transform(x)

    def _inverse(self, y):
        return self.bijection.inverse(y)

    def call_with_intermediates(self, x):
        return self.bijection.transform_and_log_det(x)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        if intermediates is not None:
            return intermediates
        return self.bijection.transform_and_log_det(x)[1]

    def tree_flatten(self):
        return (self.bijection,), (("bijection",), {})


class _CouplingDistribution(_FlowDistribution):
    """q: base, then the coupling flow, then the affine map. ``log_prob`` inverts each layer and
    reads its log det in the same pass (NumPyro's would redo the forward pass for it)."""

    def log_prob(self, value, intermediates=None):
        if intermediates is not None:
            return super().log_prob(value, intermediates)
        flow, affine = self.transforms
        x = affine.inv(value)
        eps, log_det_inverse = flow.bijection.inverse_and_log_det(x)
        return self.base_dist.log_prob(eps) + log_det_inverse - affine.log_abs_det_jacobian(x, value)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Coupling:
    """Coupling-flow layers (affine or spline) followed by a full-rank affine map.

    Draws and ``log_prob`` each cost one network pass per layer (no iterative inverse), so
    forward KL, which needs log q at draws it did not make, runs at d ~ 100. ``init`` returns
    layers that are exactly the identity (each network's last layer is zero), so q starts as the
    initial Gaussian. Parameters: the affine map's d + d(d+1)/2, plus per layer a network from
    ⌊d/2⌋ inputs through ``hidden_dims`` to ⌈d/2⌉ x (2 for affine, 28 for the spline) outputs.

    Args:
        num_layers: coupling layers (K); the halves swap between consecutive layers, so K >= 2
            transforms every coordinate.
        hidden_dims: hidden widths of each layer's network (flowjax's MLP: all equal), each a
            positive integer; None: (2 d, 2 d), as IAF. The networks use ELU.
        transformer: ``"affine"`` (RealNVP) or ``"spline"`` (rational-quadratic, 8 bins on
            [-4, 4] of the base's scale, identity outside). Affine is the default: on the banana
            (default vt.fit, seed 0) it reached W1 0.047 (reverse KL) and 0.042 (forward KL)
            against the spline's 0.25 and 1.95 (full-rank: 0.47 and 0.16; measured,
            benchmarks/results/flows.md).
        whiten: the frame ``vt.fit`` runs in; ``"full"`` (default), ``"diagonal"`` or False.

    Raises:
        ValueError: ``num_layers`` or a width is not a positive integer, ``hidden_dims`` is
            empty or its widths differ, ``transformer`` or ``whiten`` is not one of the above;
            from ``init``, a one-dimensional target (a coupling layer needs a coordinate to
            condition on).

    Examples:
        >>> fit = vt.fit(model, objective="forward_kl", family=Coupling(num_layers=4))
        >>> draws = fit.sample(1000)
    """

    num_layers: int = dataclasses.field(default=4, metadata=dict(static=True))
    hidden_dims: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))
    transformer: str = dataclasses.field(default="affine", metadata=dict(static=True))
    name: str = dataclasses.field(default="coupling", metadata=dict(static=True))
    # Ends in a full affine map, so like FullRank it is closed under affine maps and vt.fit may
    # fit it in the frame of the initial Gaussian's Cholesky factor.
    whiten: str | bool = dataclasses.field(default="full", metadata=dict(static=True))
    # Half the objective's default rate (FamilyHooks.learning_rate_scale; measured, banana, 6 seeds,
    # median w1): IWAE(16) ran away on 3 of 6 seeds at the full rate (w1 4.7-5662) and on none at
    # half (0.21); reverse KL 0.118 -> 0.044, forward KL 0.032 -> 0.030; eight schools unchanged
    # (IWAE 0.057 -> 0.053, reverse KL 0.030 -> 0.031; 3 seeds). A third cost eight schools' IWAE.
    learning_rate_scale: ClassVar[float] = 0.5

    def __post_init__(self):
        object.__setattr__(self, "num_layers", validate.count(self.num_layers, "Coupling num_layers"))
        if self.hidden_dims is not None:
            kind = "equal positive integers (flowjax's MLP has one width)"
            hidden = validate.widths(self.hidden_dims, "Coupling hidden_dims", kind)
            if len(set(hidden)) > 1:
                raise validate.ArgumentValueError(
                    f"Coupling hidden_dims must be None or a non-empty sequence of {kind}, got {hidden!r}",
                    "Coupling hidden_dims",
                )
            object.__setattr__(self, "hidden_dims", hidden)
        validate.choice(self.transformer, "Coupling transformer", ("affine", "spline"))
        _check_whiten(self.whiten, "Coupling whiten")

    def _hidden(self, dim: int) -> tuple[int, ...]:
        # Default (2 d, 2 d), IAF's (measured there on funnels; see vitools.families.flow).
        return self.hidden_dims if self.hidden_dims is not None else (2 * dim, 2 * dim)

    def init(self, key: jax.Array, target: Target, loc: jax.Array, scale_tril: jax.Array) -> CouplingParams:
        """Identity layers under the affine map of N(loc, scale_tril scale_trilᵀ): exactly that Gaussian."""
        dim = loc.shape[0]
        if dim < 2:
            raise ValueError(
                "Coupling needs a target of dimension 2 or more (a coupling layer transforms one "
                "half of the coordinates given the other); use FullRank in one dimension"
            )
        affine = FullRank().init(key, target, loc, scale_tril)
        return CouplingParams(affine.loc, affine.raw_tril, _initial_layers(self, key, loc))

    def _transforms(self, params: CouplingParams) -> list:
        dim = params.loc.shape[0]
        structure = _structure(self, dim)
        flow = eqx.combine(_stored(params.layers, inverse=True), structure)
        scale_tril = FullRank.scale_tril(FullRankParams(params.loc, params.raw_tril))
        return [_BijectionTransform(flow), LowerCholeskyAffine(params.loc, scale_tril)]

    def _base(self, params: CouplingParams, scale: float) -> dist.Distribution:
        dim = params.loc.shape[0]
        zeros = jnp.zeros(dim, dtype=params.loc.dtype)
        scales = jnp.full(dim, scale, dtype=params.loc.dtype)
        return dist.Normal(zeros, scales, validate_args=False).to_event(1)  # valid by construction

    def distribution(self, params: CouplingParams) -> dist.Distribution:
        return _CouplingDistribution(self._base(params, 1.0), self._transforms(params), validate_args=False)

    def widened(self, params: CouplingParams, factor: float) -> dist.Distribution:
        """The same flow and affine map applied to N(0, factor² I)."""
        return _CouplingDistribution(
            self._base(params, factor), self._transforms(params), validate_args=False
        )
