"""A comparison report on disk: ``report.md`` (images linked) and ``report.html`` (images embedded).

Both hold the :func:`vitools.comparison.compare` table, the four plots of :mod:`vitools.plots` and a short
"how to read this" section written from the table (which fits PSIS flags, which one is closest to the
reference). The PNGs are written next to the two files, so the markdown renders anywhere the folder
is copied, and the HTML is one self-contained file to attach or open in a browser.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import pandas as pd

from vitools.advice import TRIED, already_tried, next_steps, which_to_trust
from vitools.comparison import compare
from vitools.convert import DIAGNOSTIC_DRAWS, draws_to_datatree, to_datatrees
from vitools.importance import khat_threshold
from vitools.plots import plot_khat, plot_marginal_pages, plot_pair, plot_traces
from vitools.result import Fit
from vitools.tables import format_table

__all__ = ["ReportPaths", "how_to_read", "report", "write_report"]

_LINES = (
    "Lines: a Gaussian fit's exact density, marked *exact density*; a KDE of the draws for other fits "
    "and for the parameters named under the panels. Positive parameters spread over more than a factor "
    "of 10, or clearly skewed to the right, are on a log axis, with densities of log x."
)
_CONTOURS = "50% (solid) and 90% (dashed) highest-density contours (exact for Gaussian fits, KDE otherwise)."
FIGURES = {  # file stem -> (heading, caption), the captions of a report with a reference
    "marginals": (
        "Marginal densities",
        f"Each fit's marginal density per parameter over the reference (shaded). {_LINES}",
    ),
    "pair": (
        "Pair plot",
        f"The two most correlated parameters: reference draws (grey points) and each fit's {_CONTOURS}",
    ),
    "khat": (
        "Pareto k̂",
        "PSIS k̂ of each fit's importance weights against the sample-size threshold (dashed). "
        "Error bars: k̂ ± 2 Monte Carlo sd, the interval the verdict reads (the table lists "
        "k̂ ± 1 sd). A bar's colour is what k̂ alone says: green when k̂ + 2 sd is below the "
        "threshold, amber when k̂ ± 2 sd straddles it, red when k̂ − 2 sd is above it. A fit's "
        "verdict may be worse for other reasons (a PSIS mean shift, missed mass, no convergence), "
        "listed under the table.",
    ),
    "traces": (
        "Optimisation traces",
        "Loss and importance ESS per step (faint: raw, solid: moving average); each loss is drawn "
        "minus its final value, given in the legend.",
    ),
}
# the captions that differ without a reference: the plots then shade nothing and draw no grey points
UNREFERENCED = {
    "marginals": f"Each fit's marginal density per parameter (no reference given). {_LINES}",
    "pair": f"The two parameters most correlated in the first fit's draws: each fit's {_CONTOURS}",
}


def _captions(reference: bool) -> dict[str, tuple[str, str]]:
    """``FIGURES`` (plot name -> heading, caption) for a report with or without a reference."""
    if reference:
        return dict(FIGURES)
    return {name: (heading, UNREFERENCED.get(name, caption)) for name, (heading, caption) in FIGURES.items()}


class ReportPaths(NamedTuple):
    """Where :func:`write_report` wrote: the two documents and the PNGs by plot name (a list, one
    per page); with :func:`report`, the table it wrote too."""

    markdown: Path
    html: Path
    images: dict[str, list[Path]]
    table: pd.DataFrame | None = None


def how_to_read(
    table: pd.DataFrame,
    num_draws: int = DIAGNOSTIC_DRAWS,
    candidates: Sequence[str] | None = None,
    auto_paths: Sequence[Any] = (),
) -> list[str]:
    """The "how to read this" paragraphs (markdown, one string each), specific to ``table``.

    Args:
        table: a :func:`vitools.comparison.compare` table.
        num_draws: S, the draws per fit behind the table's k̂ (sets the threshold).
        candidates: the rows that may be named closest to/furthest from the reference (default: all;
            leave out the reference's own row, e.g. "NUTS", which reads w1 = 0).
        auto_paths: the automatic mode's paths (``fit.auto``) of the report's fits: a next step one
            of them already took is said to be tried, not suggested (:func:`vitools.advice.already_tried`).
    """
    num_draws = int(table.attrs.get("num_draws", num_draws))
    threshold = khat_threshold(num_draws)
    missed = "missed_mass" in table and table["missed_mass"].notna().any()
    paragraphs = [
        f"**Verdict.** Each fit reads *good*, *uncertain* or *bad*, for the reasons listed under the "
        f"table. k̂ is the Pareto shape of the importance weights w = p/q at S = {num_draws} draws from "
        "each fit (PSIS), shown ± its Monte Carlo sd (a bootstrap over the draws): below "
        f"{threshold:.2f} = min(1 − 1/log10 S, 0.7) q is a usable proposal, above it q misses posterior "
        "mass that p has; when k̂ ± 2 sd straddles the threshold the fit reads *uncertain* (more draws "
        "decide). A fit whose PSIS-reweighted mean or sd moves more than 0.1 of q's sd from q's own is "
        "biased and reads *bad* even with a low k̂; so does a fit whose evidence estimate shows it misses mass"
        f"{' (below)' if missed else ''}, and one whose optimisation did not converge reads at best "
        "*uncertain*. k̂ only sees "
        "where q puts draws: a fit locked onto one of two separated modes can have a low k̂.",
        "**ESS.** The importance effective sample size 1/Σw̄² of those S draws: how many independent "
        "posterior draws they are worth after weighting (S when q equals p up to a constant). ESS, "
        f"the log evidence{' and the missed mass' if missed else ''} are importance-weighted: a `?` "
        "marks them where k̂ is above threshold, where they cannot be trusted.",
        "**Log evidence.** `log_evidence` is the importance-sampling estimate of log p(x) ± its Monte "
        "Carlo error; `elbo` is the mean log weight. ELBO ≤ log p(x), and the gap between the two "
        "columns estimates KL(q‖p). Trust the log-evidence estimate only where k̂ is below threshold.",
    ]
    if missed:  # NaN (the column left out) where nothing anchors it: one fit, no true log evidence
        anchor = table.attrs.get("missed_mass_anchor")
        if anchor is None:  # a table made before compare recorded its anchor
            against = "the anchor (the most trusted fit's estimate)"
        elif anchor["fit"] is None:
            against = f"the model's true log evidence ({anchor['log_evidence']:.3g}, given)"
        else:
            value, se = anchor["log_evidence"], anchor["log_evidence_se"]
            against = (
                f"that of **{anchor['fit']}** ({value:.3g} ± {se:.2g}: "
                "of the fits whose k̂ is under threshold, those that read good first, the estimate whose "
                "lower end, log evidence − 2 se, is highest)"
            )
        paragraphs.append(
            "**Missed mass.** An importance estimate of the evidence from q only counts the posterior "
            f"mass where q puts draws, so a fit whose estimate falls short of {against} by g misses "
            "about 1 − e^(−g) of the mass (`missed_mass`). Unlike k̂ it sees modes a fit never visits; "
            "read it against the log-evidence errors: a `?` also marks a share whose gap is within twice "
            "its Monte Carlo error (it may be 0)."
        )
    if "time_s" in table and table["time_s"].notna().any():
        paragraphs.append(
            "**Cost.** `grad_evals` counts evaluations of the model's log-density gradient, the start's "
            "included; `time_s` is seconds: a fit's start, the compilation of its loop and the loop (an "
            "automatic fit's: every attempt; an MCMC run's, where recorded: its run, compilation "
            "included). A model's first fit in a process compiles programs that later fits reuse, so "
            "compare the fits' costs by `grad_evals`."
        )
    shown = table[table["w1"].notna()] if "w1" in table else table.iloc[:0]
    if candidates is not None:
        shown = shown[shown.index.isin(list(candidates))]
    if not shown.empty:
        ranked = shown.sort_values("w1")
        best = ranked.index[0]
        text = (
            "**Against the reference.** `mean_error` is |mean − reference mean| and `w1` the 1-D "
            "Wasserstein distance, both in reference sds and averaged over parameters; `sd_ratio` < 1 "
            f"means too narrow. Closest to the reference: **{best}** (w1 {ranked['w1'].iloc[0]:.3g}"
        )
        text += f", sd_ratio {ranked['sd_ratio'].iloc[0]:.3g})" if "sd_ratio" in ranked else ")"
        if len(ranked) > 1:
            text += f"; furthest: **{ranked.index[-1]}** (w1 {ranked['w1'].iloc[-1]:.3g})"
        divergences = table.attrs.get("reference_divergences", 0)
        if divergences:
            text += (
                f". **The reference had {divergences} divergent transitions**: its draws may miss part of "
                "the posterior, so a fit that covers it can read further from them than it is"
            )
        paragraphs.append(text + ".")
    if "verdict" in table:
        bad = [str(name) for name, v in table["verdict"].items() if v == "bad"]
        if bad:
            paragraphs.append(f"**Read as bad:** {', '.join(bad)} (reasons under the table).")
        paragraphs.append(f"**Which to trust.** {which_to_trust(table, candidates)}")
        for name, step in next_steps(table).items():
            change = f"try `{step.as_arguments()}` ({step.why})" if step.options else step.why
            if any(already_tried(step, table.loc[name], path) for path in auto_paths):
                change = TRIED.format(change=f"`{step.as_arguments()}`")
            paragraphs.append(f"**Next step for {name}** ({table.loc[name, 'verdict']}): {change}.")
    return paragraphs


def _figures(
    trees: Mapping[str, Any],
    table: pd.DataFrame,
    reference: Any,
    num_draws: int,
    var_names: Any,
    exact: Mapping[str, Any],
) -> dict[str, Any]:
    """Make each plot from the fits' trees (a list of figures for the marginals, a page per 12
    parameters); a plot that cannot be drawn for these fits becomes the reason (a string)."""
    exact = {name: fit for name, fit in exact.items() if name in trees}
    makers = {
        "marginals": lambda: plot_marginal_pages(
            trees, reference=reference, var_names=var_names, exact=exact
        ),
        "pair": lambda: plot_pair(trees, reference=reference, var_names=var_names, exact=exact),
        "khat": lambda: plot_khat(table, num_draws=num_draws),
        "traces": lambda: plot_traces(trees),
    }
    out: dict[str, Any] = {}
    for name, make in makers.items():
        try:
            out[name] = make()
        except ValueError as err:  # e.g. a 1-parameter model has no pair plot, MCMC-only tables no k̂
            out[name] = str(err)
    return out


def report(
    fits: Mapping[str, Any],
    reference: Any = None,
    out: str | Path = "vitools-report",
    *,
    title: str = "vitools comparison",
    notes: Sequence[str] = (),
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
    var_names: Sequence[str] | None = None,
    log_evidence: float | None = None,
) -> ReportPaths:
    """Compare fits of one model and write the report: the :func:`vitools.comparison.compare`
    table, how to read it, and the plots, as ``out/report.md`` (PNGs linked) and ``out/report.html``
    (one self-contained file).

    Takes exactly what ``vt.compare`` takes; each Fit is drawn from once (``num_draws`` draws with
    ``seed``, the draws ``vt.diagnose`` uses by default), and the table and every plot read those
    draws.

    Args:
        fits: ``{name: Fit | MCMC | DataTree}``, fits of one model; or one ``Fit``.
        reference: ``None``; a key of ``fits`` (e.g. ``"NUTS"``: that entry is the shaded reference
            of the plots and is not named closest to itself); or posterior draws: an MCMC that has
            run, a DataTree, a dict ``site -> (S, ...)`` of constrained draws, a zoo ``Reference``.
        out: the report folder, created if needed; report files in it are overwritten.
        title: the report's heading.
        notes: lines under the heading (model, data, settings), markdown allowed.
        num_draws: draws from each Fit's q (at least 25 for PSIS).
        seed: the seed of those draws.
        var_names: the sites to plot (default: all, over as many marginal figures as they need).
        log_evidence: the model's true log evidence in nats, where known: the anchor of
            ``missed_mass`` (see :func:`vitools.comparison.compare`).

    Returns:
        ``markdown``, ``html``, the PNGs by plot name (``images[name]``, a list of
            paths, one per page), and the ``table`` (also written to ``out/table.csv``).

    Raises:
        ValueError: as :func:`vitools.comparison.compare` (fits of different models, ...).
        KeyError: ``reference`` is a string that is not a key of ``fits``.
        TypeError: as :func:`vitools.comparison.compare` (a kind it cannot read).
        OSError: ``out`` cannot be created or written.

    Examples:
        >>> fit_f = vt.fit(model, x, y=y, objective="forward_kl", seed=0)
        >>> fits = {"reverse KL": fit, "forward KL": fit_f, "NUTS": mcmc}
        >>> vt.report(fits, reference="NUTS", out="rep")
        ReportPaths(markdown=PosixPath('rep/report.md'), html=PosixPath('rep/report.html'), ...)
    """
    fits = {fits.name: fits} if isinstance(fits, Fit) else fits  # one fit: named by its name
    trees = to_datatrees(fits, num_draws=num_draws, seed=seed)
    table = compare(trees, reference=reference, num_draws=num_draws, seed=seed, log_evidence=log_evidence)
    paths = write_report(
        trees,
        table,
        out,
        exact={name: fit for name, fit in fits.items() if isinstance(fit, Fit)},
        reference=reference,
        title=title,
        notes=notes,
        num_draws=num_draws,
        seed=seed,
        var_names=var_names,
    )
    table.to_csv(Path(out) / "table.csv")
    paths = paths._replace(table=table)
    return paths


def write_report(
    fits: Mapping[str, Any],
    table: pd.DataFrame,
    out_dir: str | Path,
    reference: Any = None,
    title: str = "vitools comparison",
    notes: Sequence[str] = (),
    num_draws: int = DIAGNOSTIC_DRAWS,
    seed: int = 0,
    dpi: int = 110,
    var_names: Sequence[str] | None = None,
    exact: Mapping[str, Any] | None = None,
) -> ReportPaths:
    """Write ``out_dir/report.md``, ``out_dir/report.html`` and the plots as PNGs in ``out_dir``,
    from a table already made (:func:`report` makes it and calls this).

    Args:
        fits: ``{name: Fit | MCMC | DataTree}``, the fits in the table (not the reference). Each is
            converted once (:func:`vitools.convert.to_datatrees`, every fit with ``seed``)
            and every plot reads that tree; pass the trees given to ``compare`` so that the
            table and the plots read the same draws and nothing is drawn twice.
        table: their :func:`vitools.comparison.compare` table.
        out_dir: created if needed; existing report files in it are overwritten.
        reference: what the fits are plotted against: a key of ``fits`` (that entry becomes the
            reference) or posterior draws (see :func:`vitools.plots.plot_marginals`).
        title: the report's heading.
        notes: lines under the heading (model, reference source, settings), markdown allowed.
        num_draws: draws per fit behind the table and the plots (compare's ``num_draws``).
        seed: base seed of the draws from Fits (compare's ``seed``, so plots and table see the same draws).
        dpi: resolution of the PNGs.
        var_names: the sites to plot (default: all, the marginals over as many pages as needed).
        exact: ``{name: Fit}`` behind tree entries of ``fits``, for exact Gaussian densities in the
            plots (default: the Fits among ``fits``); nothing is drawn again.

    Returns:
        The paths written (``images[name]``: a list of PNGs, one per page).

    Raises:
        OSError: ``out_dir`` cannot be created or written.
        TypeError: a fit or the reference cannot be read (see :func:`vitools.convert.to_datatree`).
        ValueError: a fit or the reference cannot be read (see :func:`vitools.convert.to_datatree`).
        KeyError: ``reference`` is a string that is not a key of ``fits``.

    Examples:
        >>> trees = vt.to_datatrees({"reverse KL": fit})
        >>> table = vt.compare(trees, reference=mcmc)
        >>> paths = write_report(trees, table, "report/", reference=mcmc)
        >>> paths.markdown
        PosixPath('report/report.md')
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trees = to_datatrees(fits, num_draws=num_draws, seed=seed)
    if isinstance(reference, str):  # a key of fits: the shaded reference, not a fit among the others
        if reference not in trees:
            raise KeyError(f"reference {reference!r} is not one of the fits: {list(trees)}")
        reference = trees.pop(reference) if len(trees) > 1 else trees[reference]
    elif reference is not None:  # read once, for both plots
        reference = draws_to_datatree(reference, what="reference draws")
    exact = {n: f for n, f in fits.items() if isinstance(f, Fit)} if exact is None else exact
    figures = _figures(trees, table, reference, num_draws, var_names, exact)
    images: dict[str, list[Path]] = {}
    for name, made in figures.items():
        if isinstance(made, str):
            continue
        images[name] = []
        for page, fig in enumerate(made if isinstance(made, list) else [made]):
            images[name].append(out / (f"{name}.png" if page == 0 else f"{name}_{page + 1}.png"))
            fig.savefig(images[name][-1], dpi=dpi)
            plt.close(fig)
    markdown_table = format_table(table, "markdown")
    auto_paths = [fit.auto for fit in exact.values() if fit.auto is not None]
    paragraphs = how_to_read(table, num_draws, candidates=list(trees), auto_paths=auto_paths)
    md_path, html_path = out / "report.md", out / "report.html"
    shown = (figures, images, _captions(reference is not None))
    md_path.write_text(_markdown(title, notes, markdown_table, paragraphs, *shown), encoding="utf-8")
    html_path.write_text(_html(title, notes, markdown_table, paragraphs, *shown), encoding="utf-8")
    return ReportPaths(md_path, html_path, images)


def _markdown(title, notes, markdown_table, paragraphs, figures, images, texts) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += ["## Comparison", "", markdown_table, "", "## How to read this", ""]
    for paragraph in paragraphs:
        lines += [paragraph, ""]
    for name, (heading, caption) in texts.items():
        lines += [f"## {heading}", ""]
        if name in images:
            lines += [line for path in images[name] for line in (f"![{heading}]({path.name})", "")]
            lines += [f"*{caption}*", ""]
        else:
            lines += [f"*Not drawn: {figures[name]}*", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """The inline markdown used here (``**bold**``, ``*em*``, backticks) as HTML, escaped first."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"\*(.+?)\*", r"<em>\1</em>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _table_html(markdown_table: str) -> str:
    """``format_table``'s markdown (a GitHub pipe table, then its notes) as HTML with the same cells;
    cells marked ``?`` (importance-weighted, unreliable) are greyed."""
    lines = [line for line in markdown_table.splitlines() if line.strip()]
    rows = [line.strip().strip("|").split("|") for line in lines if line.startswith("|")]
    notes = [line for line in lines if not line.startswith("|")]
    header, body = rows[0], rows[2:]  # rows[1] is the |---| rule

    def cell(text: str, tag: str) -> str:
        text = text.strip()
        grey = ' class="unreliable"' if text.endswith(" ?") else ""
        return f"<{tag}{grey}>{html.escape(text)}</{tag}>"

    def cells(row: list[str], tag: str) -> str:
        return "".join(cell(c, tag) for c in row)

    body_html = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body)
    table = (
        f'<div class="wide"><table><thead><tr>{cells(header, "th")}</tr></thead>'
        f"<tbody>{body_html}</tbody></table></div>"
    )
    items = [n[2:] for n in notes if n.startswith("- ")]
    other = [n for n in notes if not n.startswith("- ")]
    table += "".join(f"<p>{_inline(n)}</p>" for n in other)
    return table + ("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>" if items else "")


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
    ".wide{overflow-x:auto}table{border-collapse:collapse;font-size:0.75em;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:2px 4px;text-align:right;white-space:nowrap}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}td.unreliable{color:#999}"
    "img{max-width:100%}figcaption{color:#555;font-size:0.9em}code{background:#f3f3f3;padding:0 3px}"
)


def _html(title, notes, markdown_table, paragraphs, figures, images, texts) -> str:
    parts = [
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_inline(n)}</li>" for n in notes) + "</ul>")
    parts += ["<h2>Comparison</h2>", _table_html(markdown_table), "<h2>How to read this</h2>"]
    parts += [f"<p>{_inline(p)}</p>" for p in paragraphs]
    for name, (heading, caption) in texts.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if name in images:
            pictures = "".join(
                f'<img alt="{html.escape(heading)}" '
                f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}">'
                for path in images[name]
            )
            parts.append(f"<figure>{pictures}<figcaption>{_inline(caption)}</figcaption></figure>")
        else:
            parts.append(f"<p><em>Not drawn: {html.escape(figures[name])}</em></p>")
    parts.append("</body></html>")
    return "\n".join(parts)
