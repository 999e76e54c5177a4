"""Print the README's VRAM table from ``bench/bench_memory.py --json`` output (its inference rows).

One line per sampling mode, scene count and size; one column per weight format; each cell the
computed peak GiB of one model call (FLUX + adapter):

    python bench/bench_memory.py --rows inference --json > vram.jsonl
    python tools/make_vram_table.py vram.jsonl        # or: ... --json | python tools/make_vram_table.py
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Iterable, TextIO

#: Column order and headings of the weight formats.
WEIGHTS = {"bf16": "bf16", "fp8": "fp8 e4m3fn", "q8_0": "GGUF Q8_0", "q4_0": "GGUF Q4_0"}
KINDS = {"text": "text + CFG", "photo": "photo"}


def _size(width: int, height: int) -> str:
    return f"{width}²" if width == height else f"{width}×{height}"


def table(rows: Iterable[dict]) -> str:
    """Markdown table of the inference rows (other modes are skipped; a missing cell is '-')."""
    cells: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r.get("mode") != "inference":
            continue
        key = (list(KINDS).index(r["inference"]), r["scenes"], r["width"] * r["height"], r["width"], r["height"])
        cells.setdefault(key, {})[r["weights"]] = r["peak_gib"]
    if not cells:
        raise SystemExit("no inference rows in the input: run bench/bench_memory.py --rows inference --json")
    weights = [w for w in WEIGHTS if any(w in c for c in cells.values())]
    lines = ["| one model call | size | " + " | ".join(WEIGHTS[w] for w in weights) + " |",
             "| --- | --- |" + " ---: |" * len(weights)]
    for (kind, scenes, _, width, height), by_weight in sorted(cells.items()):
        sequences = scenes * (10 if kind == 0 else 5)
        what = f"{list(KINDS.values())[kind]}, {scenes} scene{'s' if scenes > 1 else ''} ({sequences} seq)"
        values = " | ".join("-" if w not in by_weight else f"{by_weight[w]:.1f}" for w in weights)
        lines.append(f"| {what} | {_size(width, height)} | {values} |")
    return "\n".join(lines)


def read_rows(stream: TextIO) -> list[dict]:
    return [json.loads(line) for line in stream if line.strip().startswith("{")]


def main(argv: "list[str] | None" = None) -> None:
    ap = argparse.ArgumentParser(prog="python tools/make_vram_table.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", nargs="?", help="bench_memory.py --json output (default: standard input)")
    args = ap.parse_args(argv)
    if args.jsonl:
        with open(args.jsonl, encoding="utf-8") as f:
            rows = read_rows(f)
    else:
        rows = read_rows(sys.stdin)
    print(table(rows))


if __name__ == "__main__":
    main()
