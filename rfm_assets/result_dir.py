"""The CLI's result directory: one run's files replace the last run's as one unit.

Layout of an `--output` directory:

    customer_segments.parquet -> .rfm/current/customer_segments.parquet
    segment_analytics.parquet -> .rfm/current/segment_analytics.parquet
    run_summary.json          -> .rfm/current/run_summary.json
    .rfm/current  -> runs/<run>    the one pointer a run replaces
    .rfm/previous -> runs/<run>    the result it replaced, kept for readers still on it
    .rfm/runs/<run>/               one run's finished files
    .rfm/runs/<run>.work/          a Spark run's intermediate tables
    .rfm/runs/<run>.lock           locked while that run is alive
    .rfm/switch.lock               held while a run switches `current` or sweeps

A run writes everything into its own folder, then renames one new link over `.rfm/current`:
the visible names resolve through that link, so a reader sees the whole old result or the
whole new one, never a mix, whatever is killed when; of racing runs the last switch wins
whole. Every run first removes what dead runs left (their lock is free); a live run's folder
is never touched. Needs a file system with symbolic links and `flock` (Linux, macOS).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

from rfm_assets.errors import RFMError

STATE = ".rfm"
# Folders and files of the layout before versioned results, left by killed runs.
LEGACY_LEFTOVERS = (".rfm_staging_", ".rfm_work_")


def _describe(error: OSError) -> str:
    return error.strerror or str(error)


class ResultDirectory:
    """One run's place in an output directory; use as a context manager.

    `files` is where the run writes its results and `work` its intermediate tables; nothing
    there is visible until `publish`. Leaving the context without publishing removes both.
    """

    def __init__(self, output: Path):
        self.output = Path(output)
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.runs = self.output / STATE / "runs"
        self.files = self.runs / self.run
        self.work = self.runs / f"{self.run}.work"
        self._lock: Optional[int] = None
        self._published = False

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> ResultDirectory:
        output = self.output
        if output.is_symlink() and not output.exists():
            raise RFMError(
                f"--output: {output} is a link to {os.readlink(output)}, which is missing"
            )
        if output.exists() and not output.is_dir():
            raise RFMError(f"--output: {output} exists and is not a directory")
        try:
            self.runs.mkdir(parents=True, exist_ok=True)
            self._lock = self._take_lock()
            with self._switching():
                self.sweep()
            self.files.mkdir()
        except OSError as error:
            self._release()
            raise RFMError(f"--output: cannot write {output}: {_describe(error)}") from None
        return self

    def __exit__(self, *exc) -> None:
        if not self._published:
            shutil.rmtree(self.files, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
        self._release()

    def _take_lock(self) -> int:
        """Lock this run's lock file; retry if a sweep removed it between open and lock."""
        path = self.runs / f"{self.run}.lock"
        while True:
            handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino == os.fstat(handle).st_ino:
                    return handle
            except FileNotFoundError:
                pass
            os.close(handle)

    @contextlib.contextmanager
    def _switching(self):
        """Hold the directory's switch lock: pointer swaps and sweeps happen one at a time, so
        a sweep never deletes a run that another run made current after the sweep looked.
        Readers take no lock."""
        handle = os.open(self.output / STATE / "switch.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing releases the lock

    def _release(self) -> None:
        if self._lock is not None:
            (self.runs / f"{self.run}.lock").unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None

    # --- switching -----------------------------------------------------------------------

    def publish(self) -> None:
        """Make this run's files the visible result, all at once."""
        state = self.output / STATE
        names = sorted(p.name for p in self.files.iterdir())
        try:
            with self._switching():
                replaced = _link_target(state / "current")
                _replace_link(state / "current", Path("runs") / self.run, self.run)
                self._published = True
                if replaced and replaced != f"runs/{self.run}":
                    _replace_link(state / "previous", Path(replaced), self.run)
                for name in names:
                    self._show(name)
                self._hide_stale(names)
                self.sweep()
        except OSError as error:
            if not self._published:
                raise RFMError(
                    f"--output: cannot write {self.output}: {_describe(error)}"
                ) from None
            raise RFMError(
                f"--output: the new result is in place but {self.output} could not be tidied: "
                f"{_describe(error)}"
            ) from None

    def _show(self, name: str) -> None:
        """`DIR/name` as a link through `.rfm/current`, made once and never changed after."""
        visible = self.output / name
        target = Path(STATE) / "current" / name
        if _link_target(visible) == str(target):
            return
        if visible.is_dir() and not visible.is_symlink():
            # A result of the earlier layout (a Spark Parquet folder): set aside, swept later.
            os.replace(visible, self.runs / f"legacy-{uuid.uuid4().hex[:8]}")
        _replace_link(visible, target, self.run)

    def _hide_stale(self, names: list[str]) -> None:
        """Links to files the current result does not have (another --format) go."""
        prefix = str(Path(STATE) / "current") + os.sep
        for entry in self.output.iterdir():
            target = _link_target(entry)
            if target and target.startswith(prefix) and entry.name not in names:
                entry.unlink(missing_ok=True)

    # --- leftovers -----------------------------------------------------------------------

    def sweep(self) -> None:
        """Remove what dead runs left: their folders, work tables, locks and temporary links.

        Kept: the current and previous results, this run, and every run whose lock is held.
        """
        state = self.output / STATE
        kept = {self.run}
        for pointer in ("current", "previous"):
            target = _link_target(state / pointer)
            if target:
                kept.add(Path(target).name)
        others = {_run_of(entry.name) for entry in self.runs.iterdir()} - {self.run}
        for run in sorted(others):
            if _is_alive(self.runs / f"{run}.lock"):
                continue
            if run not in kept:
                shutil.rmtree(self.runs / run, ignore_errors=True)
            shutil.rmtree(self.runs / f"{run}.work", ignore_errors=True)
            (self.runs / f"{run}.lock").unlink(missing_ok=True)
        for entry in list(state.iterdir()) + list(self.output.iterdir()):
            if entry.name.endswith(".tmp") and entry.is_symlink():  # see _replace_link
                run = entry.name.rsplit(".", 2)[-2]
                if run != self.run and not _is_alive(self.runs / f"{run}.lock"):
                    entry.unlink(missing_ok=True)
            elif entry.name.startswith(LEGACY_LEFTOVERS) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def _run_of(name: str) -> str:
    for suffix in (".lock", ".work"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_alive(lock: Path) -> bool:
    """True while the run that owns `lock` holds it (a killed run's lock is free)."""
    try:
        handle = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False


def _link_target(path: Path) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:  # missing, or not a link
        return None


def _replace_link(path: Path, target: Path, run: str) -> None:
    """Point `path` at `target` in one step: a new link renamed over the old entry.

    The new link is named after the run, so a sweep can tell a dead run's from a live one's.
    """
    staged = path.with_name(f".{path.name}.{run}.tmp")
    os.symlink(target, staged)
    try:
        os.replace(staged, path)
    except OSError:
        staged.unlink(missing_ok=True)
        raise
