"""Mail templates: Jinja2 files whose first line is the Subject.

The admin's folder (`outbound.templates_dir`) is searched before the shipped
templates in config/templates, so any template can be overridden by a file of
the same name. Rendering is pure: the same variables give the same mail.

Values are text, never layout: every value handed to a template has its line
breaks and control characters flattened before the template sees it, so a
customer's name or subject can never start a line of our mail (a display name
"Eve\r\nBcc: x@evil.test" prints as "Eve Bcc: x@evil.test"). Only the
variables named in MULTILINE (a customer's new text, a signature, a relay's
error) keep their line breaks; they still lose every other control character.
Cleaning the values rather than the output leaves an admin's filters
(`wordwrap`, `indent`) working on the multi-line ones. One filter of our own,
`size`, prints a byte count as people read it (`{{ 1536 | size }}` is "1.5 KiB").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "templates"
MULTILINE = frozenset({"text", "signature", "error"})
# Line breaks (CR, LF, VT, FF, NEL, Unicode line and paragraph separators) and tabs,
# then the other C0/C1 controls and DEL.
BREAKS_RE = re.compile("[\t\n\v\f\r\x85\u2028\u2029]+")
CONTROLS_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")


def one_line(value: str) -> str:
    """A value for the middle of a line: breaks and tabs become one space, other controls go."""
    return BREAKS_RE.sub(" ", CONTROLS_RE.sub("", value))


def lines(value: str) -> str:
    """Multi-line text: line ends normalised to LF, tabs kept, other controls gone."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    value = re.sub("[\v\f\x85\u2028\u2029]", "\n", value)
    return CONTROLS_RE.sub("", value)


def as_text(value: Any, multiline: bool = False) -> Any:
    """A template variable made safe to print: strings cleaned, inside lists and dicts too."""
    if isinstance(value, str):
        return lines(value) if multiline else one_line(value)
    if isinstance(value, (list, tuple)):
        return type(value)(as_text(v) for v in value)
    if isinstance(value, dict):
        return {k: as_text(v) for k, v in value.items()}
    return value


def human_size(n: int) -> str:
    """A byte count for people: 512 bytes, 1.5 KiB, 12 MiB."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}".replace(".0 ", " ")


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
            auto_reload=False,  # compiled once: maild reads its config and templates only at start
        )
        self.env.filters["size"] = human_size

    def names(self) -> list[str]:
        """Templates that make a mail; a name starting with "_" is a part other templates include."""
        return sorted(n.removesuffix(".txt.j2") for n in self.env.list_templates(extensions=["j2"])
                      if not n.startswith("_"))

    def render(self, name: str, **variables) -> Rendered:
        try:
            values = {k: as_text(v, k in MULTILINE) for k, v in variables.items()}
            text = self.env.get_template(f"{name}.txt.j2").render(**values)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"no template {name!r} (known: {', '.join(self.names())})") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {name!r}: {exc}") from None
        head, _, body = text.partition("\n\n")
        if not head.startswith("Subject:"):
            raise TemplateError(f"template {name!r} must start with a 'Subject:' line and a blank line")
        return Rendered(" ".join(head[len("Subject:"):].split()), body.strip() + "\n")
