"""The paired WER difference of two rows of `compare_methods.py` runs, which may come from different runs
(two models scored on the same dev and test utterances): dev and test, with 95% intervals.

    python analysis/paired_rows.py analysis/results/compare_wide.csv:s8bqat-w4 \
        analysis/results/compare_shipped.csv:uniform-w8

prints WER(first) - WER(second) per split, in points. The rows' per-utterance errors are read from each
CSV's `.details.json`; the two runs must have scored the same utterances (the same word counts, in the
same order), which is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mpsearch.eval.bootstrap import paired_delta, wer_interval


def load(spec: str) -> tuple[str, dict]:
    """'path.csv:row' -> (row, that row's per-split errors and word counts)."""
    path, sep, row = spec.rpartition(":")
    details = Path(path).with_suffix(".details.json")
    if not sep or not details.is_file():
        raise SystemExit(f"error: {spec!r} must be CSV:ROW of a compare_methods.py run with its .details.json "
                         f"beside it (looked for {details}).")
    table = json.loads(details.read_text())
    if row not in table:
        raise SystemExit(f"error: {details} has no row {row!r}; it has {', '.join(sorted(table))}.")
    return row, table[row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="CSV:ROW, e.g. analysis/results/compare_wide.csv:s8bqat-w4")
    parser.add_argument("second", help="CSV:ROW it is compared with")
    args = parser.parse_args(argv)
    (name_a, a), (name_b, b) = load(args.first), load(args.second)
    for split in ("dev", "test"):
        if a[split]["words"] != b[split]["words"]:
            raise SystemExit(f"error: the two rows scored different {split} utterances (word counts differ); "
                             "compare rows of runs on the same corpus and split.")
        words = a[split]["words"]
        wer_a, wer_b = wer_interval(a[split]["errors"], words), wer_interval(b[split]["errors"], words)
        delta = paired_delta(a[split]["errors"], b[split]["errors"], words)
        print(f"{split}: {name_a} {100 * wer_a.value:.2f}% [{100 * wer_a.low:.2f}, {100 * wer_a.high:.2f}] - "
              f"{name_b} {100 * wer_b.value:.2f}% [{100 * wer_b.low:.2f}, {100 * wer_b.high:.2f}] = "
              f"{100 * delta.value:+.2f} points [{100 * delta.low:+.2f}, {100 * delta.high:+.2f}] "
              f"({len(words)} utterances, {sum(words)} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
