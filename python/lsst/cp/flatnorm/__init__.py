# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat-field normalization tasks with cp_pipe's API, on pip-installable LSST middleware.

cp_pipe's class paths (``lsst.cp.pipe.cpFlatMeasure.CpFlatNormalizationTask``, ...) are served by
the separate compatibility package ``lsst.cp.pipe`` that the wheel installs from ``compat/``; this
package never imports it, so it works beside a real cp_pipe.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .version import __version__  # noqa: F401

# The tasks are imported when first asked for (``lsst.cp.flatnorm.CpFlatCombineTask``), not with the
# package: they import the middleware, which takes seconds, and ``cp-flatnorm --help`` must not wait.
_TASK_MODULES = (
    "cpCombine", "cpCombineTwoFlats", "cpFlatGradients", "cpFlatMeasure", "cpFlatNormalize", "cpFlatVisualize",
    "cpVerifyFlat",
)


def _task_modules() -> list[ModuleType]:
    return [importlib.import_module(f"{__name__}.{name}") for name in _TASK_MODULES]


def __getattr__(name: str) -> Any:
    for module in _task_modules():
        if name in module.__all__:
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # The public names only: the helpers imported above (ModuleType, Any) are not the package's API.
    dunders = (name for name in globals() if name.startswith("__"))
    return sorted({*dunders, *(name for module in _task_modules() for name in module.__all__)})
