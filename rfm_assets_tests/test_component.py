"""The RFMSegmentation component reads the source it is given, and nothing else: an unset
source fails the load naming the variable and the file; the bundled sample is only the demo's.
Its schema lists every setting; the code location binds the shared resources once; Dagster's
post-processing gives its assets owners, tags and an automation condition."""

import importlib
import re
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

import rfm_assets.component
from rfm_assets.component import RFMSegmentation, build_rfm_definitions, shared_resources
from rfm_assets.errors import RFMConfigError
from rfm_assets.io_manager import RFMParquetIOManager
from rfm_assets.settings import ColumnMapping, FixedThresholds, RFMSettings, Weights

REPO = Path(__file__).parents[1]
SAMPLE = str(REPO / "rfm_assets_tests" / "data" / "cdnow_master.parquet")
COLUMNS = {"customer_id": "customer_id", "transaction_date": "date", "amount": "dollar_value"}


def defs_yaml(attributes: dict, **more) -> dict:
    return {
        "type": "rfm_assets.component.RFMSegmentation",
        "attributes": {"key_prefix": ["shop"], **attributes},
        **more,
    }


def load(attributes: dict, **more) -> dg.Definitions:
    """Definitions of one RFMSegmentation declared with these attributes (and any other
    top-level keys of the file, such as post_processing) in a defs.yaml."""
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=RFMSegmentation, defs_yaml_contents=defs_yaml(attributes, **more)
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


# --- the schema: every setting, with its description ----------------------------------------


def component_schema() -> dict:
    """The JSON schema of the component's attributes, as `dg list components --json` and
    `dg utils inspect-component` show it and `dg check yaml` and editors validate against."""
    return RFMSegmentation.get_model_cls().model_json_schema()


def settings_schema(schema: dict) -> dict:
    (ref,) = [
        choice["$ref"] for choice in schema["properties"]["settings"]["anyOf"] if "$ref" in choice
    ]
    return schema["$defs"][ref.rsplit("/", 1)[1]]


def test_the_schema_lists_every_setting_with_its_description():
    schema = component_schema()
    settings = settings_schema(schema)
    assert list(settings["properties"]) == list(RFMSettings.model_fields)
    assert settings["additionalProperties"] is False  # a misspelt key is an error in editors
    for config, title in (
        (RFMSettings, "RFMSettings"),
        (ColumnMapping, "ColumnMapping"),
        (Weights, "Weights"),
        (FixedThresholds, "FixedThresholds"),
    ):
        shown = schema["$defs"][title]
        assert list(shown["properties"]) == list(config.model_fields), title
        assert shown["additionalProperties"] is False
        for name, field in config.model_fields.items():
            assert shown["properties"][name]["description"] == field.description, name
    assert schema["$defs"]["FixedThresholds"]["required"] == ["recency", "frequency", "monetary"]
    # Types, bounds and choices as RFMSettings has them; a template in place of any value.
    days = settings["properties"]["analysis_period_days"]["anyOf"]
    assert {"type": "integer", "minimum": 1} in days and {"type": "null"} in days
    assert any(choice.get("pattern") for choice in days)
    method = settings["properties"]["scoring_method"]["anyOf"]
    assert {"type": "string", "enum": ["quintiles", "quartiles", "fixed"]} in method
    assert settings["properties"]["cluster_range"]["default"] == [3, 8]
    # and the component's own attributes, each described.
    assert schema["additionalProperties"] is False
    for name, attribute in schema["properties"].items():
        assert attribute.get("description"), name


def test_a_misspelt_setting_fails_the_load_naming_it_and_the_file():
    message = failure(
        {"source": SAMPLE, "settings": {"scoring_metod": "quartiles", "columns": {"custmer": "x"}}}
    )
    assert re.search(
        r"RFMSegmentation in \S+defs\.yaml: settings: unknown settings: columns\.custmer, "
        r"scoring_metod; known settings: input_path, ",
        message,
    )


def test_a_template_can_give_any_setting(monkeypatch):
    monkeypatch.setenv("RFM_TEST_DAYS", "90")
    monkeypatch.setenv("RFM_TEST_METHOD", "quartiles")
    settings = load(
        {
            "source": SAMPLE,
            "settings": {
                "columns": COLUMNS,
                "analysis_period_days": "{{ env.RFM_TEST_DAYS }}",
                "scoring_method": "{{ env.RFM_TEST_METHOD }}",
                "weights": {"recency": 2},
            },
        }
    ).resources["rfm_settings_shop"]
    assert settings.analysis_period_days == 90 and settings.scoring_method == "quartiles"
    assert settings.weights.recency == 2 and settings.weights.frequency == 1  # defaults kept


def test_the_settings_can_be_given_in_python():
    component = RFMSegmentation(
        key_prefix=["shop"], source=SAMPLE, settings={"columns": COLUMNS, "min_frequency": 2}
    )
    assert component.settings.min_frequency == 2
    assert component.settings.columns.transaction_date == "date"


