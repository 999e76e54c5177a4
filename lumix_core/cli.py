"""``lumix`` / ``python -m lumix_core``: commands that need no ComfyUI and no FLUX weights.

    lumix demo --prompt "a red sphere and a blue box on a gray floor, light from the left" --out demo_out
    lumix decompose photo.jpg --out maps_out

``demo`` (:mod:`lumix_core.toy.demo`) and ``decompose`` (:mod:`lumix_core.toy.decompose`; with
``--sequence`` :mod:`lumix_core.toy.decompose_sequence`) run
the shipped toy model on CPU. Training lives in ``lumix-train``; the ComfyUI nodes in the pack.

May import: lumix_core.cli_args, lumix_core.toy.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .cli_args import OneLineParser, guidance_scale, output_folder, positive_int, seed_value, thread_count, write_error


def build_parser() -> argparse.ArgumentParser:
    from .toy.backbone import SAMPLE_STEPS, TRUE_CFG
    from .toy.demo import DEFAULT_PROMPT

    parser = OneLineParser(prog="lumix", description="LumiX intrinsic maps (host-independent tools).")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="five maps from a prompt with the shipped toy model (CPU, seconds)",
                          description="Generate albedo, irradiance, color, depth and normal maps for a prompt with "
                                      "the toy LumiX model shipped in the package (trained on a synthetic world; "
                                      "its vocabulary is that world's caption grammar).")
    demo.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"scene description (default: {DEFAULT_PROMPT!r})")
    demo.add_argument("--out", type=output_folder, default="demo_out",
                      help="output folder (made if missing); files get a new counter, nothing is overwritten")
    demo.add_argument("--seed", type=seed_value, default=0,
                      help="noise seed, 0 to 2**64-1 (one draw shared by all maps)")
    demo.add_argument("--steps", type=positive_int, default=SAMPLE_STEPS, help="Euler steps (at least 1)")
    demo.add_argument("--cfg", type=guidance_scale, default=TRUE_CFG,
                      help="true classifier-free guidance scale, at least 1 (1 = off)")
    demo.add_argument("--normal-convention", choices=("opengl", "directx"), default="opengl")
    demo.add_argument("--weights", default=None, help="toy model folder (default: the shipped weights)")
    demo.add_argument("--threads", type=thread_count, default=1,
                      help="CPU threads for torch (default 1: the toy model's matmuls are tiny, and a second "
                           "thread waiting on a busy core made a run 50x slower on a shared 2-core machine)")
    from .toy import decompose

    decompose.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "decompose":
        from .toy import decompose, decompose_sequence

        return (decompose_sequence.main if args.sequence else decompose.main)(args)
    if args.command == "demo":
        import torch

        from .toy.demo import run_demo
        from .toy.model import WEIGHTS_DIR
        from .toy.text import PromptError

        torch.set_num_threads(args.threads)
        try:
            result = run_demo(args.prompt, args.out, seed=args.seed, steps=args.steps, true_cfg=args.cfg,
                              weights=args.weights or WEIGHTS_DIR, normal_convention=args.normal_convention)
        except (PromptError, FileNotFoundError, FileExistsError, ValueError) as e:
            print(f"lumix demo: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # the checked --out failed while writing (disk full, remounted read-only)
            print(f"lumix demo: {write_error(args.out, e)}", file=sys.stderr)
            return 2
        print(f"contact sheet: {result.sheet}")
        for f in result.files:
            print(f"map: {f}")
        print(f"done in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
