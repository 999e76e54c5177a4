"""FLUX VAE and text encoders loaded headless through a ComfyUI checkout.

Why ComfyUI: its loaders already read every published variant of these files (fp16, fp8,
scaled fp8 T5, BFL and diffusers VAE layouts) and encode exactly as the ComfyUI graphs
that will later use the adapter do. No UI or server is started: the checkout is put on
``sys.path``, ``comfy.cli_args.args.cpu`` is set when there is no CUDA (before
``comfy.model_management`` is imported), and ``comfy.sd.VAE`` / ``comfy.sd.load_clip`` are
called directly. ``comfy`` is imported only inside these functions, never when
``lumix_core`` is imported. Files are checked by their safetensors header first, so a
pickle is refused and a swapped or wrong file gets a clear message before gigabytes load.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ..io.safetensors_io import CheckpointError, read_header
from ..latents import LATENT_CHANNELS, LATENT_SCALE, LATENT_SHIFT, latent_in, latent_out
from .config import COMFYUI_ENV, comfyui_path

_CLIP_L_KEY = "text_model.encoder.layers.0.mlp.fc1.weight"
_CLIP_BIG_KEYS = ("text_model.encoder.layers.22.mlp.fc1.weight",)  # CLIP-H / CLIP-G have more layers
_T5_XXL_KEYS = ("encoder.block.23.layer.1.DenseReluDense.wi_1.weight",
                "encoder.block.23.layer.1.DenseReluDense.wi.weight")
_VAE_KEY = "decoder.conv_in.weight"


class HostError(RuntimeError):
    """ComfyUI cannot be found or imported."""


def import_comfy(checkout: Optional[str], *, cpu: Optional[bool] = None) -> ModuleType:
    """Import ``comfy`` from ``checkout`` (or ``$COMFYUI_PATH``) without starting ComfyUI.

    ``cpu=None`` forces ComfyUI onto the CPU only when CUDA is absent.
    """
    path = comfyui_path(checkout)
    if not path:
        raise HostError(f"no ComfyUI checkout: pass --comfyui PATH or set {COMFYUI_ENV}")
    root = Path(path).expanduser().resolve()
    if not (root / "comfy" / "sd.py").is_file():
        raise HostError(f"{root} is not a ComfyUI checkout (no comfy/sd.py inside)")
    loaded = sys.modules.get("comfy")
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", "") or next(iter(getattr(loaded, "__path__", [""])), "")).resolve()
        if root not in where.parents:
            raise HostError(f"another ComfyUI is already imported in this process ({where}); cannot also use {root}")
    elif str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        # isort: off
        import comfy.options  # noqa: F401  (argument parsing stays off: cli_args parses [])
        import comfy.cli_args
        # isort: on

        use_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
        if use_cpu and "comfy.model_management" not in sys.modules:
            comfy.cli_args.args.cpu = True
        import comfy.latent_formats
        import comfy.model_management  # noqa: F401
        import comfy.sd
        import comfy.utils
    except ImportError as e:
        raise HostError(f"importing ComfyUI from {root} failed ({e}); install its requirements "
                        f"(pip install -r {root / 'requirements.txt'})") from e
    fmt = comfy.latent_formats.Flux()
    if (fmt.scale_factor, fmt.shift_factor) != (LATENT_SCALE, LATENT_SHIFT):
        raise HostError(f"ComfyUI's FLUX latent scaling ({fmt.scale_factor}, {fmt.shift_factor}) differs from "
                        f"LumiX's ({LATENT_SCALE}, {LATENT_SHIFT}); this ComfyUI version is not supported")
    return comfy


def comfy_version(comfy: ModuleType) -> str:
    """The checkout's version string (read from ``comfyui_version.py``, not imported)."""
    version_file = Path(comfy.__path__[0]).parent / "comfyui_version.py"
    try:
        match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", version_file.read_text(encoding="utf-8"))
    except OSError:
        return "unknown"
    return match.group(1) if match else "unknown"


# --------------------------------------------------------------------------- file checks
def _keys(path: "str | Path") -> dict:
    return read_header(path).tensors  # refuses pickles, truncated files, bad headers


def check_vae_file(path: "str | Path") -> None:
    """The FLUX VAE (16 latent channels); a clear error for an SD VAE or a non-VAE file."""
    tensors = _keys(path)
    name = Path(path).name
    if _VAE_KEY not in tensors:
        raise CheckpointError(f"{name}: not a VAE (no '{_VAE_KEY}'); pass the FLUX VAE, ae.safetensors")
    channels = tensors[_VAE_KEY].shape[1]
    if channels != LATENT_CHANNELS:
        raise CheckpointError(f"{name}: this VAE has {channels} latent channels; the FLUX VAE has "
                              f"{LATENT_CHANNELS} (SD1.5/SDXL VAEs have 4). Pass ae.safetensors")


