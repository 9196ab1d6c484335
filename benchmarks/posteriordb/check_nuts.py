"""Check the translations against the reference draws with NUTS: a translation NUTS cannot match
is a translation bug.

Runs NumPyro NUTS (one chain, float64, started at the prior median) on each named posterior and
prints, per scalar parameter, |mean - ref mean|/ref sd, the sd ratio and W1/ref sd (see
``scoring``), then the mean W1/sd: exact draws reach about 0.04-0.06.

Run: ``.venv/bin/python benchmarks/posteriordb/check_nuts.py [names...] [--warmup 1000 --draws 1000]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import jax  # noqa: E402
import numpyro  # noqa: E402
from numpyro.infer import init_to_median  # noqa: E402

from benchmarks.baselines import run_nuts  # noqa: E402
from benchmarks.common import markdown_table, now  # noqa: E402
from benchmarks.posteriordb import POSTERIORS, load  # noqa: E402
from benchmarks.posteriordb.scoring import headline, reference_summary, score  # noqa: E402


def check(name: str, num_warmup: int, num_draws: int, seed: int) -> dict:
    model, data, reference = load(name)
    # NumPyro's default init (uniform in (-2, 2) unconstrained) can start Lotka-Volterra where the
    # solver overshoots to a negative population (log of it: NaN, which validation rejects): start
    # at the prior median (a flat prior's site falls back to the uniform init). From there NUTS
    # needs Stan's 1000 warm-up iterations on Lotka-Volterra: after 500 it was still leaving a
    # local mode (237 divergences, W1/sd 0.9; 0 and 0.05 after 1000).
    key = jax.random.PRNGKey(seed)
    mcmc, seconds, divergences = run_nuts(
        key, model, (data,), num_warmup=num_warmup, num_draws=num_draws, init_strategy=init_to_median
    )
    table = score(jax.device_get(mcmc.get_samples()), reference, reference_summary(name))
    print(f"## {name}: {seconds:.1f} s, {divergences} divergences", flush=True)
    print(table.round(3).to_string(), flush=True)
    result = headline(table) | {"seconds": seconds, "divergences": divergences}
    print(f"mean W1/sd {result['w1']:.3f}, max |mean error|/sd {result['max_mean_error']:.3f}\n", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="posteriors (default: all)")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", default="", help="also write the summary as a markdown table here")
    args = parser.parse_args(argv)
    numpyro.enable_x64()  # Stan's doubles; before any JAX array exists
    results = {name: check(name, args.warmup, args.draws, args.seed) for name in args.names or POSTERIORS}
    for name, r in results.items():
        print(
            f"{name:<45} W1/sd {r['w1']:.3f}  max mean err {r['max_mean_error']:.3f}  "
            f"sd ratio {r['min_sd_ratio']:.2f}-{r['max_sd_ratio']:.2f}  {r['seconds']:.0f} s  "
            f"{r['divergences']} div"
        )
    if args.write:
        header = ["posterior", "W1/sd", "max mean err/sd", "sd ratio", "divergences", "seconds"]
        rows = [
            [name, r["w1"], r["max_mean_error"], f"{r['min_sd_ratio']:.2f}-{r['max_sd_ratio']:.2f}"]
            + [r["divergences"], r["seconds"]]
            for name, r in results.items()
        ]
        Path(args.write).write_text(
            f"# NUTS against the posteriordb references ({now()})\n\n"
            f"`check_nuts.py`: one chain, {args.warmup} warm-up + {args.draws} draws, seed {args.seed}, "
            "float64, started at the prior median; scores as in `posteriordb/scoring.py` (exact draws: "
            "W1/sd about 0.04-0.06 against 1000 reference draws; one chain's 1000 draws have a smaller "
            "effective size, hence a little more).\n\n" + markdown_table(header, rows) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
