"""YAML to plain Python, remembering where each value stood so errors can name line and column."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ConfigError, ConfigIssue

Marks = dict[str, tuple[int, int]]
# Values a routing file may expand to. Real files have a few thousand; YAML aliases can make a short
# file expand to billions ("billion laughs"), which would hang `laneway check` instead of failing.
MAX_VALUES = 200_000
TOO_DEEP = ("not a routing file: its values nest hundreds of levels deep, or an alias holds itself "
            "(`a: &a [*a]`); write them flatter")


def load_yaml(text: str, source: str = "") -> tuple[Any, Marks]:
    """Parse one YAML document; return its value and a map from YAML path to (line, column)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError([ConfigIssue("", TOO_DEEP)], source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise ConfigError([ConfigIssue("", f"not valid YAML: {problem}", line, column)], source) from None
    marks: Marks = {}
    if node is None:
        return None, marks
    try:
        return _convert(node, "", marks), marks
    except ConfigError as error:  # raised where the source is not known
        raise ConfigError(error.issues, source) from None
    except RecursionError:
        raise ConfigError([ConfigIssue("", TOO_DEEP)], source) from None
    except yaml.YAMLError as exc:  # a scalar YAML cannot construct, e.g. a bare `=`
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("", f"not valid YAML: {problem}", line)], source) from None


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _convert(node: yaml.Node, path: str, marks: Marks) -> Any:
    quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
    # For a quoted scalar the mark points at the text, so columns inside it line up.
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1 + int(quoted))
    if len(marks) > MAX_VALUES:
        line = node.start_mark.line + 1
        raise ConfigError([ConfigIssue(path, f"the file expands to more than {MAX_VALUES:,} values (through "
                                             "YAML aliases?); write the values out", line)])
    if isinstance(node, yaml.MappingNode):
        pairs, merged = _merged(node)
        result: dict[Any, Any] = {}
        from_merge: set[Any] = set()  # keys a merge gave, which a key of this mapping may override
        for i, (key_node, value_node) in enumerate(pairs):
            key = _scalar(key_node)
            child = join(path, str(key))
            if i < merged:
                from_merge.add(key)
            elif key in result and key not in from_merge:
                line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                raise ConfigError([ConfigIssue(child, "duplicate key; each key may appear once", line, column)])
            else:
                from_merge.discard(key)
            result[key] = _convert(value_node, child, marks)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, join(path, i), marks) for i, item in enumerate(node.value)]
    return _scalar(node)


def _merged(node: yaml.MappingNode) -> tuple[list[tuple[yaml.Node, yaml.Node]], int]:
    """The mapping's pairs with its merge keys (`<<: *defaults`) applied, and how many of them, first, came
    from merges: later pairs override earlier ones, as YAML's merge key says."""
    own = sum(1 for key, _ in node.value if key.tag != _MERGE)
    if own == len(node.value):
        return node.value, 0
    yaml.SafeLoader("").flatten_mapping(node)  # in place: the merged pairs first, then the mapping's own
    return node.value, len(node.value) - own


_MERGE = "tag:yaml.org,2002:merge"


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        line = node.start_mark.line + 1
        raise ConfigError([ConfigIssue("", "a mapping key must be a plain value", line)])
    loader = yaml.SafeLoader("")
    return loader.construct_scalar(node) if node.tag == "tag:yaml.org,2002:str" else loader.construct_object(node)
