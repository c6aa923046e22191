from setuptools import find_packages, setup

# Metadata and dependencies live in pyproject.toml. This file maps the repository's `config/`
# (run-config presets and the segment catalog) into the package as `rfm_assets.config`, so an
# installed wheel carries the same files as a clone.
# Every package under rfm_assets/ is found, so a new one cannot be left out of the wheel.
setup(
    packages=[
        *find_packages(include=["rfm_assets", "rfm_assets.*"]),
        "rfm_assets.config",
        "rfm_assets.config.rule_sets",
    ],
    package_dir={"rfm_assets.config": "config", "rfm_assets.config.rule_sets": "config/rule_sets"},
    package_data={
        "rfm_assets": ["data/*"],
        "rfm_assets.config": ["*.yaml"],
        "rfm_assets.config.rule_sets": ["*.yaml"],
    },
)
