"""``report.html``: the markdown report rendered to one self-contained HTML file (images inlined
as data URIs, styles embedded), so it can be mailed or archived as a single file.

Untrusted text is escaped where it enters the markdown (``md_text``); rendering adds two more
guards, so a section that forgot cannot run a script: python-markdown with raw HTML switched
off (a ``<tag>`` in the source stays text), then the nh3 (ammonia) sanitizer on the result,
which keeps only ordinary tags and drops event handlers and ``javascript:`` links.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown
import nh3
from markdown.extensions import Extension

_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.25em; }
.failed { color: #b00020; font-weight: bold; }
"""


class _NoRawHtml(Extension):
    """Treat HTML in the markdown source as text (python-markdown's documented way since its
    ``safe_mode`` was removed: drop the raw-HTML block and inline processors)."""

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 - the API's name
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")


def render_markdown(text: str) -> str:
    """Markdown (tables, fenced code) to sanitised HTML: raw HTML in ``text`` comes out as
    text, and only ordinary tags and attributes survive (no scripts, event handlers or
    ``javascript:`` links)."""
    body = markdown.markdown(text, extensions=["tables", "fenced_code", _NoRawHtml()],
                             extension_configs={"tables": {"use_align_attribute": True}})
    return nh3.clean(body)


def _inline_images(body: str, base: Path) -> str:
    def repl(match: re.Match[str]) -> str:
        src = match.group(1)
        path = base / src
        if "/" in src or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"]+\.png)"', repl, body)


def write_html(markdown_path: Path, out_path: Path, title: str) -> Path:
    """Render ``markdown_path`` (report.md) to a self-contained ``out_path`` (report.html); the
    PNGs it links from its own folder are inlined. ``title`` is escaped."""
    body = render_markdown(markdown_path.read_text())
    body = body.replace("FAILED", '<span class="failed">FAILED</span>')
    body = _inline_images(body, markdown_path.parent)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
    out_path.write_text(page)
    return out_path
