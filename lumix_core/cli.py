"""``lumix`` / ``python -m lumix_core``: commands that need no ComfyUI and no FLUX weights.

    lumix demo --prompt "a red sphere and a blue box on a gray floor, light from the left" --out demo_out
    lumix decompose photo.jpg --out maps_out

``demo`` (:mod:`lumix_core.toy.demo`) and ``decompose`` (:mod:`lumix_core.toy.decompose`) run
the shipped toy model on CPU. Training lives in ``lumix-train``; the ComfyUI nodes in the pack.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from .toy.backbone import SAMPLE_STEPS, TRUE_CFG
    from .toy.demo import DEFAULT_PROMPT

    parser = argparse.ArgumentParser(prog="lumix", description="LumiX intrinsic maps (host-independent tools).")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="five maps from a prompt with the shipped toy model (CPU, seconds)",
                          description="Generate albedo, irradiance, color, depth and normal maps for a prompt with "
                                      "the toy LumiX model shipped in the package (trained on a synthetic world; "
                                      "its vocabulary is that world's caption grammar).")
    demo.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"scene description (default: {DEFAULT_PROMPT!r})")
    demo.add_argument("--out", default="demo_out", help="output folder; files get a new counter, nothing is overwritten")
    demo.add_argument("--seed", type=int, default=0, help="noise seed (one draw shared by all maps)")
    demo.add_argument("--steps", type=int, default=SAMPLE_STEPS, help="Euler steps")
    demo.add_argument("--cfg", type=float, default=TRUE_CFG, help="true classifier-free guidance scale (1 = off)")
    demo.add_argument("--normal-convention", choices=("opengl", "directx"), default="opengl")
    demo.add_argument("--weights", default=None, help="toy model folder (default: the shipped weights)")
    demo.add_argument("--threads", type=int, default=1,
                      help="CPU threads for torch (default 1: the toy model's matmuls are tiny, and a second "
                           "thread waiting on a busy core made a run 50x slower on a shared 2-core machine)")
    from .toy import decompose

    decompose.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "decompose":
        from .toy import decompose

        return decompose.main(args)
    if args.command == "demo":
        import torch

        from .toy.demo import run_demo
        from .toy.model import WEIGHTS_DIR
        from .toy.text import PromptError

        torch.set_num_threads(max(1, args.threads))
        try:
            result = run_demo(args.prompt, args.out, seed=args.seed, steps=args.steps, true_cfg=args.cfg,
                              weights=args.weights or WEIGHTS_DIR, normal_convention=args.normal_convention)
        except (PromptError, FileNotFoundError, FileExistsError, ValueError) as e:
            print(f"lumix demo: {e}", file=sys.stderr)
            return 2
        print(f"contact sheet: {result.sheet}")
        for f in result.files:
            print(f"map: {f}")
        print(f"done in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
