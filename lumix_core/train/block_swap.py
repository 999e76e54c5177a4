"""Keep the last N frozen FLUX blocks in CPU memory and stream them to the GPU around their use.

Why: FLUX.1-dev's 57 blocks are 22 GiB in bf16 (11 GiB in fp8), more than a 12 or 16 GB card
holds beside the activations. ``--blocks-to-swap N`` keeps N blocks in (pinned) CPU memory and
copies each into one of two GPU *slots* just before it runs; while a block computes, the next
one is copied into the other slot on a side CUDA stream.

Correctness does not depend on timing:

* CUDA events order the streams: the compute stream waits for a slot's copy before the block
  runs, and a copy into a slot waits for the last compute that used the slot.
* A slot is reused only once its block is *released*. A forward (no-grad, or the first pass of
  gradient checkpointing, which saves nothing) releases the block when it returns. Backward
  recomputes the block (non-reentrant checkpointing) and the recomputed graph references the
  slot's tensors, so that hold ends only in the backward of an identity node placed on the
  block's inputs: it receives its gradients after every node of the block that leads to them,
  and the previous block's backward cannot start before it (it needs those gradients).
* Without gradient checkpointing the autograd graph would keep every swapped block's weights
  until backward, so a gradient-mode call without it is refused.

Which blocks: the last N in execution order (single blocks from the end, then double blocks).
The two blocks left in the slots at the end of the forward are the first two the backward needs,
and those left at the end of the backward are the first two of the next forward, so each pass
copies N - 2 blocks; and a single block has twice the compute per byte of a double block, so its
copy hides better. The first block always stays: its inputs need no gradient, and the identity
node would have to force one through it.

Only the frozen blocks move; the adapter and the embedders stay on the device. All parameters
and buffers of a block move, whatever their dtype (fp8 weights and their scales included). On
the CPU the "device" slots are CPU tensors and the copies really happen, without a side stream.
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..model.flux import Flux, FluxConfig
from .config import ConfigError

log = logging.getLogger("lumix.train")

#: GPU slots: the block computing and the next one being copied.
SLOTS = 2
#: Byte alignment of each tensor inside a block's flat buffer (what CUDA kernels and vector units like).
ALIGN = 256
#: PCIe 4.0 x16, the transfer rate the benchmark quotes (bytes per second, practical).
PCIE4_X16_BYTES_PER_S = 25e9


# ----------------------------------------------------------------------------- pure sizes
def max_blocks_to_swap(config: FluxConfig) -> int:
    """All blocks but the first in execution order (56 for FLUX.1-dev)."""
    return config.depth + config.depth_single_blocks - 1


def check_blocks_to_swap(config: FluxConfig, n: int) -> None:
    most = max_blocks_to_swap(config)
    if n < 0:
        raise ConfigError(f"blocks_to_swap must be >= 0, got {n}")
    if n > most:
        raise ConfigError(f"--blocks-to-swap {n}: this FLUX has {most + 1} blocks ({config.depth} double + "
                          f"{config.depth_single_blocks} single) and the first stays on the GPU; use at most {most}")


def swapped_block_names(config: FluxConfig, n: int) -> list[str]:
    """Names (``single_blocks.37`` …) of the ``n`` swapped blocks, in execution order."""
    check_blocks_to_swap(config, n)
    order = ([f"double_blocks.{i}" for i in range(config.depth)]
             + [f"single_blocks.{i}" for i in range(config.depth_single_blocks)])
    return order[len(order) - n:] if n else []


def block_param_count(config: FluxConfig, kind: str) -> int:
    """Parameters of one ``double`` or ``single`` block of the reference FLUX (weights, biases, norm scales)."""
    d, mlp, head = config.hidden_size, config.mlp_hidden_dim, config.hidden_size // config.num_heads

    def linear(i: int, o: int, bias: bool = True) -> int:
        return i * o + (o if bias else 0)

    if kind == "double":
        side = (linear(d, 6 * d) + linear(d, 3 * d, config.qkv_bias) + 2 * head + linear(d, d)
                + linear(d, mlp) + linear(mlp, d))
        return 2 * side
    if kind == "single":
        return linear(d, 3 * d + mlp) + linear(d + mlp, d) + 2 * head + linear(d, 3 * d)
    raise ValueError(f"block kind is 'double' or 'single', got {kind!r}")


def _swapped_sizes(config: FluxConfig, n: int, weight_bytes_per_param: float) -> list[int]:
    return [int(block_param_count(config, name.split("_")[0]) * weight_bytes_per_param)
            for name in swapped_block_names(config, n)]


def swap_traffic_bytes(config: FluxConfig, n: int, weight_bytes_per_param: float, *, slots: int = SLOTS) -> int:
    """Bytes copied CPU -> GPU per training micro-batch (forward + backward) in the steady state.

    The forward copies every swapped block but the first ``slots`` (left in the slots by the
    previous backward); the backward recomputes each block before its own backward from one
    copy, and skips the last ``slots`` (left by the forward). Nothing goes back: the CPU copy
    of a frozen block stays valid. ``weight_bytes_per_param``: 2 for bf16, ~1 for fp8 (its
    biases and norm scales, 0.03 % of the parameters, stay bf16); an optimizer step makes
    ``grad_accum`` of these.
    """
    sizes = _swapped_sizes(config, n, weight_bytes_per_param)
    if len(sizes) <= slots:
        return 0
    return sum(sizes[slots:]) + sum(sizes[:-slots])


def swap_slot_bytes(config: FluxConfig, n: int, weight_bytes_per_param: float, *, slots: int = SLOTS) -> int:
    """GPU bytes the slots take: ``min(n, slots)`` times the largest swapped block (alignment aside)."""
    sizes = _swapped_sizes(config, n, weight_bytes_per_param)
    return min(len(sizes), slots) * max(sizes, default=0)


def swap_saved_bytes(config: FluxConfig, n: int, weight_bytes_per_param: float, *, slots: int = SLOTS) -> int:
    """Device bytes ``n`` swapped blocks free: their size less the slots'."""
    return sum(_swapped_sizes(config, n, weight_bytes_per_param)) - swap_slot_bytes(
        config, n, weight_bytes_per_param, slots=slots)


