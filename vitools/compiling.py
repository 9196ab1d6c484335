"""How vitools compiles the programs a fit runs once: at LLVM's lowest optimisation level.

A fit's set-up programs (its keys, frame and start) and its start's larger programs (the model's
initial point, the Laplace init) run once or a few times per model, so their compilation is most of
their cost. At LLVM -O0 they compile in about half the time (XLA's graph passes, fusion included,
run at either level; results agree to float rounding); their generated loops run slower, which
matters only over large data. The compiled loop's own choice is :func:`vitools.engine.quick_compile`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["QUICK", "QUICK_SIZE", "setup_jit", "sized_jit"]

QUICK = {"xla_backend_optimization_level": 0}  # jax.jit's compiler_options for LLVM -O0
# Data (numbers in the program's arrays) below which a run-once program compiles at -O0. The
# Laplace init on the engine benchmark's logistic regressions (float32, a loaded 2-core machine, CPU
# s) compiled in 2.4-2.9 s instead of 4.3-4.8 s; its run took 0.53 s instead of 0.40 s at 10^4 rows x
# 51 and 2.1 s instead of 0.81 s at 10^5 x 51 (measured), where the two levels break even.
QUICK_SIZE = 10**6


def setup_jit(fun: Callable | None = None, **jit_kwargs: Any) -> Callable:
    """``jax.jit`` at LLVM's lowest optimisation level, for the small programs a fit runs once or
    a few times to set itself up (its frame, its keys, its start's set-up). A program of two splits
    and two normal draws compiled in 0.35 s instead of 1.13 s at the default level (measured, a
    loaded 2-core machine, CPU seconds). Usable as ``@setup_jit`` or ``setup_jit(static_argnames=...)``.

    JAX refuses compiler options on a jit inside another trace (``jax.eval_shape``, an outer
    jit): called with traced arguments, the function is a plain ``jax.jit``, which the outer
    program inlines.
    """
    if fun is None:
        return functools.partial(setup_jit, **jit_kwargs)
    quick, plain = jax.jit(fun, compiler_options=QUICK, **jit_kwargs), jax.jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs)))
        return (plain if traced else quick)(*args, **kwargs)

    return call


def sized_jit(fun: Callable, **jit_kwargs: Any) -> Callable[[Any], Callable]:
    """``program(data)``: ``fun`` jitted at LLVM -O0 when ``data`` (any pytree of arrays: the
    model's arguments, a Target) holds fewer than :data:`QUICK_SIZE` numbers, else at the default
    level. For the run-once programs whose run grows with the data (the initial point, the Laplace
    init). Both jitted functions are made once, so each keeps its own compilation cache."""
    quick = jax.jit(fun, compiler_options=QUICK, **jit_kwargs)
    default = jax.jit(fun, **jit_kwargs)

    def program(data: Any) -> Callable:
        size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(data))
        return quick if size < QUICK_SIZE else default

    return program
