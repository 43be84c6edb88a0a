# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The three task-topic directives of documenteer's stack configuration, for this package's task pages.

documenteer's stack-package extensions no longer install from PyPI, so the task pages keep their
directives and this local extension gives them meaning:

``lsst-task-topic``
    marks a task page (nothing is rendered; the page's own label is its target);
``lsst-task-api-summary``
    links the task class's page in the API reference;
``lsst-task-config-fields``
    lists every field of the task's config class: name, type, default and doc, read from the class
    itself, so the list cannot fall behind the code. The doc strings are shown as text, not parsed:
    they are written for ``pipetask --show config``, not as reStructuredText.
"""

from __future__ import annotations

import importlib

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.application import Sphinx


def import_object(path: str) -> type:
    """Import ``module.Class`` given its full path."""
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


class TaskTopicDirective(Directive):
    """``.. lsst-task-topic:: module.TaskClass``: marks a task page; renders nothing."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        import_object(self.arguments[0])  # a renamed or removed task fails the build here
        return []


class TaskApiSummaryDirective(Directive):
    """``.. lsst-task-api-summary:: module.TaskClass``: a link to the class's API page."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        path = self.arguments[0]
        import_object(path)
        text = f"The API reference: :py:class:`{path}` (its ``run`` and ``runQuantum``)."
        container = nodes.container()
        self.state.nested_parse(StringList([text], source=self.state.document.current_source),
                                self.content_offset, container)
        return container.children


class TaskConfigFieldsDirective(Directive):
    """``.. lsst-task-config-fields:: module.TaskClass``: every config field of the task."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        config_class = import_object(self.arguments[0]).ConfigClass
        fields = config_class._fields
        items = nodes.definition_list()
        for name in sorted(fields):
            field = fields[name]
            term = nodes.term("", "", nodes.literal(text=name), nodes.Text(f" ({_kind(field)}, default "),
                              nodes.literal(text=_default(field)), nodes.Text(")"))
            definition = nodes.definition("", nodes.paragraph(text=" ".join(str(field.doc).split())))
            items += nodes.definition_list_item("", term, definition)
        return [items]


def _kind(field: object) -> str:
    """The field's class and the type of its values (of its items, for a list field)."""
    value_type = getattr(field, "itemtype", None) or getattr(field, "dtype", None)
    return type(field).__name__ + (f" of {value_type.__name__}" if isinstance(value_type, type) else "")


def _default(field: object) -> str:
    """The field's default as Python would write it; a sub-config's is its class, shown by name."""
    default = getattr(field, "default", None)
    return default.__name__ if isinstance(default, type) else repr(default)


def setup(app: Sphinx) -> dict[str, bool]:
    """Register the three directives."""
    app.add_directive("lsst-task-topic", TaskTopicDirective)
    app.add_directive("lsst-task-api-summary", TaskApiSummaryDirective)
    app.add_directive("lsst-task-config-fields", TaskConfigFieldsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
