"""Render an `mpsearch report` HTML page with a real HTML/CSS layout engine and save its pages as PNG.

The check the report "opens in a browser" wants, on a machine without one: WeasyPrint lays the page out
(HTML parsing, CSS, embedded PNGs) into a PDF and pdfium rasterises it. Neither is a dependency of
mpsearch (`pip install weasyprint pypdfium2`, ideally in a separate virtual environment).

    python analysis/render_report.py runs/quickstart/report.html --out analysis/results/quickstart/report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="the HTML file `mpsearch report STUDY.yaml` wrote")
    parser.add_argument("--out", default=None, help="PNG path prefix (default: beside the report)")
    parser.add_argument("--pages", type=int, default=0, help="pages to rasterise (0: all)")
    args = parser.parse_args()
    try:
        import pypdfium2
        import weasyprint
    except ImportError as exc:
        print(f"error: {exc.name} is missing; `pip install weasyprint pypdfium2` to render reports.", file=sys.stderr)
        return 2
    report = Path(args.report)
    if not report.is_file():
        print(f"error: no report at {report}; write one with `mpsearch report STUDY.yaml`.", file=sys.stderr)
        return 2
    prefix = Path(args.out) if args.out else report.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    pdf = weasyprint.HTML(filename=str(report)).write_pdf()
    document = pypdfium2.PdfDocument(pdf)
    count = len(document) if args.pages <= 0 else min(args.pages, len(document))
    for index in range(count):
        path = f"{prefix}-p{index + 1}.png"
        document[index].render(scale=1.2).to_pil().save(path)
        print(f"wrote {path}")
    print(f"{len(document)} pages laid out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