def test_the_docstring_names_the_type_that_loads():
    (path,) = set(re.findall(r"type: (\S+)", rfm_assets.component.__doc__))
    module, name = path.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is RFMSegmentation


# --- resources: bound once by the code location ---------------------------------------------


def test_an_instance_binds_only_its_own_resources():
    assert set(load({"source": SAMPLE, "settings": {"columns": COLUMNS}}).resources) == {
        "rfm_settings_shop"
    }
    own = load({"source": SAMPLE, "settings": {"columns": COLUMNS}, "storage": "/tmp/rfm-shop"})
    assert set(own.resources) == {"rfm_settings_shop", "rfm_io_manager_shop"}
    assert own.resources["rfm_io_manager_shop"].base_dir == "/tmp/rfm-shop"
    unprefixed = load(
        {"key_prefix": [], "source": SAMPLE, "settings": {"columns": COLUMNS}, "storage": "s"}
    )
    assert set(unprefixed.resources) == {"rfm_settings", "rfm_io_manager"}  # not io_manager


def test_a_project_binds_the_shared_resources_once_for_all_its_instances():
    with create_defs_folder_sandbox() as sandbox:
        for region in ("eu", "us"):
            attributes = {
                "key_prefix": [region],
                "source": SAMPLE,
                "settings": {"columns": COLUMNS},
            }
            if region == "us":
                attributes["storage"] = "/tmp/rfm-us"
            sandbox.scaffold_component(
                component_cls=RFMSegmentation,
                defs_path=region,
                defs_yaml_contents=defs_yaml(attributes),
            )
        (sandbox.defs_folder_path / "resources.py").write_text(
            textwrap.dedent(
                """
                import dagster as dg
                from rfm_assets.component import shared_resources

                @dg.definitions
                def resources() -> dg.Definitions:
                    return dg.Definitions(resources=shared_resources())
                """
            )
        )
        with sandbox.build_all_defs() as definitions:
            dg.Definitions.validate_loadable(definitions)
            resources = definitions.resources
            assert set(resources) == {
                "spark",
                "io_manager",
                "rfm_settings_eu",
                "rfm_settings_us",
                "rfm_io_manager_us",
            }
            assert isinstance(resources["io_manager"], RFMParquetIOManager)
            assert resources["io_manager"].base_dir is None
            assert resources["rfm_io_manager_us"].base_dir == "/tmp/rfm-us"
            graph = definitions.resolve_asset_graph()
            assert graph.get(dg.AssetKey(["eu", "customer_segments"])).io_manager_key == (
                "io_manager"
            )
            assert graph.get(dg.AssetKey(["us", "customer_segments"])).io_manager_key == (
                "rfm_io_manager_us"
            )


def test_without_the_shared_resources_the_location_fails_to_load_naming_them():
    """A code location that forgets defs/resources.py fails to load, naming `spark`, rather
    than storing the assets with Dagster's default io_manager."""
    alone = load({"source": SAMPLE, "settings": {"columns": COLUMNS}})
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="resource with key 'spark'"):
        dg.Definitions.validate_loadable(alone)


def test_built_from_code_the_definitions_are_complete_on_their_own():
    alone = build_rfm_definitions(RFMSettings(), bundled_sample=True)
    assert set(alone.resources) == {"rfm_settings", "spark", "io_manager"}
    dg.Definitions.validate_loadable(alone)
    stored = build_rfm_definitions(RFMSettings(input_path=SAMPLE), storage="/tmp/rfm")
    assert stored.resources["io_manager"].base_dir == "/tmp/rfm"
    parts = build_rfm_definitions(
        RFMSettings(input_path=SAMPLE), key_prefix=("eu",), bind_shared_resources=False
    )
    assert set(parts.resources) == {"rfm_settings_eu"}
    # Two instances and the shared resources, bound once, merge into one code location.
    other = build_rfm_definitions(
        RFMSettings(input_path=SAMPLE), key_prefix=("us",), bind_shared_resources=False
    )
    merged = dg.Definitions.merge(parts, other, dg.Definitions(resources=shared_resources()))
    dg.Definitions.validate_loadable(merged)


# --- owners, tags and automation: Dagster's post-processing of the instance's assets --------


