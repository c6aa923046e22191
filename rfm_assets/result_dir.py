"""The CLI's result directory: one run's files replace the last run's as one unit.

Layout of an `--output` directory:

    customer_segments.parquet -> .rfm/current/customer_segments.parquet
    segment_analytics.parquet -> .rfm/current/segment_analytics.parquet
    run_summary.json          -> .rfm/current/run_summary.json
    .rfm/current  -> runs/<run>    the one pointer a run replaces
    .rfm/previous -> runs/<run>    the result it replaced, kept for readers still on it
    .rfm/visible                   the names this directory's runs have shown, one a line
    .rfm/runs/<run>/               one run's finished files
    .rfm/runs/<run>.work/          a Spark run's intermediate tables
    .rfm/runs/<run>.lock           locked while that run is alive
    .rfm/switch.lock               held while a run switches `current` or sweeps

A run writes everything into its own folder, then renames one new link over `.rfm/current`:
the visible names resolve through that link, so a reader sees the whole old result or the
whole new one, never a mix, whatever is killed when; of racing runs the last switch wins
whole. Every run first removes what dead runs left (their lock is free); a live run's folder
is never touched. Needs a file system with symbolic links and `flock` (Linux, macOS).

A run removes or replaces only what rfm-assets wrote. A visible name is ours while it is in
`.rfm/visible` and is still the link `.rfm/current/<name>`; a run adds its names to the
manifest (written whole, then renamed into place) before it makes their links, and drops the
names it hid after hiding them. A name the run will show that holds anything else (your own
file, folder or link, or a result of the layout before `.rfm/`, which cannot be told from
yours) is refused before the run starts, and again at the switch, with nothing touched. The
sweep removes only entries named exactly as this module names them. A directory with
`.rfm/current` but no manifest (written by the version before it) adopts the links named
`X -> .rfm/current/X`, the one shape that version made.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from rfm_assets.errors import RFMError

STATE = ".rfm"
MANIFEST = "visible"  # .rfm/visible: the names this directory's runs have shown
RUN = r"\d{8}T\d{6}-[0-9a-f]{8}"  # a run's name, as __init__ makes it
# In .rfm/runs: a run's folder, work tables and lock.
RUN_ENTRY = re.compile(rf"(?P<run>{RUN})(\.work|\.lock)?")
# In .rfm/runs: a result folder of the layout before `.rfm/`, set aside by an older version.
SET_ASIDE = re.compile(r"legacy-[0-9a-f]{8}")
# `.<name>.<run>.tmp`: a link or the manifest being put in place (_replace_link, _write_manifest).
STAGED = re.compile(rf"\.(?P<name>.+)\.(?P<run>{RUN})\.tmp")
# Folders of the layout before versioned results, left by killed runs.
LEGACY_LEFTOVER = re.compile(r"\.rfm_(staging|work)_[0-9a-f]{8}")


def _describe(error: OSError) -> str:
    return error.strerror or str(error)


def _refusal(taken: list[Path]) -> str:
    if len(taken) == 1:
        return (
            f"--output: {taken[0]} exists and was not written by rfm-assets; move it or choose "
            "another --output"
        )
    return (
        f"--output: {', '.join(map(str, taken))} exist and were not written by rfm-assets; "
        "move them or choose another --output"
    )


class ResultDirectory:
    """One run's place in an output directory; use as a context manager.

    `files` is where the run writes its results and `work` its intermediate tables; nothing
    there is visible until `publish`. Leaving the context without publishing removes both.
    `shows`: the names the run will show; entering refuses, touching nothing, if one of them
    is taken by something rfm-assets did not write (see `claim`).
    """

    def __init__(self, output: Path, shows: Iterable[str] = ()):
        self.output = Path(output)
        self.shows = tuple(shows)
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
        self.claim(self.shows)
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
    def _switching(self, create: bool = True):
        """Hold the directory's switch lock: pointer swaps and sweeps happen one at a time, so
        a sweep never deletes a run that another run made current after the sweep looked.
        Readers take no lock. `create=False`: where no run has switched yet, take none."""
        path = self.output / STATE / "switch.lock"
        handle = None
        try:
            handle = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if create:
                raise
        try:
            if handle is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            if handle is not None:
                os.close(handle)  # closing releases the lock

    def _release(self) -> None:
        if self._lock is not None:
            (self.runs / f"{self.run}.lock").unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None

    # --- what is ours --------------------------------------------------------------------

    def claim(self, names: Iterable[str]) -> None:
        """Refuse, touching nothing, if a name the run will show is taken by an entry that
        rfm-assets did not write there: a file, folder or link of yours, or a result of the
        layout before `.rfm/` (which cannot be told from yours)."""
        try:
            with self._switching(create=False):  # not while a run switches or hides
                taken = self._taken(names)
        except OSError as error:
            raise RFMError(f"--output: cannot read {self.output}: {_describe(error)}") from None
        if taken:
            raise RFMError(_refusal(taken))

    def _taken(self, names: Iterable[str]) -> list[Path]:
        """Of `names`, the entries in the directory that rfm-assets did not write."""
        foreign, links = [], []
        for name in sorted(set(names)):
            path = self.output / name
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(mode):
                foreign.append(name)
                continue
            target = _link_target(path)
            if target is None:
                continue  # hidden since: free
            (links if target == _our_target(name) else foreign).append(name)
        # Read after the links: a run adds a name to the manifest before it makes the link.
        shown = self._read_manifest()
        foreign += [name for name in links if name not in shown]
        return [self.output / name for name in sorted(foreign)]

    def _is_ours(self, name: str) -> bool:
        """True if `DIR/name` is the link this module makes (the manifest says the rest)."""
        return _link_target(self.output / name) == _our_target(name)

    def _read_manifest(self) -> set[str]:
        path = self.output / STATE / MANIFEST
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            # Written by the version before the manifest (or no result yet): its links.
            if _link_target(self.output / STATE / "current") is None:
                return set()
            return {entry.name for entry in self.output.iterdir() if self._is_ours(entry.name)}
        return {line for line in text.splitlines() if _is_plain_name(line)}

    def _write_manifest(self, names: Iterable[str]) -> None:
        """`.rfm/visible` replaced whole: written beside it, then renamed over it."""
        state = self.output / STATE
        staged = state / f".{MANIFEST}.{self.run}.tmp"
        with open(staged, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name}\n" for name in sorted(set(names))))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(staged, state / MANIFEST)
        except OSError:
            staged.unlink(missing_ok=True)
            raise

    # --- switching -----------------------------------------------------------------------

    def publish(self) -> None:
        """Make this run's files the visible result, all at once.

        Refused, with nothing switched, if a name it shows is taken by something rfm-assets
        did not write (put there since the run started)."""
        state = self.output / STATE
        names = sorted(p.name for p in self.files.iterdir())
        try:
            with self._switching():
                taken = self._taken(names)
                if taken:
                    raise RFMError(_refusal(taken))
                shown = self._read_manifest()
                self._write_manifest(shown | set(names))  # before any link it names is made
                replaced = _link_target(state / "current")
                _replace_link(state / "current", Path("runs") / self.run, self.run)
                self._published = True
                if replaced and replaced != f"runs/{self.run}":
                    _replace_link(state / "previous", Path(replaced), self.run)
                for name in names:
                    self._show(name)
                self._hide_stale(shown - set(names))
                self._write_manifest(names)  # the hidden names went above
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
        """`DIR/name` as a link through `.rfm/current`, made once and never changed after.

        `publish` checked the name is free or already this link; a plain `symlink` fails
        rather than replace anything put there since."""
        if not self._is_ours(name):
            os.symlink(_our_target(name), self.output / name)

    def _hide_stale(self, names: Iterable[str]) -> None:
        """Of names shown before (the manifest's), those the current result does not have
        (another --format, no --split-by-segment) go, while they are still our links."""
        for name in sorted(names):
            if self._is_ours(name):
                (self.output / name).unlink(missing_ok=True)

    # --- leftovers -----------------------------------------------------------------------

    def sweep(self) -> None:
        """Remove what dead runs left: their folders, work tables, locks and temporary links.

        Kept: the current and previous results, this run, and every run whose lock is held.
        Only entries named exactly as this module (or an older version) names them go.
        """
        state = self.output / STATE
        kept = {self.run}
        for pointer in ("current", "previous"):
            target = _link_target(state / pointer)
            if target:
                kept.add(Path(target).name)
        others = set()
        for entry in self.runs.iterdir():
            match = RUN_ENTRY.fullmatch(entry.name)
            if match:
                others.add(match["run"])
            elif SET_ASIDE.fullmatch(entry.name):
                others.add(entry.name)
        others.discard(self.run)
        for run in sorted(others):
            if _is_alive(self.runs / f"{run}.lock"):
                continue
            if run not in kept:
                shutil.rmtree(self.runs / run, ignore_errors=True)
            shutil.rmtree(self.runs / f"{run}.work", ignore_errors=True)
            (self.runs / f"{run}.lock").unlink(missing_ok=True)
        for entry in state.iterdir():  # a dead run's staged pointer or manifest
            staged = STAGED.fullmatch(entry.name)
            if staged and self._is_dead(staged["run"]):
                if entry.is_symlink() or entry.is_file():
                    entry.unlink(missing_ok=True)
        for entry in self.output.iterdir():
            staged = STAGED.fullmatch(entry.name)
            if staged:
                # A visible link an older version's dead run was putting in place.
                ours = _link_target(entry) == _our_target(staged["name"])
                if ours and self._is_dead(staged["run"]):
                    entry.unlink(missing_ok=True)
            elif LEGACY_LEFTOVER.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)

    def _is_dead(self, run: str) -> bool:
        return run != self.run and not _is_alive(self.runs / f"{run}.lock")


def _our_target(name: str) -> str:
    """What the visible link `name` points at when rfm-assets made it."""
    return str(Path(STATE) / "current" / name)


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and os.sep not in name


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
