"""The one way the package reads YAML: run configs, rule sets, the catalog, component files.

YAML's anchors and aliases let a file of a few hundred bytes stand for billions of values
(`b: [*a, *a, ...]`, nested): a loader that builds them costs nothing, but the first code
that walks the result runs out of memory. So every YAML file is read here, bounded:
- a regular file (a pipe or device would hang or never end) of at most `MAX_YAML_BYTES`;
- its values counted as the code that reads them would see them, each alias expanded, at
  most `MAX_YAML_VALUES`; a value that contains itself is refused.
Every problem is one `RFMConfigError` line naming the setting and the file.
"""

from __future__ import annotations

import copy
import functools
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from rfm_assets.errors import RFMConfigError

# A rule set, a run config or a component's defs.yaml is a few KiB.
MAX_YAML_BYTES = 1 << 20
# Values (scalars, lists, mappings, keys included) after every alias is expanded.
MAX_YAML_VALUES = 100_000


def _expanded_size(root: yaml.Node, what: str, path: str) -> int:
    """How many values the document holds with every alias expanded; refuses a document
    over MAX_YAML_VALUES or one that contains itself. Shared nodes are counted once per use
    but measured once (memoised), so the count itself is cheap."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise RFMConfigError(f"{what}: {path} has a value that contains itself (an alias)")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            raise RFMConfigError(
                f"{what}: {path} expands to more than {MAX_YAML_VALUES:,} values through its "
                "aliases (*name), more than settings or rules need"
            )
        sizes[key] = total
        return total

    return size(root)


def parse_yaml(text: str, what: str, path: str) -> Any:
    """The value of one YAML document, bounded as the module says."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, what, path)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise RFMConfigError(f"{what}: {path} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise RFMConfigError(f"{what}: {path} nests its values too deeply") from None
    finally:
        loader.dispose()


def read_bounded(path: str | Path, what: str, limit: int, error=RFMConfigError) -> bytes:
    """The bytes of a local regular file of at most `limit` bytes: a pipe or device is refused
    before it is opened, and a file is read no further than the bound. `what` names the
    setting or flag that pointed at it; a missing file raises FileNotFoundError, for the
    caller to name."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what}: {path} is not a regular file (a pipe or device?)")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as problem:
        raise error(f"{what}: cannot read {path}: {problem.strerror or problem}") from None
    if len(data) > limit:
        raise error(f"{what}: {path} is larger than {limit // 2**20} MiB, more than it may hold")
    return data


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML document of a local file, bounded (see the module)."""
    data = read_bounded(path, what, MAX_YAML_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RFMConfigError(f"{what}: {path} is not UTF-8 text") from None
    # Each text is parsed once: a range of weeks reads the same rule set in every step of
    # every week (10 ms a parse). A copy goes out, so no caller changes what the next reads.
    return copy.deepcopy(_parsed_once(text, what, str(path)))


_parsed_once = functools.lru_cache(maxsize=32)(parse_yaml)