# --------------------------------------------------------------------------------- blocks
def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _view(flat: Tensor, offset: int, like: Tensor) -> Tensor:
    """A tensor shaped and typed like ``like`` on ``flat``'s bytes from ``offset`` on."""
    return flat[offset: offset + _nbytes(like)].view(like.dtype).view(like.shape)


def _block_tensors(block: nn.Module) -> list[Tensor]:
    """Every parameter and buffer of ``block``, once each (the objects whose storage is re-pointed)."""
    seen: dict[int, Tensor] = {}
    for module in block.modules():
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is not None:
                seen.setdefault(id(t), t)
    return list(seen.values())


def _point(tensors: Sequence[Tensor], views: Sequence[Tensor]) -> None:
    for t, v in zip(tensors, views):
        t.data = v


@dataclass(eq=False)
class _SwappedBlock:
    """One swapped block: its tensors, where each lives in a flat buffer, and its CPU copy."""

    name: str
    position: int  # in the swap order
    tensors: list[Tensor]
    offsets: list[int]
    nbytes: int
    home: Tensor = field(repr=False)  # flat uint8 on the CPU (pinned with CUDA)
    home_views: list[Tensor] = field(repr=False)
    _slot_views: dict[int, list[Tensor]] = field(default_factory=dict, repr=False)

    def views(self, slot: int, flat: Tensor) -> list[Tensor]:
        """The block's tensors on slot ``slot``'s buffer ``flat`` (made once: blocks are re-pointed often)."""
        if slot not in self._slot_views:
            self._slot_views[slot] = [_view(flat, o, t) for t, o in zip(self.tensors, self.offsets)]
        return self._slot_views[slot]


