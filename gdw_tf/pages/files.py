"""The pages' HTML templates, CSS and JavaScript: files of the package (`templates/`).

A template names its blanks `${name}` (`string.Template`); what fills them is not searched
again, so CSS, JavaScript or user text holding `$` or braces goes in as it is.
"""

import functools
import importlib.resources
import string

TEMPLATES = "templates"


@functools.cache
def read(name: str) -> str:
    """The text of the package file `templates/<name>`."""
    return (importlib.resources.files(__package__) / TEMPLATES / name).read_text("utf-8")


def fill(name: str, **values: str) -> str:
    """The template `templates/<name>` with each `${key}` replaced by `values[key]`.

    Raises:
      KeyError: when the template has a blank that `values` does not fill.
    """
    return string.Template(read(name)).substitute(values)
