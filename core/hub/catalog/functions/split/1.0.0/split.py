"""Hub function ``split``: a train/test split of a table, the two parts logged as table artifacts.

Input ``table``: a CSV or Parquet file (or an earlier run's table artifact). Artifacts ``train`` and
``test`` (Parquet, or CSV with ``format="csv"``) load back as pandas DataFrames and feed
``train-sklearn``, ``evaluate`` and ``predict`` as inputs. scikit-learn's ``train_test_split`` does
the split, stratified by ``label_column`` when ``stratify`` is on.
"""

from __future__ import annotations

import shoal


@shoal.function(
    name="split",
    requirements=["pandas", "pyarrow", "scikit-learn"],
    description="Train/test split of a table (CSV/Parquet) into train and test table artifacts",
    labels={"category": "data-preparation"},
)
def split(
    ctx: shoal.Context,
    table: shoal.DataItem,
    test_size: float = 0.25,
    label_column: str | None = None,
    stratify: bool = True,
    shuffle: bool = True,
    random_state: int = 0,
    format: str = "parquet",
) -> None:
    """Split ``table`` into ``train`` and ``test`` (``test_size``: a fraction in (0, 1) or a row count).

    With ``label_column`` and ``stratify`` the label's class proportions are kept in both parts.
    """
    if format not in ("parquet", "csv"):
        raise ValueError(f"format must be 'parquet' or 'csv', got {format!r}")
    if not 0 < test_size < 1 and not (test_size >= 1 and float(test_size).is_integer()):
        raise ValueError(f"test_size must be a fraction between 0 and 1 or a whole number of rows, got {test_size}")
    from sklearn.model_selection import train_test_split

    frame = table.as_df()
    if label_column is not None and label_column not in frame.columns:
        raise ValueError(
            f"label_column {label_column!r} is not a column of the table; its columns are {list(map(str, frame.columns))}"
        )
    size = int(test_size) if test_size >= 1 else test_size
    strata = frame[label_column] if (label_column is not None and stratify and shuffle) else None
    train, test = train_test_split(frame, test_size=size, shuffle=shuffle, stratify=strata, random_state=random_state)
    ctx.log_dataset("train", train.reset_index(drop=True), format=format, label_column=label_column)
    ctx.log_dataset("test", test.reset_index(drop=True), format=format, label_column=label_column)
    ctx.log_results({"train_rows": int(len(train)), "test_rows": int(len(test))})
