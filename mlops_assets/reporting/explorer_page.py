"""The per-series explorer as one self-contained HTML file: data, script and styles inline.

The page needs no network (no CDN, no fonts, no images): it opens from a file, a blob URL or
an attachment alike. Its data is ``explorer_data.explorer_payload`` as compact JSON in a
``<script type="application/json">`` element; the script searches all series, lists the matches
and draws the chosen one's backtest as SVG. ``#series=<id>`` in the address opens one series.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

TEMPLATE = "explorer.html"
_DATA = "/*DATA*/"
_TITLE = "<!--TITLE-->"


def payload_json(payload: dict[str, Any]) -> str:
    """``payload`` as compact JSON safe inside a ``<script>`` element (no ``</`` in it)."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def render_explorer(payload: dict[str, Any]) -> str:
    """The explorer page for ``payload`` (``explorer_payload``'s output)."""
    template = (
        resources.files("mlops_assets.reporting").joinpath(TEMPLATE).read_text(encoding="utf-8")
    )
    head, rest = template.split(_DATA, 1)
    title = f"{payload.get('dataset', '')}: per-series explorer"
    head = head.replace(_TITLE, html.escape(title))
    return head + payload_json(payload) + rest
