"""Handles on an asset value that the engines load: a stored one (`StoredTable`) or one held
in the process (`HeldTable`). They live with the engines so that the engines import without
Dagster; the IO managers hand them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from rfm_assets.errors import RFMError


@dataclass(frozen=True)
class StoredTable:
    """A handle on a stored asset value, for consumers that load it with their own engine."""

    path: str
    storage_options: dict = field(default_factory=dict)
    # The run context the table was computed in (see rfm_assets.table_context).
    context: dict = field(default_factory=dict)

    def to_pandas(self, columns: Optional[list[str]] = None) -> pd.DataFrame:
        try:
            frame = pd.read_parquet(
                self.path, columns=columns, storage_options=self.storage_options or None
            )
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RFMError(
                f"{self.path}: the stored table cannot be read ({first}); materialize it again"
            ) from None
        frame.attrs["rfm_context"] = dict(self.context)
        return frame

    def to_spark(self, spark):
        return spark.read.parquet(self.path)


@dataclass(frozen=True)
class HeldTable:
    """A Spark DataFrame handed from step to step in one process (the command line's runs),
    with the run context a stored table would carry beside it."""

    frame: object
    context: dict = field(default_factory=dict)

    def to_spark(self, spark):
        return self.frame
