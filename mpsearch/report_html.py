"""The pieces report.html is built of: the page's style, notes, embedded PNG figures, tables of text
cells (a column of numbers aligned right), and metric rows with a rate's 95% interval folded in."""

from __future__ import annotations

import base64
import html
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsearch.units import format_delta, format_metric, format_rate, is_error_rate

if TYPE_CHECKING:
    import pandas as pd

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1800px;
       padding: 1em 1.5em; color: #222; line-height: 1.4; }
p, details, ul { max-width: 64em; }
h1 { font-size: 1.6em; overflow-wrap: anywhere; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
nav { display: flex; flex-wrap: wrap; gap: .2em 1.2em; }
div.wide { overflow-x: auto; max-width: 100%; margin: .8em 0; }
table.data { border-collapse: collapse; font-size: .85em; }
table.data th, table.data td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; white-space: nowrap; }
table.data th { background: #f3f3f3; } table.data .text { text-align: left; }
table.data tr.front td { background: #eef4fb; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: .8em; overflow-x: auto; font-size: .8em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5em 0; }
p.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; }
p.meta { color: #666; font-size: .9em; overflow-wrap: anywhere; }
summary { cursor: pointer; }
@media (max-width: 600px) { body { padding: .5em .8em; } table.data { font-size: .75em; } }
@media print { body { max-width: none; margin: 0; } table.data { font-size: .6em; } div.wide { overflow: visible; } }
"""


DELTA_HEADER = "ΔWER vs uniform-8 [95% CI]"

HEADERS = {"wer": "WER", "test_wer": "test WER", "cer": "CER", "test_cer": "test CER",
            "latency_ms": "latency", "size_bytes": "weight size", "avg_weight_bits": "avg weight bits",
            "delta_wer_vs_u8": DELTA_HEADER}


def column_header(name: str) -> str:
    return HEADERS.get(name, name)


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def png(draw: Callable[[Path], None]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return path.read_bytes()


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def is_present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def plain(value: Any) -> str:
    from mpsearch.search.pareto import format_value

    if isinstance(value, bool):
        return "yes" if value else "no"
    return format_value(float(value) if isinstance(value, float) else value)


def html_table(head: list[str] | tuple[str, ...], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """Cells are text already; a column of numbers aligns right, any other left, its header with it."""
    text = [not all(_numeric(row[i]) or row[i] in ("-", "reference") for row in rows) for i in range(len(head))]
    text[0] = True

    def cell(tag: str, value: Any, i: int) -> str:
        return f"<{tag}{' class=text' if text[i] else ''}>{html.escape(str(value))}</{tag}>"

    header = "".join(cell("th", h, i) for i, h in enumerate(head))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{classes[r]}"' if classes and classes[r] else ""
        body.append(f"<tr{cls}>{''.join(cell('td', c, i) for i, c in enumerate(row))}</tr>")
    return (f'<div class="wide"><table class="data"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _numeric(text: str) -> bool:
    head = str(text).lstrip("+-").split(" ", 1)[0].replace(",", "").rstrip("%*")
    try:
        float(head)
    except ValueError:
        return False
    return True


def frame_table(frame: pd.DataFrame) -> str:
    return html_table(list(frame.columns), [[plain(v) for v in row] for row in frame.itertuples(index=False)])


def with_intervals(pairs: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Metric rows as text, a rate's `_ci_low`/`_ci_high` folded into its row as "12.3% [11.1, 13.6]" and
    the delta's interval into the delta's row."""
    values = dict(pairs)
    rows = []
    for key, value in pairs:
        base = key.rsplit(".", 1)[-1]
        if base.endswith(("_ci_low", "_ci_high")):
            continue
        prefix = key[: len(key) - len(base)]
        if base == "delta_wer_vs_u8":
            rows.append((DELTA_HEADER, format_delta(value, values.get(prefix + "delta_ci_low"),
                                                    values.get(prefix + "delta_ci_high"))))
        elif is_error_rate(key) and prefix + f"{base}_ci_low" in values:
            rows.append((f"{column_header(key)} [95% CI]", format_rate(value, values[prefix + f"{base}_ci_low"],
                                                                  values.get(prefix + f"{base}_ci_high"))))
        else:
            rows.append((column_header(key), format_metric(key, value)))
    return rows


def metric_table(rows: list[tuple[str, str]]) -> str:
    return html_table(("metric", "value"), [list(r) for r in rows])


def join_numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists (training history) are left out of the tables."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat
