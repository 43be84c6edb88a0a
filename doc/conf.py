# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Sphinx configuration of cp_flatnorm's documentation (``make docs``).

The layout is documenteer's for a stack package (``doc/conf.py``, ``doc/index.rst``,
``doc/lsst.cp.flatnorm/``), with plain Sphinx, numpydoc and sphinx-automodapi: documenteer's
stack-package configuration left its releases on PyPI with 2.0. Nothing is fetched at build
time (no intersphinx), so references to other packages' objects stay plain text, while every
reference to this package must resolve (``nitpicky``, below).
"""

import pkgutil
import shutil
import sys
from pathlib import Path

import lsst.cp.flatnorm
from lsst.cp.flatnorm.version import __version__

# lsst_task_topics.py, beside this file: the task pages' directives.
sys.path.insert(0, str(Path(__file__).parent))

project = "cp_flatnorm"
copyright = "cp_flatnorm's authors (BSD 3-clause)"
version = __version__
release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "numpydoc_one_template",  # numpydoc, its template compiled once (a quarter of the build time)
    "sphinx_automodapi.automodapi",
    "sphinx_automodapi.smart_resolver",
    "lsst_task_topics",
]

exclude_patterns = ["_build", "README.rst"]
default_role = "py:obj"
html_theme = "alabaster"
html_static_path: list[str] = []

# One page per class and function, under py-api/ (generated; git ignores it).
automodapi_toctreedirnm = "py-api"
automodsumm_inherited_members = False
# Inheritance diagrams need graphviz's dot program, which pip cannot install.
automodapi_inheritance_diagram = False
numpydoc_show_class_members = False
numpydoc_xref_param_type = False

# Every cross-reference to this package must resolve; other packages are not linked (no network at
# build time), so their names are not checked.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!lsst\.cp\.flatnorm)(?!lsst\.cp\.pipe).*")]

API_PAGE = Path(__file__).parent / "lsst.cp.flatnorm" / "api.rst"


def public_modules() -> list[str]:
    """Every public module of ``lsst.cp.flatnorm``, found by walking the package.

    Modules and packages whose name starts with ``_`` are private; ``pipelines``, ``bps`` and
    ``configs`` hold data files, not code.
    """
    data_packages = {"pipelines", "bps", "configs"}
    names = ["lsst.cp.flatnorm"]
    for module in pkgutil.walk_packages(lsst.cp.flatnorm.__path__, "lsst.cp.flatnorm."):
        parts = module.name.split(".")[3:]
        if parts[0] in data_packages or any(part.startswith("_") for part in parts):
            continue
        names.append(module.name)
    return sorted(names)


def write_api_page(modules: list[str]) -> None:
    """Write the API reference page, one ``automodapi`` per module, so a new module is covered.

    Each module's page lists what the module defines (a package: also what it re-exports from its
    own modules), not what it imports from other modules of the package.
    """
    title = "Python API reference"
    lines = [".. _lsst.cp.flatnorm-pyapi:", "", "#" * len(title), title, "#" * len(title), ""]
    for name in modules:
        lines += [f".. automodapi:: {name}", f"   :allowed-package-names: {name}",
                  ""]
    text = "\n".join(lines)
    if not API_PAGE.exists() or API_PAGE.read_text() != text:
        API_PAGE.write_text(text)


write_api_page(public_modules())
# automodapi writes a page per object into py-api/ and never removes one: a page left by an object
# that moved or was renamed would fail the build ("not included in any toctree"), so start afresh.
shutil.rmtree(Path(__file__).parent / automodapi_toctreedirnm, ignore_errors=True)