def check_clip_l_file(path: "str | Path") -> None:
    tensors = _keys(path)
    name = Path(path).name
    if any(k in tensors for k in _T5_XXL_KEYS):
        raise CheckpointError(f"{name}: this is a T5-XXL text encoder; pass it as --t5, and CLIP-L as --clip-l")
    if _CLIP_L_KEY not in tensors and "transformer.resblocks.0.ln_1.weight" not in tensors:
        raise CheckpointError(f"{name}: not a CLIP text encoder (no '{_CLIP_L_KEY}'); pass clip_l.safetensors")
    if any(k in tensors for k in _CLIP_BIG_KEYS):
        raise CheckpointError(f"{name}: this is a larger CLIP (CLIP-H/G, more than 12 layers); FLUX uses CLIP-L")


def check_t5_file(path: "str | Path") -> None:
    tensors = _keys(path)
    name = Path(path).name
    if _CLIP_L_KEY in tensors:
        raise CheckpointError(f"{name}: this is a CLIP text encoder; pass it as --clip-l, and T5-XXL as --t5")
    if not any(k in tensors for k in _T5_XXL_KEYS):
        raise CheckpointError(f"{name}: not a T5-XXL encoder (no '{_T5_XXL_KEYS[0]}'); pass t5xxl_fp16.safetensors "
                              "or an fp8 variant")


# ------------------------------------------------------------------------------- loaders
def load_vae(comfy: ModuleType, path: "str | Path") -> Any:
    """``comfy.sd.VAE`` from a checked FLUX VAE file."""
    check_vae_file(path)
    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    vae = comfy.sd.VAE(sd=sd, metadata=metadata)
    if getattr(vae, "first_stage_model", None) is None:
        raise CheckpointError(f"{Path(path).name}: ComfyUI could not build a VAE from this file")
    return vae


def load_flux_text_encoders(comfy: ModuleType, clip_l: "str | Path", t5: "str | Path",
                            model_options: Optional[dict] = None) -> Any:
    """``comfy.sd.CLIP`` for FLUX (CLIP-L pooled + T5-XXL sequence) from checked files.

    ``model_options`` goes to ``comfy.sd.load_clip`` unchanged (e.g. ``{"dtype": torch.float16}``).
    """
    check_clip_l_file(clip_l)
    check_t5_file(t5)
    return comfy.sd.load_clip(ckpt_paths=[str(clip_l), str(t5)], clip_type=comfy.sd.CLIPType.FLUX,
                              model_options=dict(model_options or {}))


class ComfyEncoder:
    """:class:`~lumix_core.train.encoder.Encoder` backed by ComfyUI's VAE and CLIP objects."""

    def __init__(self, vae: Any, clip: Any, description: Optional[dict[str, str]] = None) -> None:
        self.vae, self.clip = vae, clip
        self._description = dict(description or {})

    @classmethod
    def from_files(cls, comfyui: Optional[str], vae: Optional[str], clip_l: Optional[str], t5: Optional[str],
                   device: str = "auto") -> "ComfyEncoder":
        missing = [flag for flag, v in (("--vae", vae), ("--clip-l", clip_l), ("--t5", t5)) if not v]
        if missing:
            raise HostError(f"prepare needs the encoder files: {', '.join(missing)}")
        check_vae_file(vae)  # cheap header checks first: a wrong file should not wait for ComfyUI to import
        check_clip_l_file(clip_l)
        check_t5_file(t5)
        comfy = import_comfy(comfyui, cpu=True if device == "cpu" else None)
        encoder = cls(load_vae(comfy, vae), load_flux_text_encoders(comfy, clip_l, t5), {
            "host": "comfyui", "comfyui_version": comfy_version(comfy), "vae": Path(vae).name,
            "clip_l": Path(clip_l).name, "t5": Path(t5).name})
        return encoder

    def describe(self) -> dict[str, str]:
        return dict(self._description)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        z = self.vae.encode(images[..., :3].float().cpu())
        return latent_in(z.float().cpu())

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        txts, pooled = [], []
        for caption in captions:
            tokens = self.clip.tokenize(caption)
            cond, pool = self.clip.encode_from_tokens(tokens, return_pooled=True)
            txts.append(cond[0].float().cpu())
            pooled.append(pool[0].float().cpu())
        lengths = sorted({t.shape[0] for t in txts})
        if len(lengths) > 1:
            raise ValueError(f"captions encode to different token counts {lengths}; encode them one at a time")
        return torch.stack(txts), torch.stack(pooled)


class ComfyVAEDecoder:
    """:class:`~lumix_core.train.encoder.Decoder` through ComfyUI's FLUX VAE (validation sheets)."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    @classmethod
    def from_file(cls, comfyui: Optional[str], vae: str) -> "ComfyVAEDecoder":
        comfy = import_comfy(comfyui)
        return cls(load_vae(comfy, vae))

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latent_out(latents.float().cpu())).float().clamp(0, 1)
