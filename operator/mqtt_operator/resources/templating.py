"""The package's one jinja2 Environment and a pure `render()` of the templates in mqtt_operator/templates."""

from __future__ import annotations

import jinja2

# StrictUndefined: a misspelt or missing value fails the render instead of writing an empty string into a
# config file. No autoescape: the templates are config files (mosquitto.conf ...), not HTML; the callers
# validate every value they interpolate.
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("mqtt_operator", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # noqa: S701 - config files, not HTML (see above)
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template_name: str, **values: object) -> str:
    """The template rendered with `values`; templates are read from the installed package, never written."""
    return _ENV.get_template(template_name).render(**values)
