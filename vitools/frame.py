r"""The affine frame a fit runs in: ``u = shift + scale v``.

``u`` is a flat draw in the model's unconstrained space, ``v`` the same draw in the frame.
``scale`` is a vector ``(dim,)`` (elementwise) or a lower-triangular matrix ``(dim, dim)`` with
a positive diagonal; every branch on which of the two it is lives here. ``vt.fit`` runs in the
frame of its initial Gaussian (:mod:`vitools.start`): Adam's per-coordinate steps then mean the
same on every coordinate, whether a posterior sd is 1e-3 (a slope on calendar years) or 1e3,
and, with the matrix, whatever the correlations. A family's parameters (``Fit.params``) are
coordinates in the frame; ``Fit.distribution``, ``Fit.sample`` and ``Fit.mean_and_covariance``
map them to the model's space through it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

__all__ = ["Frame"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Frame:
    """``u = shift + scale v``: ``shift`` ``(dim,)``; ``scale`` ``(dim,)`` or ``(dim, dim)``.

    Raises:
        ValueError: from :meth:`checked`, shapes that do not fit one dimension.
    """

    shift: jax.Array
    scale: jax.Array

    @classmethod
    def identity(cls, dim: int, dtype=None, matrix: bool = False) -> Frame:
        """``u = v``, held as a vector scale or (``matrix=True``) as the identity matrix, so a fit
        in it compiles to the same program as one in a matrix frame."""
        shift = jnp.zeros(dim, dtype)
        return cls(shift, jnp.eye(dim, dtype=shift.dtype) if matrix else jnp.ones(dim, shift.dtype))

    def checked(self) -> Frame:
        """This frame, after checking that its shapes fit one dimension."""
        dim = self.shift.shape[0] if self.shift.ndim == 1 else -1
        if dim < 0 or self.scale.shape not in ((dim,), (dim, dim)):
            raise ValueError(
                f"a frame needs shift (dim,) and scale (dim,) or (dim, dim); got {self.shift.shape} "
                f"and {self.scale.shape}"
            )
        return self

    @property
    def is_matrix(self) -> bool:
        return self.scale.ndim == 2

    def forward(self, v: jax.Array) -> jax.Array:
        """A flat draw of the frame → the model's flat unconstrained space."""
        if self.is_matrix:
            return self.shift + self.scale @ v
        return self.shift + self.scale * v

    def inverse(self, u: jax.Array) -> jax.Array:
        """A flat draw of the model's unconstrained space → the frame."""
        if self.is_matrix:
            return jax.scipy.linalg.solve_triangular(self.scale, u - self.shift, lower=True)
        return (u - self.shift) / self.scale

    def log_abs_det(self) -> jax.Array:
        """log |det ∂u/∂v| (nats): added to a log density of ``u`` to give one of ``v``."""
        diagonal = jnp.diagonal(self.scale) if self.is_matrix else self.scale
        return jnp.sum(jnp.log(diagonal))

    def compose(self, loc: jax.Array, scale: jax.Array) -> Frame:
        """The frame of ``v = loc + scale w`` inside this one: ``u = forward(loc + scale w)``.

        Vectors act elementwise and matrices multiply, so two vector frames make a vector frame.
        """
        outer = self.scale
        if outer.ndim == 1 and scale.ndim == 1:
            composed = outer * scale
        else:
            outer = jnp.diag(outer) if outer.ndim == 1 else outer
            composed = outer @ (jnp.diag(scale) if scale.ndim == 1 else scale)
        return Frame(self.forward(loc), composed)

    def covariance_to_model(self, covariance: jax.Array) -> jax.Array:
        """A covariance ``(dim, dim)`` of ``v`` → that of ``u``: ``scale cov scaleᵀ``."""
        scale = self.scale if self.is_matrix else jnp.diag(self.scale)
        return scale @ covariance @ scale.T

    def transform(self) -> dist.transforms.Transform:
        """The map ``v → u`` as a NumPyro transform (event dim 1)."""
        if self.is_matrix:
            return dist.transforms.LowerCholeskyAffine(self.shift, self.scale)
        return dist.transforms.IndependentTransform(
            dist.transforms.AffineTransform(self.shift, self.scale), 1
        )