def _page_locked(nbytes: int) -> Tensor:
    """``nbytes`` of pinned CPU memory, exactly.

    Why not ``torch.empty(pin_memory=True)``: torch's pinned allocator rounds every request up
    to a power of two, 60-90 % more RAM for FLUX's blocks. This registers ordinary memory with
    CUDA instead, and unregisters it before the memory is freed (numpy clears weak references
    before it releases an array's data).
    """
    array = np.empty(nbytes, dtype=np.uint8)
    cudart, ptr = torch.cuda.cudart(), array.ctypes.data
    error = int(cudart.cudaHostRegister(ptr, nbytes, 1))  # 1: cudaHostRegisterPortable, as torch's own use
    if error:
        raise RuntimeError(f"cudaHostRegister failed with CUDA error {error}")
    weakref.finalize(array, cudart.cudaHostUnregister, ptr).atexit = False
    return torch.from_numpy(array)


def _move_home(name: str, position: int, block: nn.Module, pin: bool) -> tuple[_SwappedBlock, bool]:
    """Copy the block into one flat CPU buffer and point its tensors there; returns (block, pinned)."""
    tensors = _block_tensors(block)
    offsets, end = [], 0
    for t in tensors:
        if t.requires_grad:
            raise ValueError(f"{name}: block swap moves frozen weights only, but a tensor of it requires grad")
        offsets.append(end)
        end = _align(end + _nbytes(t))
    home = None
    if pin:
        try:
            home = _page_locked(end)
        except RuntimeError as e:  # page-locked RAM cannot be swapped out; the OS may refuse that much
            log.warning("block swap: cannot pin %d MiB of CPU memory (%s); using pageable memory, copies "
                        "will not overlap compute", end >> 20, e)
            pin = False
    if home is None:
        home = torch.empty(end, dtype=torch.uint8)
    views = [_view(home, o, t) for t, o in zip(tensors, offsets)]
    for t, v in zip(tensors, views):
        v.copy_(t.detach())
    _point(tensors, views)
    return _SwappedBlock(name, position, tensors, offsets, end, home, views), pin


def _move_resident(model: nn.Module, swapped: Sequence[nn.Module], device: torch.device) -> None:
    """Everything of ``model`` outside the swapped blocks to ``device`` (loaded on the CPU)."""
    inside = {id(m) for block in swapped for m in block.modules()}
    for module in model.modules():
        if id(module) in inside:
            continue
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is not None:
                t.data = t.data.to(device)


# ---------------------------------------------------------------------------------- slots
class _Slot:
    """A device buffer the size of the largest swapped block, and which block it holds."""

    def __init__(self, buffer: Tensor) -> None:
        self.buffer = buffer
        self.block: Optional[_SwappedBlock] = None
        self.holds = 0  # calls and pending backwards that use the block's weights here
        self.loaded: Optional[torch.cuda.Event] = None  # the copy into the buffer is done (copy stream)
        self.used: Optional[torch.cuda.Event] = None  # the last compute reading the buffer is done
        self.last_use = 0


