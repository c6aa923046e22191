"""The RFMSegmentation component reads the source it is given, and nothing else: an unset
source fails the load naming the variable and the file; the bundled sample is only the demo's."""

import importlib
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from rfm_assets.component import RFMSegmentation, build_rfm_definitions
from rfm_assets.errors import RFMConfigError
from rfm_assets.settings import RFMSettings

REPO = Path(__file__).parents[1]
SAMPLE = str(REPO / "rfm_assets_tests" / "data" / "cdnow_master.parquet")
COLUMNS = {"customer_id": "customer_id", "transaction_date": "date", "amount": "dollar_value"}


def load(attributes: dict) -> dg.Definitions:
    """Definitions of one RFMSegmentation declared with these attributes in a defs.yaml."""
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=RFMSegmentation,
            defs_yaml_contents={
                "type": "rfm_assets.component.RFMSegmentation",
                "attributes": {"key_prefix": ["shop"], **attributes},
            },
        )
        with sandbox.load_component_and_build_defs(defs_path=path) as (_, definitions):
            return definitions


def failure(attributes: dict) -> str:
    with pytest.raises(Exception) as raised:
        load(attributes)
    # Dagster wraps what the component raised; the cause says it.
    error, messages = raised.value, []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    return "\n".join(messages)


def test_an_unset_environment_variable_fails_the_load_naming_it(monkeypatch):
    monkeypatch.delenv("RFM_TEST_SOURCE_UNSET", raising=False)
    message = failure({"source": "{{ env.RFM_TEST_SOURCE_UNSET }}", "settings": {}})
    assert "the environment variable RFM_TEST_SOURCE_UNSET is not set" in message
    assert "defs.yaml" in message
    message = failure({"source": "{{ env('RFM_TEST_SOURCE_UNSET', '') }}"})
    assert "RFM_TEST_SOURCE_UNSET is not set" in message


def test_the_example_deployment_names_its_missing_variable(monkeypatch):
    monkeypatch.delenv("RFM_EU_TRANSACTIONS", raising=False)
    monkeypatch.setenv("RFM_US_TRANSACTIONS", SAMPLE)
    monkeypatch.syspath_prepend(str(REPO / "examples" / "two_regions"))
    sys.modules.pop("two_regions.definitions", None)
    module = importlib.import_module("two_regions.definitions")
    with pytest.raises(Exception) as raised:
        module.defs()
    text = []
    error = raised.value
    while error is not None:
        text.append(str(error))
        error = error.__cause__
    text = "\n".join(text)
    assert "eu/defs.yaml" in text and "RFM_EU_TRANSACTIONS is not set" in text


def test_no_source_is_refused_and_never_the_bundled_sample():
    message = failure({"settings": {"columns": COLUMNS}})
    assert "no source; set source" in message and "defs.yaml" in message
    with pytest.raises(RFMConfigError, match="input_path: unset, and no source_asset"):
        build_rfm_definitions(RFMSettings())


@pytest.mark.parametrize(
    "attributes, named",
    [
        ({"source": SAMPLE, "settings": {"input_path": SAMPLE}}, "source and settings.input_path"),
        ({"source": SAMPLE, "source_asset": "raw/orders"}, "source and source_asset"),
        (
            {"source_asset": "raw/orders", "settings": {"input_path": SAMPLE}},
            "source_asset and settings.input_path",
        ),
    ],
)
def test_a_source_given_twice_is_refused(attributes, named):
    assert f"{named} both give the transactions; keep one" in failure(attributes)


def test_the_source_from_settings_or_the_attribute_is_the_one_read(monkeypatch):
    monkeypatch.setenv("RFM_TEST_SOURCE", SAMPLE)
    for attributes in (
        {"source": "{{ env.RFM_TEST_SOURCE }}", "settings": {"columns": COLUMNS}},
        {"settings": {"input_path": SAMPLE, "columns": COLUMNS}},
    ):
        settings = load(attributes).resources["rfm_settings_shop"]
        assert settings.input_path == SAMPLE
        assert settings.source_path == SAMPLE


def test_a_bad_setting_names_the_component_file():
    message = failure({"source": SAMPLE, "settings": {"scoring_method": "deciles"}})
    assert "defs.yaml: settings: invalid settings: scoring_method" in message
