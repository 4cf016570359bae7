"""Compare the verdicts of two runs of one study (e.g. two `medium` runs with disjoint seeds).

    python benchmarks/compare_verdicts.py RUN_A RUN_B

Prints one markdown table row per claim and scope with both runs' effect, 95% CI and verdict, and
flags a flip: one run "supported" where the other says "not supported" (a move to or from
"inconclusive" is not a flip: issue 13's criterion). Exit code 1 if any claim flipped.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

OPPOSITE = {("supported", "not supported"), ("not supported", "supported")}


def _verdicts(run: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(run / "verdicts.csv", newline="") as f:
        return {(row["scope"], row["claim_name"]): row for row in csv.DictReader(f)}


def _cell(row: dict[str, str] | None) -> str:
    if row is None:
        return "(absent)"
    return f"{float(row['effect']):+.3g} [{float(row['ci_low']):+.3g}, {float(row['ci_high']):+.3g}] {row['verdict']}"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all((Path(a) / "verdicts.csv").is_file() for a in argv):
        print("usage: compare_verdicts.py RUN_A RUN_B (run folders with a verdicts.csv)", file=sys.stderr)
        return 2
    a, b = (_verdicts(Path(x)) for x in argv)
    flips = 0
    print("| claim | scope | run A | run B | flip |\n|---|---|---|---|---|")
    for key in list(a) + [k for k in b if k not in a]:
        ra, rb = a.get(key), b.get(key)
        flip = ra is not None and rb is not None and (ra["verdict"], rb["verdict"]) in OPPOSITE
        flips += flip
        print(f"| {key[1]} | {key[0]} | {_cell(ra)} | {_cell(rb)} | {'**yes**' if flip else 'no'} |")
    print(f"\n{flips} opposite verdict(s) of {len(set(a) | set(b))} claims.")
    return 1 if flips else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
