"""A :func:`vitools.comparison.compare` table as text for a terminal (no wider than a set width),
markdown (the report), CSV or JSON: :func:`format_table`."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import numpy as np
import pandas as pd
import tabulate

from vitools.comparison import WEIGHTED_COLUMNS

__all__ = ["LABEL_WIDTH", "TEXT_WIDTH", "format_table"]

TEXT_WIDTH = 100  # format_table's text: a terminal's width, so nothing wraps mid-number
LABEL_WIDTH = 22  # row names wrap past this


def format_table(df: pd.DataFrame, fmt: str = "text", width: int = TEXT_WIDTH) -> str:
    """Render a :func:`compare` table as ``"text"`` (terminal), ``"markdown"``, ``"csv"`` or ``"json"``.

    Text and markdown join ``khat ± khat_se`` (k̂ alone where its sd is 0, i.e. not estimated: see
    :func:`_khat`) and ``log_evidence ± log_evidence_se`` into one column each, round to 3
    significant figures, mark with ``?`` the importance-weighted cells (``WEIGHTED_COLUMNS``) of
    rows whose k̂ is above threshold (``cubo`` already from k̂ ≥ 0.5, where :math:`E_q[w^2]` may be
    infinite; ``missed_mass`` also where its gap to the anchor is within twice its Monte Carlo
    error, ``table.attrs["missed_mass_unresolved"]``), say why under the table, and list each
    fit's ``reasons`` under the table instead of in a column. They leave out columns that are empty
    in every row (``rhat`` without an MCMC row) and ``objective``/``family`` where each fit's name already
    says them (``"forward_kl/iaf"``, the default names). CSV and JSON (an object per row, NaN as null)
    keep every column at full precision.

    Text fits in ``width`` characters: column names break at their underscores onto two lines,
    long row names wrap, and columns that still do not fit go to a second block under the first
    (each block repeats the row names); numbers are never cut. The notes and reasons under the
    table wrap at ``width`` too.

    Args:
        df: a :func:`vitools.comparison.compare` table.
        fmt: ``"text"``, ``"markdown"``, ``"csv"`` or ``"json"``.
        width: the text's width in characters (text only).

    Returns:
        The table, rendered.

    Raises:
        ValueError: unknown ``fmt``.

    Examples:
        >>> table = vt.compare({"reverse KL": fit, "NUTS": mcmc}, reference="NUTS")
        >>> print(vt.format_table(table, "csv").splitlines()[0][:40])
        fit,objective,family,steps,grad_evals,ti
        >>> text = vt.format_table(table)  # for a terminal; "markdown" for a report
    """
    if fmt == "csv":
        return df.rename_axis("fit").to_csv()
    if fmt == "json":  # Python's shortest float repr; NaN as null; "/" unescaped (pandas escapes it)
        rows = {str(name): {k: _json_value(v) for k, v in row.items()} for name, row in df.iterrows()}
        return json.dumps(rows, indent=2, ensure_ascii=False)
    if fmt not in ("text", "markdown"):
        raise ValueError(f"fmt must be 'text', 'markdown', 'csv' or 'json', got {fmt!r}")
    shown = df.drop(columns=_redundant(df))
    reasons = shown.pop("reasons") if "reasons" in shown else pd.Series(dtype=object)
    if "khat" in shown and "khat_se" in shown:  # two decimals, as the thresholds are written
        shown["khat"] = [_khat(k, se) for k, se in zip(shown["khat"], shown.pop("khat_se"), strict=True)]
    for column in shown.columns:
        if pd.api.types.is_numeric_dtype(shown[column]):
            shown[column] = [_number(v) for v in shown[column]]
        else:
            shown[column] = ["" if pd.isna(v) else str(v) for v in shown[column]]
    if "log_evidence" in shown and "log_evidence_se" in shown:
        pairs = zip(shown["log_evidence"], shown.pop("log_evidence_se"), strict=True)
        shown["log_evidence"] = [f"{v} ± {_se(e)}" if v and e else v for v, e in pairs]
    unreliable = [name for name, ok in df.attrs.get("reliable", {}).items() if not ok]
    flagged = {c: list(unreliable) for c in WEIGHTED_COLUMNS if c in shown}
    # CUBO₂ bounds log Z only while E_q[w²] is finite, i.e. k < 1/2: a stricter line than k̂'s threshold.
    infinite = [n for n in shown.index if n not in unreliable and "khat" in df and df.loc[n, "khat"] >= 0.5]
    if "cubo" in flagged:
        flagged["cubo"] += infinite
    # a missed mass whose gap to the anchor is within twice its Monte Carlo error may be 0
    unresolved = [
        n for n in df.attrs.get("missed_mass_unresolved", []) if n in shown.index and n not in unreliable
    ]
    if "missed_mass" in flagged:
        flagged["missed_mass"] += unresolved
    for column, names in flagged.items():
        shown.loc[names, column] = [f"{v} ?" if v else v for v in shown.loc[names, column]]
        if names and fmt == "text":  # so the marked and unmarked numbers stay aligned
            others = [name for name in shown.index if name not in names]
            shown.loc[others, column] = [f"{v}  " if v else v for v in shown.loc[others, column]]
    lines = [shown.to_markdown(tablefmt="github") if fmt == "markdown" else _text_blocks(shown, width)]
    footnotes = []
    if unreliable and flagged:
        footnotes.append(
            f"? importance-weighted, unreliable: k̂ above its threshold ({', '.join(map(str, unreliable))})"
        )
    if infinite and "cubo" in flagged:
        footnotes.append(
            "? cubo: k̂ ≥ 0.5, E_q[w²] may be infinite, so cubo need not bound log Z "
            f"({', '.join(map(str, infinite))})"
        )
    if unresolved and "missed_mass" in flagged:
        footnotes.append(
            f"? missed_mass: the gap to {_anchor(df.attrs['missed_mass_anchor'])} is within twice its Monte "
            f"Carlo error, so the share may be 0 ({', '.join(map(str, unresolved))})"
        )
    if fmt == "text":  # in the width, as the table
        footnotes = [
            line for note in footnotes for line in textwrap.wrap(note, width, subsequent_indent="  ")
        ]
    if footnotes:  # one blank line between the table and its notes
        lines.append("\n" + "\n".join(footnotes))
    notes = [(name, text) for name, text in reasons.items() if isinstance(text, str) and text]
    if notes and fmt == "markdown":
        lines.append("\n**Verdicts:**\n")
        lines += [f"- {name}: {df.loc[name, 'verdict']}: {text}" for name, text in notes]
    elif notes:
        lines.append("\nVerdicts:")
        for name, text in notes:
            wrapped = textwrap.wrap(
                f"{name}: {df.loc[name, 'verdict']}: {text}", width - 2, subsequent_indent="    "
            )
            lines += ["  " + line for line in wrapped]
    return "\n".join(lines)


def _text_blocks(shown: pd.DataFrame, width: int) -> str:
    """The text table in blocks of columns no wider than ``width`` (see :func:`format_table`)."""
    labels = [
        "\n".join(textwrap.wrap(str(n), LABEL_WIDTH, break_on_hyphens=False)) or str(n) for n in shown.index
    ]
    headers = {c: c.replace("_", "\n", 1) if len(c) > 8 else c for c in shown.columns}

    def render(columns: list[str]) -> str:
        block = shown[columns].rename(columns=headers)
        align = ["left"] + ["left" if c in ("objective", "family", "verdict") else "right" for c in columns]
        padding, tabulate.MIN_PADDING = tabulate.MIN_PADDING, 0  # columns as wide as their widest cell
        try:
            return tabulate.tabulate(
                block,
                headers="keys",
                tablefmt="simple",
                showindex=labels,
                disable_numparse=True,
                colalign=align,
            )
        finally:
            tabulate.MIN_PADDING = padding

    blocks, columns = [], []
    for column in shown.columns:
        if columns and max(map(len, render(columns + [column]).splitlines())) > width:
            blocks.append(render(columns))
            columns = []
        columns.append(column)
    if columns or not blocks:
        blocks.append(render(columns))
    return "\n\n".join(blocks)


def _redundant(df: pd.DataFrame) -> list[str]:
    """Columns the text table leaves out: empty in every row, or ``objective``/``family`` where every
    fit's row name holds both (MCMC rows, objective "mcmc", do not count)."""
    empty = [c for c in df.columns if c != "reasons" and df[c].isna().all()]
    if not {"objective", "family"} <= set(df.columns):
        return empty
    fits = [
        (str(n), o, f) for n, o, f in zip(df.index, df["objective"], df["family"], strict=True) if o != "mcmc"
    ]
    if fits and all(str(o) in name and str(f) in name for name, o, f in fits):
        return empty + ["objective", "family"]
    return empty


