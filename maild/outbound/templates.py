"""Mail templates: Jinja2 files whose first line is the Subject.

The admin's folder (`outbound.templates_dir`) is searched before the shipped
templates in config/templates, so any template can be overridden by a file of
the same name. Rendering is pure: the same variables give the same mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "templates"


class TemplateError(Exception):
    """A template is missing or cannot be rendered."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


class Templates:
    def __init__(self, admin_dir: Path | None = None) -> None:
        folders = [str(d) for d in (admin_dir, SHIPPED) if d is not None and d.is_dir()]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folders),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )

    def names(self) -> list[str]:
        return sorted(n.removesuffix(".txt.j2") for n in self.env.list_templates(extensions=["j2"]))

    def render(self, name: str, **variables) -> Rendered:
        try:
            text = self.env.get_template(f"{name}.txt.j2").render(**variables)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"no template {name!r} (known: {', '.join(self.names())})") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {name!r}: {exc}") from None
        head, _, body = text.partition("\n\n")
        if not head.startswith("Subject:"):
            raise TemplateError(f"template {name!r} must start with a 'Subject:' line and a blank line")
        return Rendered(" ".join(head[len("Subject:"):].split()), body.strip() + "\n")
