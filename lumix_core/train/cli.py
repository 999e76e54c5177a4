"""``lumix-train`` / ``python -m lumix_core.train``: the two stages from the command line.

    lumix-train prepare --data ROOT --cache CACHE --maps albedo,irradiance,color,depth,normal \\
        --comfyui ~/ComfyUI --vae ae.safetensors --clip-l clip_l.safetensors --t5 t5xxl_fp16.safetensors --size 512
    lumix-train fit --cache CACHE --flux flux1-dev.safetensors --output runs/mine --steps 2000
    torchrun --nproc_per_node 4 -m lumix_core.train fit ...        # multi-GPU

Flags are generated from :mod:`lumix_core.train.config` (one place for defaults and help).
Every setting can also come from ``--config file.yaml`` / ``.toml``; flags win over the file.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from dataclasses import MISSING, fields
from typing import Optional, Sequence, get_type_hints

from ..io.safetensors_io import CheckpointError
from .comfy_host import HostError
from .config import ConfigError, FitConfig, PrepareConfig, build_config, load_config_file
from .data import DatasetError

#: Errors that carry a message for the user (bad input); anything else is a bug and shows its traceback.
EXPECTED_ERRORS = (ConfigError, DatasetError, CheckpointError, HostError, FileExistsError, FileNotFoundError)

#: Modules of the ``train`` extra (pyproject.toml) the stages import, by their package names. ComfyUI-Manager
#: installs only requirements.txt, which leaves them out: the nodes do not need them.
TRAINING_EXTRAS = {"cv2": "opencv-python", "tqdm": "tqdm"}


def missing_training_extras() -> list[str]:
    return [package for module, package in TRAINING_EXTRAS.items() if importlib.util.find_spec(module) is None]


def _add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = get_type_hints(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        required = f.default is MISSING
        default = "" if required else f" (default: {f.default})"
        help_text = f.metadata.get("help", "") + ("  [required]" if required else default)
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumix-train",
        description="Train LumiX adapters (Tensor LoRA + QBA) for FLUX.1 from a few hundred scenes.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, cls, text in (("prepare", PrepareConfig, "encode a dataset once (FLUX VAE + text encoders via ComfyUI)"),
                            ("fit", FitConfig, "train an adapter on a prepared cache")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                       help="YAML or TOML file with settings (top level or a '%s:' section); flags override it" % name)
        _add_config_flags(p, cls)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    missing = missing_training_extras()
    if missing:
        print(f"lumix-train needs the training extras ({', '.join(missing)} missing): "
              "pip install 'lumix-intrinsics[train]', or pip install -e '.[train]' in a clone", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    cli_values = {k: v for k, v in vars(args).items() if k not in ("stage", "config_file", "log_level")}
    try:
        file_values = load_config_file(args.config_file, args.stage) if args.config_file else {}
        if args.stage == "prepare":
            from .prepare import run_prepare

            report = run_prepare(build_config(PrepareConfig, file_values, cli_values))
            print(report.summary())
        else:
            from .fit import run_fit

            config = build_config(FitConfig, file_values, cli_values)
            result = run_fit(config, explicit=set(file_values) | set(cli_values), progress=True)
            print(f"trained {result.steps} steps; adapter: {result.adapter_path}")
    except EXPECTED_ERRORS as e:
        print(f"lumix-train {args.stage}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