def _khat(khat: float, se: float) -> str:
    """k̂ ± its sd to two decimals; k̂ alone where the sd is NaN or 0, as
    :func:`vitools.diagnostics.verdict` writes it. An sd of 0 is not estimated, not exact:
    :func:`vitools.importance.khat_se` returns 0 for k̂ = -inf and counts a resample's k̂ below -1
    as -1, so where every resample is below -1 (bounded weights) the sd is 0: forward KL's Gaussian
    over a 1-D two-component mixture, S = 10,000, read k̂ -1.556 with all 200 resamples in
    [-1.81, -1.30] (their sd 0.080), shown "-1.56 ± 0.00" before (measured)."""
    if pd.isna(khat):
        return ""
    if pd.isna(se) or not se > 0 or not np.isfinite(khat):
        return f"{khat:.2f}"
    return f"{khat:.2f} ± {se:.2f}"


def _anchor(anchor: dict[str, Any]) -> str:
    """What a table's missed_mass is measured against (``table.attrs["missed_mass_anchor"]``), in words."""
    if anchor["fit"] is None:
        return f"the true log evidence {anchor['log_evidence']:.3g} (given)"
    value, se = anchor["log_evidence"], anchor["log_evidence_se"]
    return f"the log evidence of {anchor['fit']!r} ({value:.3g} ± {se:.2g})"


def _json_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _se(text: str) -> str:
    """A standard error to 2 significant figures (its own error is larger than the third)."""
    return f"{float(text):.2g}"


def _number(value: Any) -> str:
    if pd.isna(value):
        return ""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    if 1e3 <= abs(value) < 1e15:  # an ESS of 7084.6 reads 7085, not 7.08e+03
        return f"{value:.0f}"
    return f"{value:.3g}"
