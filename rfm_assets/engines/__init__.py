"""Computation engines: pandas (default) and Spark; `dispatch` picks one for a run."""
