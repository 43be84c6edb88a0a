# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""numpydoc with its docstring template compiled once per builder instead of once per docstring.

numpydoc (1.x) builds a new Jinja environment and compiles ``numpydoc_docstring.rst`` for every
docstring and every signature it handles: about 3000 compilations, a quarter of this site's build
time.  The template is the same each time, so this extension keeps the first one compiled for each
builder and hands it to numpydoc's own `numpydoc.docscrape.get_doc_object`; the text numpydoc
produces is unchanged.  It replaces numpydoc's ``get_doc_object``, the hook numpydoc's ``setup``
takes for this purpose, and must come after ``numpydoc`` in ``extensions``.
"""

from __future__ import annotations

from typing import Any

import numpydoc.numpydoc
from numpydoc.docscrape import get_doc_object as build_doc_object
from numpydoc.docscrape_sphinx import SphinxClassDoc, SphinxFunctionDoc, SphinxObjDoc
from numpydoc.docscrape_sphinx import get_doc_object as numpydoc_get_doc_object
from sphinx.application import Sphinx

_templates: dict[int, Any] = {}
"""The compiled template for each builder of the current build (by ``id``; key 0 when numpydoc
passes no builder); emptied when a build starts, so a later build in the same process compiles its
own."""


def get_doc_object(obj: object, what: str | None = None, doc: str | None = None,
                   config: dict[str, Any] | None = None, builder: object = None) -> Any:
    """numpydoc's ``get_doc_object``, with the template compiled at the builder's first docstring."""
    config = {} if config is None else config
    key = 0 if builder is None else id(builder)
    if key not in _templates:
        result = numpydoc_get_doc_object(obj, what=what, doc=doc, config=config, builder=builder)
        _templates[key] = config["template"]
        return result
    config["template"] = _templates[key]
    return build_doc_object(obj, what=what, doc=doc, config=config, class_doc=SphinxClassDoc,
                            func_doc=SphinxFunctionDoc, obj_doc=SphinxObjDoc)


def forget_templates(app: Sphinx) -> None:
    """Empty the compiled templates when a builder starts."""
    _templates.clear()


def setup(app: Sphinx) -> dict[str, bool]:
    app.setup_extension("numpydoc")
    numpydoc.numpydoc.get_doc_object = get_doc_object
    app.connect("builder-inited", forget_templates)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
