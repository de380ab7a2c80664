"""The HTML shell of qbench's reports: one self-contained file, no network.

plotly.js is inlined once in ``<head>``; every figure is then a ``<div>`` plus
the call that draws it. Tables are plain HTML, sortable by a few lines of
inline script, so a 700-layer table stays light.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable, Optional, Sequence

import plotly.graph_objects as go
import plotly.offline

FIGURE_CONFIG = {"displaylogo": False, "responsive": True}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1rem 2rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.muted { color: #666; font-size: .9rem; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin: .8rem 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .4rem .8rem; min-width: 8rem; }
.card .label { color: #666; font-size: .8rem; } .card .value { font-size: 1.3rem; font-weight: 600; }
.card .value .pass, .card .value .fail { font-size: .85rem; }
.pass { color: #2e7d32; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border-bottom: 1px solid #eee; padding: .25rem .6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; background: #f6f6f6; position: sticky; top: 0; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
.table-wrap { max-height: 36rem; overflow: auto; border: 1px solid #eee; }
tr.psnr-red td.psnr { background: #ffcdd2; } tr.psnr-amber td.psnr { background: #ffe0b2; }
tr.psnr-green td.psnr { background: #e8f5e9; } tr.drop td:first-child { border-left: 3px solid #c62828; }
.note { background: #f6f6f6; border-left: 3px solid #bbb; padding: .4rem .8rem; font-size: .9rem; }
.note ul { margin: .2rem 0; }
.note.warn { background: #fff8e1; border-left-color: #f9a825; }
/* TFLite joins names with ';' and no space: let any text break anywhere rather than widen the page; numbers
   and headers stay whole */
p, li, td, h1, h2, h3 { overflow-wrap: anywhere; } td.num { white-space: nowrap; }
td.name { min-width: 12rem; } td .why { display: block; white-space: normal; }
.sub { color: #666; font-size: .75rem; }
/* marks: a symbol and words beside the colour (see qbench.host.report.marks) */
.why { font-size: .8rem; font-weight: 600; } .why.bad, td.bad .why, span.bad { color: #b71c1c; }
.why.warn, td.warn .why, span.warn { color: #8a5300; }
.card.bad { border: 2px solid #c62828; background: #ffebee; } .card.warn { border: 2px solid #f9a825; background: #fff8e1; }
td.bad { background: #ffcdd2; } td.warn { background: #ffe0b2; }
tr.output-bad td:first-child { border-left: 3px solid #c62828; }
tr.output-warn td:first-child { border-left: 3px solid #f9a825; }
"""

# Sorts a table by the clicked column; cells carry their sort key in data-v.
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[column];
        var v = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
        var n = parseFloat(v);
        return isNaN(n) ? v.toLowerCase() : n;
      }
      rows.sort(function (a, b) {
        var ka = key(a), kb = key(b);
        var order = (typeof ka === typeof kb) ? (ka < kb ? -1 : ka > kb ? 1 : 0) : (typeof ka === "number" ? -1 : 1);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def esc(value: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape("" if value is None else str(value))


def breakable(name: Any) -> str:
    """A layer name as HTML, with a line-break opportunity after each ``;`` (TFLite joins fused ops' names with
    it and no space; elsewhere the CSS breaks anywhere); a copy of the text still gives the name back whole."""
    return esc(name).replace(";", ";<wbr>")


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """A number for people: fixed digits, ``-`` when missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    if isinstance(value, float) and not math.isfinite(value):
        return esc(value)
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e7):
        return f"{value:.{max(digits, 1)}e}{unit}"
    return f"{value:.{digits}f}{unit}"


def figure_html(fig: go.Figure, height: int = 420) -> str:
    """One figure as a ``<div>``; plotly.js itself comes from the page head."""
    fig.update_layout(height=fig.layout.height or height, template="plotly_white",
                      margin=dict(l=60, r=20, t=fig.layout.margin.t or 50, b=50))
    return fig.to_html(full_html=False, include_plotlyjs=False, config=FIGURE_CONFIG)


def note(text: str) -> str:
    """A grey aside, e.g. for a figure the report has no data for."""
    return f'<p class="note">{esc(text)}</p>'


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], sortable: bool = False,
          row_classes: Optional[Iterable[str]] = None, wrap: bool = False) -> str:
    """An HTML table.

    Args:
        headers: Column titles.
        rows: Cells; a cell is either raw text, or ``(html, sort_key)`` for a cell
            already rendered as HTML (numbers get right-aligned).
        sortable: Whether clicking a header sorts the rows.
        row_classes: One CSS class string per row.
        wrap: Put the table in a scrolling box.
    """
    classes = iter(row_classes) if row_classes is not None else None
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cls = next(classes) if classes is not None else ""
        cells = "".join(_cell(cell) for cell in row)
        body.append(f'<tr class="{esc(cls)}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    html_table = (f'<table class="{"sortable" if sortable else ""}"><thead><tr>{head}</tr></thead>'
                  f'<tbody>{"".join(body)}</tbody></table>')
    return f'<div class="table-wrap">{html_table}</div>' if wrap else html_table


def num_cell(value: Any, digits: int = 2, unit: str = "", cls: str = "") -> tuple:
    """A numeric cell: formatted text, sortable by its value (missing values sort as text, after numbers)."""
    key = "" if value is None else repr(float(value)) if isinstance(value, (int, float)) else str(value)
    return (fmt(value, digits, unit), key, f"num {cls}".strip())


def marked(cell: tuple, mark: Any) -> tuple:
    """A rendered cell ``(html, sort_key, class)`` with a mark's symbol and words after its text and its level
    as a class (a :class:`qbench.host.report.marks.Mark`; None leaves the cell as it is)."""
    if mark is None:
        return cell
    text, key, cls = cell
    return f'{text}<span class="why">{esc(mark.text)}</span>', key, f"{cls} {mark.level}".strip()


def _cell(cell: Any) -> str:
    if isinstance(cell, tuple):
        text, key, *rest = cell
        cls = f' class="{esc(rest[0])}"' if rest and rest[0] else ""
        return f'<td{cls} data-v="{esc(key)}">{text}</td>'
    return f"<td>{esc(cell)}</td>"


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML document with plotly.js inlined once."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<style>{_CSS}</style>\n"
        f"<script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script>\n"
        "</head>\n<body>\n"
        f"{body}\n"
        f"<script>{_SORT_JS}</script>\n"
        "</body>\n</html>\n"
    )
