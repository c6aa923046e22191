"""The house: each layer imports only what it needs (docs/architecture.md)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "rfm_assets"
ENGINE_MODULES = sorted(
    f"rfm_assets.engines.{p.stem}"
    for p in (PACKAGE / "engines").glob("*.py")
    if p.stem not in ("__init__", "spark_compute")  # spark_compute is PySpark itself
)


def loaded_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after `statement`, in a fresh interpreter."""
    packages = "' '.join(sorted({m.split('.')[0] for m in sys.modules}))"
    script = f"import sys\n{statement}\nprint({packages})"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_the_engines_import_without_dagster():
    imports = "\n".join(
        f"import {name}" for name in [*ENGINE_MODULES, "rfm_assets.engines.spark_compute"]
    )
    assert "dagster" not in loaded_after(imports)


def test_the_pandas_code_location_imports_neither_pyspark_nor_matplotlib():
    loaded = loaded_after("import rfm_assets.definitions")
    assert "pyspark" not in loaded and "dagster_pyspark" not in loaded
    assert "matplotlib" not in loaded


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_no_engine_module_imports_a_layer_above_it(module):
    """Engines import only engines, the shared rules (contract, errors, formulas, segments,
    packaged files) and libraries: never settings, assets, IO managers or the CLI."""
    above = ("rfm_assets.settings", "rfm_assets.assets", "rfm_assets.io_manager",
             "rfm_assets.cli", "rfm_assets.component", "rfm_assets.definitions",
             "rfm_assets.runner", "rfm_assets.report", "rfm_assets.pictures")  # fmt: skip
    tree = ast.parse((PACKAGE / "engines" / f"{module.rsplit('.', 1)[1]}.py").read_text())
    imported = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    ] + [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
         for alias in node.names]  # fmt: skip
    assert not [name for name in imported if name.startswith(above)]


def test_the_wheel_carries_every_module_and_file_of_the_package(tmp_path):
    """What `pip install` of a built wheel puts in place is the whole package: every module
    under rfm_assets/, the bundled data and the config presets and rule sets."""
    import shutil
    import zipfile

    repository = PACKAGE.parent
    # Built from a copy of what packaging reads: a build/ folder left in the checkout would
    # hand the wheel stale modules that the package list leaves out.
    source = tmp_path / "source"
    skipped = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("rfm_assets", "config"):
        shutil.copytree(repository / folder, source / folder, ignore=skipped)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(repository / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("rfm_assets-*.whl")
    carried = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        str(path.relative_to(repository)) for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.parts
    }  # fmt: skip
    wanted |= {f"rfm_assets/data/{p.name}" for p in (PACKAGE / "data").iterdir()}
    config = repository / "config"
    wanted |= {f"rfm_assets/config/{p.relative_to(config)}" for p in config.rglob("*.yaml")}
    assert wanted - carried == set()
