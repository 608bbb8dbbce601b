"""``report.html``: the markdown report rendered to one self-contained HTML file (images inlined
as data URIs, styles embedded), so it can be mailed or archived as a single file."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

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


def _inline_images(body: str, base: Path) -> str:
    def repl(match: re.Match[str]) -> str:
        src = match.group(1)
        path = base / src
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"]+\.png)"', repl, body)


def write_html(markdown_path: Path, out_path: Path, title: str) -> Path:
    """Render ``markdown_path`` (report.md) to a self-contained ``out_path`` (report.html)."""
    text = markdown_path.read_text()
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    body = body.replace("FAILED", '<span class="failed">FAILED</span>')
    body = _inline_images(body, markdown_path.parent)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
    out_path.write_text(page)
    return out_path
