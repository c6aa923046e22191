"""The Spark frames a run caches, kept track of so the run can let them go.

The Spark engine caches what several readers of a step compute from (the per-customer
totals, each table a step hands on). A session that outlives the run (a notebook's, a test
session's, `rfm_assets.run` called in a loop) would otherwise hold every run's caches until
it ends: its memory fills, and the JVM spends its time collecting garbage it cannot free
(after 40 runs on five rows, a run took half as much JVM time again: benchmarks/README.md).
`rfm_assets.run` collects the frames cached while its steps run (`kept_by_run`) and its
result lets them go (`RFMRun.release`). A Dagster run outside `run` caches as before; its
process ends with it. Nothing here imports PySpark: a pandas run imports this module and
never caches.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

# The frames cached by the run on this thread, while `kept_by_run` is open.
_RUN = threading.local()


def persist(frame):
    """`frame` cached in memory, spilling to disk, and counted to the run on this thread."""
    from pyspark.storagelevel import StorageLevel

    cached = frame.persist(StorageLevel.MEMORY_AND_DISK)
    frames = getattr(_RUN, "frames", None)
    if frames is not None:
        frames.append(cached)
    return cached


@contextlib.contextmanager
def kept_by_run() -> Iterator[list]:
    """The list of the frames cached on this thread while the block runs (steps of an
    in-process Dagster run execute on the thread that started it)."""
    outer = getattr(_RUN, "frames", None)
    frames = _RUN.frames = []
    try:
        yield frames
    finally:
        _RUN.frames = outer


def release(frames: list) -> None:
    """Let the cached frames go (a frame read afterwards is computed again from its plan)."""
    while frames:
        frames.pop().unpersist(blocking=False)
