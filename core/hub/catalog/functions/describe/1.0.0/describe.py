"""Hub function ``describe``: summary statistics of a table, with a histogram PNG per numeric column.

Input ``table``: a CSV or Parquet file (or an earlier run's table artifact). Results: row and
column counts, missing values per column, the class counts of ``label_column``. Artifacts: the
summary table (``summary``, one row per column), the numeric columns' Pearson ``correlation``
table and its heatmap ``correlation_png``, and ``hist_<column>`` PNGs (matplotlib's Agg
canvas, no pyplot: safe in worker threads and in a driver with its own backend).
"""

from __future__ import annotations

import io
import re

import shoal


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def _histogram(column, values, bins: int) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.5))
    axes = figure.add_subplot()
    axes.hist(values, bins=bins, color="#3b75af", edgecolor="white")
    axes.set_title(f"{column}")
    axes.set_xlabel(str(column))
    axes.set_ylabel("count")
    figure.tight_layout()
    return _png(figure)


def _heatmap(matrix) -> bytes:
    from matplotlib.figure import Figure

    size = 2.5 + 0.45 * len(matrix.columns)
    figure = Figure(figsize=(size, size * 0.85))
    axes = figure.add_subplot()
    image = axes.imshow(matrix.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    figure.colorbar(image, ax=axes)
    ticks = range(len(matrix.columns))
    axes.set_xticks(ticks, [str(name) for name in matrix.columns], rotation=90)
    axes.set_yticks(ticks, [str(name) for name in matrix.index])
    axes.set_title("correlation")
    figure.tight_layout()
    return _png(figure)


def _artifact_key(prefix: str, column: object) -> str:
    """An artifact key for ``column``: characters other than letters, digits, ``_.-`` become ``_``."""
    return prefix + re.sub(r"[^A-Za-z0-9_.-]", "_", str(column))[:180]


@shoal.function(
    name="describe",
    requirements=["pandas", "pyarrow", "matplotlib"],
    description="Summary statistics of a table (CSV/Parquet) with a histogram PNG per numeric column",
    labels={"category": "data-analysis"},
)
def describe(
    ctx: shoal.Context,
    table: shoal.DataItem,
    label_column: str | None = None,
    bins: int = 20,
    max_histograms: int = 20,
) -> None:
    """Log the table's shape, missing values, per-column statistics and histograms.

    ``bins``: histogram bins; ``max_histograms``: at most this many numeric columns get a PNG.
    """
    if bins < 1 or max_histograms < 0:
        raise ValueError(f"bins must be >= 1 and max_histograms >= 0, got bins={bins}, max_histograms={max_histograms}")
    import pandas as pd

    frame = table.as_df()
    if label_column is not None and label_column not in frame.columns:
        raise ValueError(
            f"label_column {label_column!r} is not a column of the table; its columns are {list(map(str, frame.columns))}"
        )
    ctx.log_result("rows", int(len(frame)))
    ctx.log_result("columns", int(frame.shape[1]))
    ctx.log_result("missing", {str(name): int(count) for name, count in frame.isna().sum().items()})
    numeric = frame.select_dtypes(include="number")
    ctx.log_result("numeric_columns", [str(name) for name in numeric.columns])
    if label_column is not None:
        counts = frame[label_column].value_counts(dropna=False)
        ctx.log_result("class_counts", {str(value): int(count) for value, count in counts.items()})

    summary = pd.DataFrame(
        {
            "dtype": [str(frame[name].dtype) for name in frame.columns],
            "count": frame.count().to_numpy(),
            "missing": frame.isna().sum().to_numpy(),
            "unique": frame.nunique().to_numpy(),
        },
        index=[str(name) for name in frame.columns],
    )
    if not numeric.empty:
        stats = numeric.describe().T.drop(columns="count")
        stats.index = [str(name) for name in stats.index]
        summary = summary.join(stats)
    summary.index.name = "column"
    ctx.log_dataset("summary", summary.reset_index())

    if numeric.shape[1] > 1:
        correlation = numeric.corr()
        correlation.columns = [str(name) for name in correlation.columns]
        ctx.log_dataset("correlation", correlation.reset_index(names="column").astype({"column": str}))
        ctx.log_artifact("correlation_png", body=_heatmap(correlation), local_path="correlation.png")
    for name in list(numeric.columns)[:max_histograms]:
        values = numeric[name].dropna().to_numpy()
        if len(values):
            png = _histogram(name, values, bins)
            ctx.log_artifact(_artifact_key("hist_", name), body=png, local_path=_artifact_key("hist_", name) + ".png")
