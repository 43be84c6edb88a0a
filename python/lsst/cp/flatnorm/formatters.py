# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A YAML formatter for the large scale dictionaries.

cp_pipe's ``cpFlatNormalizeScales`` layout repeats every exposure scale under every amplifier: at
LSSTCam scale (3024 amplifiers x 50 exposures) that is 151,200 floats.  daf_butler's
`~lsst.daf.butler.formatters.yaml.YamlFormatter` writes it with PyYAML's pure-Python emitter (16 s
on the benchmark machine); even with libyaml's C emitter, PyYAML's pure-Python *representer*
takes 3-4 s (bench/README.md).  This formatter writes trees of plain dictionaries and scalars
(what ``StructuredDataDict`` holds) directly as the block YAML text ``yaml.safe_dump(...,
sort_keys=False)`` would write, in 0.2-0.5 s at that size; anything else goes through libyaml's
dumper.  It reads through libyaml's loader when PyYAML has it.  The package's butler seed config
declares it for the ``StructuredDataDict`` storage class.
"""

from __future__ import annotations

__all__ = ["BlockYamlFormatter", "block_yaml"]

import functools
import math
from collections.abc import Callable
from typing import Any

import yaml

from lsst.daf.butler.formatters.yaml import YamlFormatter
from lsst.resources import ResourcePath

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INDENT = "  "  # PyYAML's default block indentation
# Longer keys become PyYAML "complex" (``? key``) keys; strings this short never reach them.
_MAX_STRING = 100


class _Unsupported(Exception):
    """The tree holds something `block_yaml` leaves to PyYAML."""


def _float_text(value: float) -> str:
    """Write a float as PyYAML's SafeRepresenter does (YAML 1.1 float syntax)."""
    if value != value:
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        # YAML 1.1 resolves "1e+16" as a string: PyYAML writes "1.0e+16".
        text = text.replace("e", ".0e", 1)
    return text


@functools.lru_cache(maxsize=4096)
def _string_text(value: str) -> str:
    """Write a string as PyYAML does, quoted where it would resolve to another type.

    PyYAML's own scalar analysis decides (and is cached: keys repeat).  Only strings that PyYAML
    writes on one line whatever the indentation, and as simple keys, are accepted: not empty, not
    long, no whitespace (where plain and single-quoted scalars are folded), and not double-quoted
    (escaped text is folded anywhere).
    """
    if not value or len(value) > _MAX_STRING or any(character.isspace() for character in value):
        raise _Unsupported(value)
    text = yaml.dump(value, Dumper=_DUMPER).removesuffix("\n...\n").removesuffix("\n")
    if "\n" in text or text.startswith('"'):
        raise _Unsupported(value)
    return text


_SCALAR_WRITERS: dict[type, Callable[[Any], str]] = {
    float: _float_text,
    int: str,
    bool: lambda value: "true" if value else "false",
    str: _string_text,
    type(None): lambda value: "null",
}


def _scalar_text(value: Any) -> str:
    # Exact types only: PyYAML's safe dumper refuses subclasses such as numpy.float64.
    writer = _SCALAR_WRITERS.get(type(value))
    if writer is None:
        raise _Unsupported(value)
    return writer(value)


def _write_mapping(mapping: dict, indent: str, lines: list[str], seen: set[int]) -> None:
    if id(mapping) in seen:
        raise _Unsupported("a dictionary appears twice; PyYAML writes an alias")
    seen.add(id(mapping))
    for key, value in mapping.items():
        key_text = _scalar_text(key)
        if type(value) is float:  # the bulk of a scale dictionary
            lines.append(f"{indent}{key_text}: {_float_text(value)}\n")
        elif type(value) is not dict:
            lines.append(f"{indent}{key_text}: {_scalar_text(value)}\n")
        elif value:
            lines.append(f"{indent}{key_text}:\n")
            _write_mapping(value, indent + _INDENT, lines, seen)
        else:
            lines.append(f"{indent}{key_text}: {{}}\n")


def block_yaml(tree: Any) -> str | None:
    """Write a tree of dictionaries and scalars as ``yaml.safe_dump(tree, sort_keys=False)`` does.

    Parameters
    ----------
    tree : `object`
        The object to write.

    Returns
    -------
    text : `str` or `None`
        The YAML text, or `None` if ``tree`` is not a `dict` whose nodes are all `dict` and whose
        keys and leaves are all `str` (one line, no whitespace), `int`, `float`, `bool` or `None`:
        such trees are left to PyYAML.
    """
    if type(tree) is not dict:
        return None
    if not tree:
        return "{}\n"
    lines: list[str] = []
    try:
        _write_mapping(tree, "", lines, set())
    except _Unsupported:
        return None
    return "".join(lines)


class BlockYamlFormatter(YamlFormatter):
    """`YamlFormatter` that writes plain dictionary trees directly and everything else with libyaml."""

    def read_from_uri(self, uri: ResourcePath, component: str | None = None, expected_size: int = -1) -> Any:
        return yaml.load(uri.read(), Loader=_LOADER)

    def to_bytes(self, in_memory_dataset: Any) -> bytes:
        if not isinstance(in_memory_dataset, dict | list) or self.write_parameters.get("unsafe_dump"):
            return super().to_bytes(in_memory_dataset)
        text = block_yaml(in_memory_dataset)
        if text is None:
            text = yaml.dump(in_memory_dataset, Dumper=_DUMPER, sort_keys=False)
        return text.encode()
