"""Render an `mpsearch report` page in headless Chromium: screenshots at given widths, and a layout check
that no table, figure or line of text reaches past the page at those widths.

The page is loaded into an iframe of exactly the width asked for (a browser window has a minimum width
larger than a phone's), so media queries and wrapping behave as on a screen of that width. A script in
the outer page measures the report after it loads and writes the numbers into the DOM, which
`chromium --headless --dump-dom` prints. Chromium is not a dependency of mpsearch
(Debian: `apt-get install chromium`).

    python analysis/render_report.py runs/quickstart/report.html --out analysis/results/report/quickstart
    python analysis/render_report.py runs/quickstart/report.html --check --widths 390 1400 1920
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTHS = (390, 1400, 1920)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
          "--allow-file-access-from-files")

# Runs in the outer page once the iframe has loaded the report: the report's own width and every
# element that sticks out of it, except inside a box that scrolls on its own (tables, code blocks).
_PROBE = """
<script>
addEventListener("load", () => {
  const frame = document.getElementById("report"), doc = frame.contentDocument;
  const width = doc.documentElement.clientWidth;
  const out = {width, scroll_width: doc.documentElement.scrollWidth, height: doc.documentElement.scrollHeight,
               tables: [], wrapped: [], outside: []};
  for (const table of doc.querySelectorAll("table")) {
    const box = table.parentElement, r = box.getBoundingClientRect();
    out.tables.push({right: r.right, overflow: frame.contentWindow.getComputedStyle(box).overflowX,
                     table_width: table.scrollWidth, box_width: box.clientWidth});
  }
  for (const cell of doc.querySelectorAll("td, th")) {
    const range = doc.createRange();
    range.selectNodeContents(cell);
    if (range.getClientRects().length > 1) out.wrapped.push(cell.textContent);
  }
  for (const el of doc.body.querySelectorAll("*")) {
    if (el.parentElement.closest("div.wide, pre")) continue;
    const r = el.getBoundingClientRect();
    if (r.right > width + 0.5) out.outside.push(`${el.tagName.toLowerCase()} reaches ${Math.round(r.right)} px`);
  }
  const pre = document.createElement("pre");
  pre.id = "layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _framed(report: Path, width: int, height: int, folder: Path) -> Path:
    page = folder / f"frame-{width}.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><style>body {{ margin: 0; }} '
                    f'iframe {{ border: 0; display: block; }}</style></head><body>'
                    f'<iframe id="report" src="{report.resolve().as_uri()}" width="{width}" height="{height}">'
                    f'</iframe>{_PROBE}</body></html>')
    return page


def _chromium(chromium: str, args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def measure_layout(report: str | Path, width: int, chromium: str | None = None, timeout: float = 120) -> dict:
    """The report laid out `width` px wide: its scroll width, each table box's right edge and overflow
    style, cells whose text wraps onto a second line, and elements past the right edge outside a
    scrolling box."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium on PATH; install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        page = _framed(Path(report), width, 1000, Path(folder))
        dom = _chromium(chromium, [f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom",
                                   page.as_uri()], timeout)
    found = re.search(r'<pre id="layout">(.*?)</pre>', dom, re.DOTALL)
    if not found:
        raise RuntimeError("the layout probe did not run (no <pre id=layout> in chromium's DOM)")
    return json.loads(html.unescape(found.group(1)))


def layout_problems(layout: dict) -> list[str]:
    """What reaches past the page in one measured layout; empty when it fits."""
    width = layout["width"]
    problems = []
    if layout["scroll_width"] > width:
        problems.append(f"the page scrolls sideways ({layout['scroll_width']} px in a {width} px window)")
    for i, table in enumerate(layout["tables"]):
        if table["right"] > width + 0.5:
            problems.append(f"table {i + 1}'s box reaches {table['right']:.0f} px")
        if table["table_width"] > table["box_width"] and table["overflow"] not in ("auto", "scroll"):
            problems.append(f"table {i + 1} is {table['table_width']} px wide in a {table['box_width']} px box "
                            "that does not scroll")
    problems += [f"a table cell wraps: {text!r}" for text in layout["wrapped"]]
    problems += layout["outside"]
    return problems


def screenshot(report: str | Path, width: int, path: str | Path, chromium: str | None = None,
               timeout: float = 120) -> Path:
    """A PNG of the whole report laid out `width` px wide."""
    chromium = chromium or find_chromium()
    height = min(int(measure_layout(report, width, chromium, timeout)["height"]) + 20, 16000)
    with tempfile.TemporaryDirectory() as folder:
        page = _framed(Path(report), width, height, Path(folder))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _chromium(chromium, [f"--window-size={width},{height}", "--virtual-time-budget=10000",
                             f"--screenshot={path.resolve()}", page.as_uri()], timeout)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="the HTML file `mpsearch report STUDY.yaml` wrote")
    parser.add_argument("--out", default=None, help="PNG path prefix; writes PREFIX-<width>.png (default: beside "
                                                    "the report)")
    parser.add_argument("--widths", type=int, nargs="+", default=None,
                        help=f"page widths in px (default: 1400 for screenshots, {' '.join(map(str, WIDTHS))} "
                             "with --check)")
    parser.add_argument("--check", action="store_true", help="check the layout instead of taking screenshots; "
                                                             "exit 1 if anything reaches past the page")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("error: no chromium on PATH; install it (Debian: apt-get install chromium).", file=sys.stderr)
        return 2
    report = Path(args.report)
    if not report.is_file():
        print(f"error: no report at {report}; write one with `mpsearch report STUDY.yaml`.", file=sys.stderr)
        return 2
    if args.check:
        failed = False
        for width in args.widths or WIDTHS:
            problems = layout_problems(measure_layout(report, width, chromium))
            print(f"{width} px: " + ("fits" if not problems else "; ".join(problems)))
            failed |= bool(problems)
        return 1 if failed else 0
    prefix = Path(args.out) if args.out else report.with_suffix("")
    for width in args.widths or (1400,):
        print(f"wrote {screenshot(report, width, f'{prefix}-{width}.png', chromium)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