def test_post_processing_gives_every_asset_owners_tags_and_an_automation_condition():
    definitions = load(
        {"source": SAMPLE, "weeks_start": "1997-01-06", "settings": {"columns": COLUMNS}},
        post_processing={
            "assets": [
                {
                    "target": "*",
                    "attributes": {
                        "owners": ["team:crm", "ana@example.com"],
                        "tags": {"region": "shop"},
                        "automation_condition": "{{ dg.AutomationCondition.eager() }}",
                    },
                }
            ]
        },
    )
    # with the resources its code location binds
    definitions = dg.Definitions.merge(definitions, dg.Definitions(resources=shared_resources()))
    dg.Definitions.validate_loadable(definitions)
    graph = definitions.resolve_asset_graph()
    keys = graph.get_all_asset_keys()  # the instance's, all of them
    assert {"shop/customer_segments", "shop/segment_analytics"} <= {
        key.to_user_string() for key in keys
    }
    eager = dg.AutomationCondition.eager()
    for key in keys:
        node = graph.get(key)
        assert node.owners == ["team:crm", "ana@example.com"], key
        assert node.tags["region"] == "shop", key
        assert node.automation_condition is not None, key
        assert node.automation_condition.get_label() == eager.get_label(), key
    # The job, schedule and checks are the instance's as before.
    assert definitions.resolve_job_def("rfm_shop_job")
    assert definitions.resolve_schedule_def("rfm_shop_weekly").job_name == "rfm_shop_job"
    checked = {check.asset_key for check in graph.asset_check_keys}
    assert checked and checked <= keys


# --- the Dagster seed's defs.yaml, as it was written ------------------------------------------


def seed_attributes(source: str, **more) -> dict:
    """The attributes the Dagster seed's RFM component took, at the top level."""
    return {
        "source": source,
        "asset_name": "rfm_customer_segments",
        "analysis_period_days": 365,
        "use_predefined_segments": True,
        "include_recommendations": False,
        "recency_weight": 2.0,
        "frequency_weight": 1.0,
        "monetary_weight": 0.5,
        **more,
    }


def test_the_seed_defs_yaml_loads_as_written_and_means_what_it_says(tmp_path):
    import pandas as pd

    from rfm_assets import run

    source = tmp_path / "orders.parquet"  # the seed's default column names
    frame = pd.read_parquet(SAMPLE).rename(columns={"date": "transaction_date",
                                                  "dollar_value": "amount"})  # fmt: skip
    frame.to_parquet(source)
    definitions = load(seed_attributes(str(source)))
    settings = definitions.resources["rfm_settings_shop"]
    assert settings.analysis_period_days == 365
    assert settings.weight_tuple() == (2.0, 1.0, 0.5)
    assert settings.segmentation_method == "grid"
    assert settings.include_recommendations is False
    storage = RFMParquetIOManager(base_dir=str(tmp_path / "store"))
    definitions = dg.Definitions.merge(
        definitions, dg.Definitions(resources={**shared_resources(), "io_manager": storage})
    )
    keys = {key.to_user_string() for key in definitions.resolve_asset_graph().get_all_asset_keys()}
    assert "shop/rfm_customer_segments" in keys and "shop/customer_segments" not in keys
    assert {"shop/rfm_scores", "shop/segment_analytics"} <= keys  # the others keep their names
    job = definitions.resolve_job_def("rfm_shop_job")
    assert job.execute_in_process().success
    segments = definitions.load_asset_value(["shop", "rfm_customer_segments"])
    analytics = definitions.load_asset_value(["shop", "segment_analytics"])
    assert "recommendation" not in segments.columns
    assert "recommendation" not in analytics.columns
    # The same numbers as the settings give with recommendations: only the column differs
    # (stored, a table has the published types: text, not the in-memory categories).
    from rfm_assets.exports import published_types

    wanted = run(settings.changed(include_recommendations=True))
    expected = wanted.customer_segments.drop(columns=["recommendation", "segmented_at"])
    pd.testing.assert_frame_equal(segments.drop(columns="segmented_at"), published_types(expected))
    pd.testing.assert_frame_equal(
        analytics, published_types(wanted.segment_analytics.drop(columns="recommendation"))
    )
    assert wanted.customer_segments["recency"].max() <= 365  # the window applied
    assert wanted.account.rows_excluded["before_analysis_window"] > 0


def test_the_seed_attributes_refuse_a_second_place_and_a_taken_name():
    clusters = seed_attributes(SAMPLE, use_predefined_segments=False, settings={"columns": COLUMNS})
    assert load(clusters).resources["rfm_settings_shop"].segmentation_method == "kmeans"
    cases = {
        "analysis_period_days is given at the top level and under settings": {
            "settings": {"columns": COLUMNS, "analysis_period_days": 90}
        },
        "recency_weight is given at the top level and under settings": {
            "settings": {"columns": COLUMNS, "weights": {"recency": 3}}
        },
        "use_predefined_segments is given at the top level and under settings": {
            "settings": {"columns": COLUMNS, "segmentation_method": "kmeans"}
        },
        "asset_name: 'rfm_scores' is the name of another asset": {
            "asset_name": "rfm_scores",
            "settings": {"columns": COLUMNS},
        },
        "asset_name: 'my segments' is not an asset name": {
            "asset_name": "my segments",
            "settings": {"columns": COLUMNS},
        },
    }
    for expected, more in cases.items():
        message = failure(seed_attributes(SAMPLE, **more))
        assert expected in message and "defs.yaml" in message, (expected, message)
