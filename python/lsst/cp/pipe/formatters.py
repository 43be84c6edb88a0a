# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A YAML formatter that uses libyaml, for the large scale dictionaries.

cp_pipe's ``cpFlatNormScales`` layout repeats every exposure scale under every amplifier: at
LSSTCam scale (3024 amplifiers x 50 exposures) that is 151,200 floats, and daf_butler's
`~lsst.daf.butler.formatters.yaml.YamlFormatter` writes it with PyYAML's pure-Python emitter
(16 s on the benchmark machine, against 4.8 s with libyaml; bench/README.md).  This formatter
writes and reads the same YAML text through libyaml's C dumper and loader when PyYAML has them,
and behaves exactly like its base class otherwise.  The package's butler seed config declares
it for the ``StructuredDataDict`` storage class.
"""

from __future__ import annotations

__all__ = ["LibyamlFormatter"]

from typing import Any

import yaml

from lsst.daf.butler.formatters.yaml import YamlFormatter
from lsst.resources import ResourcePath

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LibyamlFormatter(YamlFormatter):
    """`YamlFormatter` with libyaml's safe dumper and loader for plain dictionaries and lists."""

    def read_from_uri(self, uri: ResourcePath, component: str | None = None, expected_size: int = -1) -> Any:
        return yaml.load(uri.read(), Loader=_LOADER)

    def to_bytes(self, in_memory_dataset: Any) -> bytes:
        if not isinstance(in_memory_dataset, dict | list) or self.write_parameters.get("unsafe_dump"):
            return super().to_bytes(in_memory_dataset)
        return yaml.dump(in_memory_dataset, Dumper=_DUMPER, sort_keys=False).encode()
