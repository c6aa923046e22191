"""Run-config presets and the segment catalog, installed with the package (see setup.py)."""
