"""Files shipped inside the package: run-config presets, segment catalog, bundled data."""

from importlib.resources import files
from pathlib import Path

# `config/` at the repository root is installed as the package `rfm_assets.config`
# (see setup.py), so presets and the catalog are found the same way from a clone and a wheel.
CONFIG_DIR = Path(str(files("rfm_assets.config")))
SEGMENTS_FILE = CONFIG_DIR / "segments.yaml"
# Shipped rule sets, selected by name with the setting segment_rules.
RULE_SETS_DIR = CONFIG_DIR / "rule_sets"

# UCI Online Retail (CC BY 4.0), the embedded default input; attribution in data/README.md.
BUNDLED_DATASET = Path(str(files("rfm_assets"))) / "data" / "online_retail.parquet"
BUNDLED_COLUMNS = {
    "customer_id": "CustomerID",
    "transaction_date": "InvoiceDate",
    "quantity": "Quantity",
    "unit_price": "UnitPrice",
    "order_id": "InvoiceNo",
}


def preset_path(name: str) -> Path:
    """The run-config YAML of a preset in `config/`, by file stem (e.g. `subscription`)."""
    return CONFIG_DIR / f"{name}.yaml"


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "segments")
