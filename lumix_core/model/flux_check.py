"""Is this loaded model a FLUX.1 transformer LumiX can patch, and which shape does it have?

Hosts hand us whatever their loaders produced (a BFL/ComfyUI FLUX, fp8, GGUF, or a model of
another family). The QBA block functions rely on FLUX.1's block attributes, so before any
adapter is attached we check those attributes (not weight shapes: quantised weights may not
report logical shapes) and read the :class:`~lumix_core.model.checkpoint.ModelShape` the adapter
must fit. Every refusal names what was found and what to connect instead.
"""
from __future__ import annotations

from typing import Any

from .checkpoint import ModelShape

#: Attributes the QBA functions read on a double-stream block.
DOUBLE_ATTRS: tuple[str, ...] = (
    "img_mod", "img_norm1", "img_attn.qkv", "img_attn.norm", "img_attn.proj", "img_norm2", "img_mlp",
    "txt_mod", "txt_norm1", "txt_attn.qkv", "txt_attn.norm", "txt_attn.proj", "txt_norm2", "txt_mlp",
    "num_heads", "hidden_size",
)
#: Attributes the QBA functions read on a single-stream block.
SINGLE_ATTRS: tuple[str, ...] = (
    "linear1", "linear2", "pre_norm", "norm", "modulation", "mlp_act", "hidden_size", "num_heads", "mlp_hidden_dim",
)

_HINT = ("Load FLUX.1 (dev or schnell) with UNETLoader, a FLUX.1 checkpoint loader, an fp8 file or a "
         "GGUF loader, and connect that MODEL.")


class NotFluxError(ValueError):
    """The model is not a FLUX.1 transformer (with a message that says what it is instead)."""


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _missing(block: Any, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if _get(block, n) is None]


def flux1_shape(diffusion_model: Any, family: str = "this model") -> ModelShape:
    """Check that ``diffusion_model`` has FLUX.1's blocks and return its shape.

    ``family`` names the model in messages (e.g. the host's model class, ``"SDXL"``).
    """
    doubles = getattr(diffusion_model, "double_blocks", None)
    singles = getattr(diffusion_model, "single_blocks", None)
    if doubles is None or singles is None or len(doubles) == 0 or len(singles) == 0:
        raise NotFluxError(
            f"LumiX works on FLUX.1 only, but the connected MODEL is {family} "
            f"({type(diffusion_model).__name__}, without FLUX double/single-stream blocks). {_HINT}")
    for kind, blocks, names in (("double", doubles, DOUBLE_ATTRS), ("single", singles, SINGLE_ATTRS)):
        missing = _missing(blocks[0], names)
        if missing:
            raise NotFluxError(
                f"LumiX works on FLUX.1 only, but the connected MODEL is {family}: its {kind}-stream blocks "
                f"lack {missing} (a FLUX variant with different blocks, e.g. Chroma or FLUX.2). {_HINT}")
    hidden = int(doubles[0].hidden_size)
    first = getattr(singles[0], "mlp_hidden_dim_first", None)
    if first is not None and int(first) != int(singles[0].mlp_hidden_dim):
        raise NotFluxError(
            f"LumiX works on FLUX.1 only, but the connected MODEL is {family}: its single-stream MLP is gated "
            f"({first} -> {singles[0].mlp_hidden_dim} features, as in FLUX.2), not FLUX.1's. {_HINT}")
    for kind, blocks in (("double_blocks", doubles), ("single_blocks", singles)):
        for i, block in enumerate(blocks):
            if int(block.hidden_size) != hidden:
                raise NotFluxError(f"{family}: '{kind}.{i}' has hidden size {block.hidden_size}, the first "
                                   f"double block {hidden}; not a FLUX.1 transformer. {_HINT}")
    return ModelShape(hidden=hidden, double_blocks=len(doubles), single_blocks=len(singles))
