"""Errors a user can act on. Their message is the whole story, on one line."""

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional


class RFMError(Exception):
    """Base of every error whose message is meant for the user as it is."""


class RFMConfigError(RFMError, ValueError):
    """A setting, preset or segment grid is invalid; the message names the field or file."""


class RFMInputError(RFMError, ValueError):
    """The transaction input cannot be used; the message names the column, value or path."""


# --- Spark's memory failures, said in one line ------------------------------------------------

_OUT_OF_MEMORY = re.compile(r"java\.lang\.OutOfMemoryError: ([^\r\n]+)")
_HEAP_TOO_SMALL = re.compile(r"System memory (\d+) must be at least (\d+)")
# What Py4J says when the JVM it talks to has died (the usual end of an out-of-memory kill).
_JVM_GONE = ("Answer from Java side is empty", "Error while sending or receiving",
             "Java gateway process exited")  # fmt: skip
_MEMORY_SETTINGS = (
    "raise spark.driver.memory (in local mode the driver computes everything; e.g. "
    "--spark-conf spark.driver.memory=8g, or spark_config of the spark resource) or, on a "
    "cluster, spark.executor.memory"
)


def memory_failure(text: str) -> Optional[str]:
    """The one-line message for a Spark failure whose cause is memory, found in the text of
    the error chain (Java stack traces included), or None when memory is not the cause."""
    found = _OUT_OF_MEMORY.search(text)
    if found:
        return (
            f"Spark ran out of memory (java.lang.OutOfMemoryError: {found.group(1).strip()}): "
            + _MEMORY_SETTINGS
        )
    found = _HEAP_TOO_SMALL.search(text)
    if found:
        have, need = (int(n) // 2**20 for n in found.groups())
        return (
            f"Spark cannot start: its JVM has {have} MiB of heap and needs at least {need} MiB: "
            + _MEMORY_SETTINGS
        )
    if any(marker in text for marker in _JVM_GONE):
        return (
            "Spark's JVM stopped in the middle of the step, usually out of memory: "
            + _MEMORY_SETTINGS
        )
    return None


def _chain_text(error: BaseException) -> str:
    """The messages of an exception and of everything it was raised from or during (a Py4J
    error's message holds the Java stack trace, where the cause is named)."""
    texts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


@contextmanager
def memory_failures_named() -> Iterator[None]:
    """Turn a failure whose cause is memory into an RFMError naming the setting to raise,
    in place of Py4J's Java stack trace (which stays in the JVM's log); others pass as
    they are."""
    try:
        yield
    except RFMError:
        raise
    except Exception as error:
        message = memory_failure(_chain_text(error))
        if message is None:
            raise
        raise RFMError(message) from None


def naming_memory_failures(compute: Callable) -> Callable:
    """`compute` (a function or a generator function, as Dagster calls an asset's body)
    inside memory_failures_named; the signature Dagster reads stays the same."""
    if inspect.isgeneratorfunction(compute):

        @functools.wraps(compute)
        def generating(*args, **kwargs):
            with memory_failures_named():
                yield from compute(*args, **kwargs)

        return generating

    @functools.wraps(compute)
    def computing(*args, **kwargs):
        with memory_failures_named():
            return compute(*args, **kwargs)

    return computing