class _Ticket:
    """One gradient-mode call of a swapped block: its forward, then a recompute in each backward.

    Each recompute takes a hold on the block's slot; :meth:`finish` returns them once the
    block's backward is over (or its graph was dropped without one).
    """

    def __init__(self, swapper: "BlockSwapper", block: _SwappedBlock) -> None:
        self.swapper, self.block = swapper, block
        self.forward_done = False
        self.holds = 0

    def streamed(self, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            s = self.swapper
            if not self.forward_done:  # the forward of the checkpoint: nothing saved, release at once
                self.forward_done = True
                return s._call_once(self.block, fn, args, kwargs, s._after(self.block, wrap=False))
            with s._lock:  # the recompute in backward: hold until the block's backward ends
                s._acquire(self.block)
                self.holds += 1
            s._prefetch(s._before(self.block))
            return fn(*args, **kwargs)

        return run

    def finish(self) -> None:
        with self.swapper._lock:
            while self.holds:
                self.holds -= 1
                self.swapper._release(self.block)


class _ReleaseAfterBackward(torch.autograd.Function):
    """Identity on a block's inputs; its backward, which runs once the block's backward has
    produced their gradients, ends the block's hold on its slot.

    ``anchor`` (requires grad) makes the outputs require grad even where the inputs do not, so
    the backward always reaches this node. If the graph is dropped without a backward, the
    node's finalizer ends the hold instead.
    """

    @staticmethod
    def forward(ctx, ticket: _Ticket, anchor: Tensor, *tensors: Tensor):
        ctx.ticket = ticket
        weakref.finalize(ctx, ticket.finish).atexit = False
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.ticket.finish()
        return (None, None, *grads)


def _needs_grad(values: Sequence[Any]) -> bool:
    for v in values:
        if isinstance(v, Tensor) and v.requires_grad:
            return True
        if isinstance(v, nn.Module) and any(p.requires_grad for p in v.parameters()):
            return True
    return False


class BlockSwapper:
    """Streams the last ``n`` blocks of a :class:`Flux` through :data:`SLOTS` device slots.

    Installs itself as ``model.block_swap``; :meth:`Flux._run` hands it every block call.
    The model should come loaded on the CPU: the swapped blocks go to (pinned) CPU buffers and
    everything else to ``device``. Do not move the model afterwards.
    """

    def __init__(self, model: Flux, n: int, device: "torch.device | str", *, slots: int = SLOTS) -> None:
        if n < 1:
            raise ValueError(f"a BlockSwapper swaps at least one block, got {n}")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        names = swapped_block_names(model.config, n)
        modules = [model.get_submodule(name) for name in names]
        _move_resident(model, modules, self.device)
        self._blocks: dict[nn.Module, _SwappedBlock] = {}
        pinned = self.cuda
        for position, (name, module) in enumerate(zip(names, modules)):
            self._blocks[module], pinned = _move_home(name, position, module, pinned)
        self.pinned = pinned
        self._order = [self._blocks[m] for m in modules]
        self.slot_bytes = max(b.nbytes for b in self._order)
        self._slots = [_Slot(torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device))
                       for _ in range(min(slots, n))]
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        if self.cuda:  # the buffers were allocated on the compute stream: copies start after it
            for slot in self._slots:
                slot.used = self._record()
        self._anchor = torch.zeros((), device=self.device, requires_grad=True)
        self._lock = threading.RLock()  # backward runs on autograd's thread; finalizers on any
        self._clock = 0
        self.copies: Counter[str] = Counter()  # copies into a slot, per block name
        self.bytes_moved = 0
        for block in self._order[: len(self._slots)]:
            self._prefetch(block)
        model.block_swap = self

    # -- what the model calls ----------------------------------------------------------------
    def holds(self, block: nn.Module) -> bool:
        return block in self._blocks

    @property
    def names(self) -> list[str]:
        return [b.name for b in self._order]

    @property
    def device_bytes(self) -> int:
        """Device memory of the slots (what the swapped blocks still take on the GPU)."""
        return len(self._slots) * self.slot_bytes

    def run(self, module: nn.Module, fn: Callable, args: tuple, kwargs: dict, checkpoint: bool):
        """``fn(*args, **kwargs)`` with ``module``'s weights in a slot; checkpointed when ``checkpoint``."""
        block = self._blocks[module]
        if not (torch.is_grad_enabled() and _needs_grad((*args, *kwargs.values()))):
            return self._call_once(block, fn, args, kwargs, self._after(block, wrap=True))
        if not checkpoint:
            raise RuntimeError(f"{block.name} is swapped to the CPU and needs gradient checkpointing: without it "
                               "autograd keeps every block's weights until backward; enable "
                               "gradient_checkpointing or swap no blocks")
        ticket = _Ticket(self, block)
        args = self._mark(ticket, args)
        return torch.utils.checkpoint.checkpoint(ticket.streamed(fn), *args, use_reentrant=False, **kwargs)

    # -- order -------------------------------------------------------------------------------
    def _after(self, block: _SwappedBlock, wrap: bool) -> Optional[_SwappedBlock]:
        """The next swapped block of a forward; ``wrap``: the first after the last (sampling loops)."""
        nxt = block.position + 1
        if nxt < len(self._order):
            return self._order[nxt]
        return self._order[0] if wrap else None  # with grad, backward needs the blocks left in the slots

    def _before(self, block: _SwappedBlock) -> Optional[_SwappedBlock]:
        return self._order[block.position - 1] if block.position else None

    def _mark(self, ticket: _Ticket, args: tuple) -> tuple:
        tensors = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
        if not tensors:  # the gradient must flow through the marker: take the stream input
            tensors = [next(i for i, a in enumerate(args) if isinstance(a, Tensor) and a.is_floating_point())]
        marked = _ReleaseAfterBackward.apply(ticket, self._anchor, *(args[i] for i in tensors))
        out = list(args)
        for i, t in zip(tensors, marked):
            out[i] = t
        return tuple(out)

    # -- slots -------------------------------------------------------------------------------
    def _record(self) -> "torch.cuda.Event":
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def _call_once(self, block: _SwappedBlock, fn: Callable, args: tuple, kwargs: dict,
                   upcoming: Optional[_SwappedBlock]):
        self._acquire(block)
        try:
            self._prefetch(upcoming)
            return fn(*args, **kwargs)
        finally:
            self._release(block)

    def _slot_of(self, block: _SwappedBlock) -> Optional[_Slot]:
        return next((s for s in self._slots if s.block is block), None)

    def _load(self, block: _SwappedBlock, required: bool) -> Optional[_Slot]:
        """The slot holding ``block``, copying it into the least recently used free slot if needed."""
        slot = self._slot_of(block)
        if slot is not None:
            return slot
        free = [s for s in self._slots if s.holds == 0]
        if not free:
            if required:
                raise RuntimeError(f"block swap: no free slot for {block.name}; every slot holds a block whose "
                                   "backward has not run (interleaved backward passes are not supported)")
            return None
        slot = min(free, key=lambda s: s.last_use)
        slot.block = None  # while the copy is pending the slot holds no valid block
        dst = slot.buffer[: block.nbytes]
        if self._copy_stream is None:
            dst.copy_(block.home)
        else:
            stream = self._copy_stream
            stream.wait_event(slot.used)  # the compute that read the old block is done
            with torch.cuda.stream(stream):
                dst.copy_(block.home, non_blocking=True)
                slot.loaded = torch.cuda.Event()
                slot.loaded.record(stream)
        slot.block = block
        self._clock += 1
        slot.last_use = self._clock
        self.copies[block.name] += 1
        self.bytes_moved += block.nbytes
        return slot

    def _prefetch(self, block: Optional[_SwappedBlock]) -> None:
        if block is not None:
            with self._lock:
                self._load(block, required=False)

    def _acquire(self, block: _SwappedBlock) -> None:
        with self._lock:
            slot = self._load(block, required=True)
            if slot.loaded is not None:
                torch.cuda.current_stream(self.device).wait_event(slot.loaded)
            if slot.holds == 0:
                _point(block.tensors, block.views(self._slots.index(slot), slot.buffer))
            slot.holds += 1
            self._clock += 1
            slot.last_use = self._clock

    def _release(self, block: _SwappedBlock) -> None:
        with self._lock:
            slot = self._slot_of(block)
            if slot is None or slot.holds == 0:
                raise RuntimeError(f"block swap: {block.name} released but not held")
            slot.holds -= 1
            if slot.holds == 0:
                if self.cuda:
                    slot.used = self._record()
                _point(block.tensors, block.home_views)


def swap_blocks(model: Flux, n: int, device: "torch.device | str") -> Optional[BlockSwapper]:
    """A :class:`BlockSwapper` for ``n > 0`` (checked against the model), else None (nothing moves)."""
    check_blocks_to_swap(model.config, n)
    if n == 0:
        return None
    swapper = BlockSwapper(model, n, device)
    saved = swap_saved_bytes(model.config, n, 1)
    if saved <= 0:
        log.warning("--blocks-to-swap %d saves no GPU memory: the %d transfer slots take as much as the blocks "
                    "they stand for; use %d or more", n, len(swapper._slots), SLOTS + 1)
    elif saved <= swap_saved_bytes(model.config, n - 1, 1):
        log.warning("--blocks-to-swap %d saves less GPU memory than %d: its first block is a double block and the "
                    "slots grow to that size; use %d, or %d or more", n, n - 1, n - 1, n + 1)
    log.info("block swap: %d blocks (%s ... %s) in %s CPU memory, %.2f GiB of device slots", n, swapper.names[0],
             swapper.names[-1], "pinned" if swapper.pinned else "pageable", swapper.device_bytes / 2**30)
    return swapper
