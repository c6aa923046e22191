"""Parquet storage of asset values: one file per asset key under `base_dir`, written atomically."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

LOCAL_PROTOCOLS = ("", "file", "local")


def default_base_dir() -> str:
    """Where asset values live when `base_dir` is not set.

    `$RFM_ASSETS_BASE_DIR`, else `$DAGSTER_HOME/storage/rfm_assets`, else
    `~/.rfm_assets/storage`. It depends on the environment only, never on the working
    directory, so `defs.load_asset_value(...)` in any later process with the same
    `DAGSTER_HOME` finds what a run wrote.
    """
    if os.environ.get("RFM_ASSETS_BASE_DIR"):
        return os.environ["RFM_ASSETS_BASE_DIR"]
    if os.environ.get("DAGSTER_HOME"):
        return str(Path(os.environ["DAGSTER_HOME"]) / "storage" / "rfm_assets")
    return str(Path.home() / ".rfm_assets" / "storage")


class PandasParquetStore(dg.UPathIOManager):
    """Stores pandas DataFrames as `<base_dir>/<asset key path>.parquet`.

    A local write goes to a temporary file beside the target, is flushed to disk and then
    renamed over it, so a failed or killed run leaves the previous value readable. On an
    object store the single PUT of the finished file is already atomic.
    """

    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a pandas DataFrame, "
                f"got {type(obj).__name__}"
            )
        if path.protocol not in LOCAL_PROTOCOLS:
            with path.open("wb") as handle:
                obj.to_parquet(handle, index=False)
            return
        target = Path(path.path)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(staging, "wb") as handle:
                obj.to_parquet(handle, index=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, target)
        finally:
            staging.unlink(missing_ok=True)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        if path.protocol not in LOCAL_PROTOCOLS:
            with path.open("rb") as handle:
                return pd.read_parquet(handle)
        return pd.read_parquet(path.path)


class RFMParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Parquet files under `base_dir`, one per asset key, read back as pandas DataFrames."""

    base_dir: Optional[str] = Field(
        default=None,
        description="Local path or fsspec URI (s3://..., gs://...) of the asset storage. Unset: "
        "$RFM_ASSETS_BASE_DIR, else $DAGSTER_HOME/storage/rfm_assets, else "
        "~/.rfm_assets/storage.",
    )

    def create_io_manager(self, context) -> PandasParquetStore:
        return PandasParquetStore(base_path=UPath(self.base_dir or default_base_dir()))
