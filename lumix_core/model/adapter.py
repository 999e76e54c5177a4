"""The LumiX adapter: two Tensor LoRAs per FLUX block, with the release's parameter names.

``LumiXAdapter.state_dict()`` keys are exactly the released checkpoint's:
``double_blocks.{i}.processor.kv_tt_lora.G1`` … ``single_blocks.{i}.processor.proj_tt_lora.G3``.
The object is shared by reference between model clones (``__deepcopy__`` returns self), so
ComfyUI's ``ModelPatcher.clone()`` never duplicates its tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..maps import RELEASE, MapSet
from .tensor_lora import TensorLoRA

#: Hidden size, rank and block counts of the released FLUX.1-dev adapter.
RELEASE_HIDDEN = 3072
RELEASE_RANK = 8
RELEASE_DOUBLE_BLOCKS = 19
RELEASE_SINGLE_BLOCKS = 38

ADAPTER_NAMES = ("kv_tt_lora", "proj_tt_lora")
FACTOR_NAMES = ("G1", "G2", "G3")


@dataclass(frozen=True)
class AdapterSpec:
    """Everything that fixes the adapter's tensor shapes."""

    maps: MapSet = RELEASE
    rank: int = RELEASE_RANK
    hidden: int = RELEASE_HIDDEN
    double_blocks: tuple[int, ...] = tuple(range(RELEASE_DOUBLE_BLOCKS))
    single_blocks: tuple[int, ...] = tuple(range(RELEASE_SINGLE_BLOCKS))
    alpha: Optional[float] = None

    @property
    def num_maps(self) -> int:
        return self.maps.size

    def io_features(self, adapter_name: str) -> tuple[int, int]:
        """``(d_in, d_out)`` of ``kv_tt_lora`` (d -> 2d) or ``proj_tt_lora`` (d -> d)."""
        d = self.hidden
        return {"kv_tt_lora": (d, 2 * d), "proj_tt_lora": (d, d)}[adapter_name]

    def factor_shape(self, adapter_name: str, factor: str) -> tuple[int, ...]:
        M, R = self.num_maps, self.rank
        d_in, d_out = self.io_features(adapter_name)
        return {"G1": (M, M, R), "G2": (M, d_in, R, R), "G3": (M, d_out, R)}[factor]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor name of the checkpoint with its shape, in file order."""
        out: dict[str, tuple[int, ...]] = {}
        for kind, indices in (("double_blocks", self.double_blocks), ("single_blocks", self.single_blocks)):
            for i in indices:
                for a in ADAPTER_NAMES:
                    for f in FACTOR_NAMES:
                        out[f"{kind}.{i}.processor.{a}.{f}"] = self.factor_shape(a, f)
        return out

    def num_params(self) -> int:
        total = 0
        for shape in self.expected_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


class BlockLoRA(nn.Module):
    """The two adapters of one block (the release's ``processor``)."""

    def __init__(self, spec: AdapterSpec, device=None, dtype=None) -> None:
        super().__init__()
        for name in ADAPTER_NAMES:
            d_in, d_out = spec.io_features(name)
            setattr(self, name, TensorLoRA(spec.num_maps, d_in, d_out, spec.rank, spec.alpha,
                                           device=device, dtype=dtype))


class _BlockSlot(nn.Module):
    def __init__(self, processor: BlockLoRA) -> None:
        super().__init__()
        self.processor = processor


class LumiXAdapter(nn.Module):
    """All Tensor LoRAs of a FLUX model, keyed like the release."""

    def __init__(self, spec: AdapterSpec, device=None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.spec = spec
        self.double_blocks = nn.ModuleDict(
            {str(i): _BlockSlot(BlockLoRA(spec, device, dtype)) for i in spec.double_blocks})
        self.single_blocks = nn.ModuleDict(
            {str(i): _BlockSlot(BlockLoRA(spec, device, dtype)) for i in spec.single_blocks})

    @property
    def maps(self) -> MapSet:
        return self.spec.maps

    def for_double(self, index: int) -> Optional[BlockLoRA]:
        slot = self.double_blocks[str(index)] if str(index) in self.double_blocks else None
        return None if slot is None else slot.processor

    def for_single(self, index: int) -> Optional[BlockLoRA]:
        slot = self.single_blocks[str(index)] if str(index) in self.single_blocks else None
        return None if slot is None else slot.processor

    def tensor_loras(self):
        for m in self.modules():
            if isinstance(m, TensorLoRA):
                yield m

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        for m in self.tensor_loras():
            m.reset_parameters(generator)

    def __deepcopy__(self, memo):
        # ComfyUI deep-copies model_options on every clone; one adapter object must stay one.
        memo[id(self)] = self
        return self


def default_spec(maps: MapSet = RELEASE, rank: int = RELEASE_RANK, hidden: int = RELEASE_HIDDEN,
                 double_blocks: int = RELEASE_DOUBLE_BLOCKS, single_blocks: int = RELEASE_SINGLE_BLOCKS,
                 alpha: Optional[float] = None) -> AdapterSpec:
    """Spec adapting every block of a FLUX with the given counts (the release's layout)."""
    return AdapterSpec(maps=maps, rank=rank, hidden=hidden, double_blocks=tuple(range(double_blocks)),
                       single_blocks=tuple(range(single_blocks)), alpha=alpha)
