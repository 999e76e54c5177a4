"""Exact peak GPU memory of LumiX training and inference on FLUX.1-dev, computed on a CPU.

Method: the project's real code runs on *fake tensors* (``FakeTensorMode``: real shapes, dtypes
and strides, no memory, no arithmetic), and a ``TorchDispatchMode`` counts every storage an
operation returns from its birth to its death (``_fake_gpu.StorageLedger``: keyed by the storage
object, freed by a weakref finalizer on it). The peak is the largest total of live storages:
weights, adapter, gradients, AdamW state, batch and activations together. A 12 B-parameter FLUX
is built on the ``meta`` device and its tensors then created fake, so nothing real is allocated
(the whole run stays under ~0.5 GB of RAM).

A *training row* is one steady-state step of the trainer itself: ``lumix_core.train.fit._Trainer``
is built as ``lumix-train fit`` builds it (a real one-scene cache folder of the row's shapes, the
config, adapter init, AdamW, LR schedule, ``--base-dtype``, ``--blocks-to-swap`` with the real
``BlockSwapper``), AdamW's moments are created by AdamW's own first step on zero gradients, and
``_Trainer._train_step`` is measured: flow matching, one 5-map scene, CUDA bf16 autocast. Only
``load_flux`` is replaced (by the same layout built fake, :func:`build_flux`). An *inference row*
is one model call of FLUX + adapter (``FluxDenoiser``), the second of two, so the adapter's
contracted factors are cached as in a sampling loop. ``tests/test_bench_memory.py`` runs this
very simulation on real tensors at toy size and gets the same bytes.

Modelling assumptions (also printed with the table):

* The GPU is a CUDA device with PyTorch's caching allocator: each storage takes its size rounded
  up to 512 bytes (what ``torch.cuda.max_memory_allocated`` reports). NOT included: the CUDA
  context and library workspaces (cuBLAS etc., ~0.5-1 GB), allocator fragmentation and
  reserved-but-free memory (``memory_reserved`` > ``memory_allocated``), other processes. Add
  about 1 GB before comparing with a card's size.
* Attention is PyTorch's FlashAttention-2 path of ``scaled_dot_product_attention`` (what a bf16,
  unmasked, head-dim-128 call picks on sm80+ GPUs), ``_fake_gpu.flash_sdpa``: forward output +
  fp32 log-sum-exp; backward dq/dk/dv, the fp32 ``softmax_d`` and ``dq_accum`` work buffers and
  the contiguous copies of ``dout``/``out`` its wrapper makes; no ``L x L`` matrix. Other
  kernels' internal workspaces are not counted.
* bf16 autocast as on CUDA (``_fake_gpu.cuda_autocast``): each op is cast the way this torch
  build's ``AutocastCUDA`` kernel casts it (probed on fake CUDA tensors; e.g. layer_norm, rsqrt
  and sums run in fp32), with autocast's cache of fp32-weight casts. The fake tensors live on
  the CPU (a CPU-only torch cannot record autograd on fake CUDA tensors); which device a kernel
  runs on changes no tensor the model allocates.
* AdamW and gradient clipping take their CUDA defaults (``foreach`` kernels, their temporaries
  counted); AdamW's step counters stay on the CPU as on CUDA. Trainer defaults otherwise:
  batch 1 (one scene), rank 8 fp32 adapter, max_grad_norm 1, no accumulation.
* Host-side tensors are not counted: cache reads, the noise and timestep draws (CPU), the pinned
  CPU copies of swapped blocks. The batch is counted from the moment it is stacked.
* fp8 rows use ``lumix_core.model.fp8`` itself (``quantize_flux_blocks_`` + ``Fp8Linear``, laid out
  as ``load_flux(fp8=True)`` returns the model). Swap rows run ``lumix_core.train.block_swap``'s
  ``BlockSwapper`` under the fake tensors (device slots counted, CPU copies not) and report the
  bytes it copied in the measured step and their time at PCIe 4.0 x16 (``PCIE4_X16_BYTES_PER_S``);
  ``swap_traffic_formula_bytes`` is the helper's own formula (tensor alignment aside).
* Inference: weights in their dtype without autocast (as ComfyUI runs FLUX), conditioning in bf16
  on the device, repeated per sequence as ComfyUI batches it; text mode batches cond + uncond (CFG)
  as 10 sequences per scene, photo mode 5 (``--scenes``: scenes per batch). fp8 layers cast their
  weight to bf16 per call. GGUF rows (``q8_0``, ``q4_0``: what ComfyUI-GGUF loads) hold every block
  linear as its GGUF bytes (Q8_0: 34 bytes per 32 weights, Q4_0: 18) with float32 biases, and
  dequantize per call as ComfyUI-GGUF does (``_gguf.py``: bias cast, fp16 weight, cast to bf16,
  matmul; each freed when the layer returns). Their embedders and final layer (64 M parameters,
  left unquantized by city96's files) and the blocks' 1-D norm scales are counted in bf16 (the
  files store the norm scales in F32: 39 kB more).
* ``--targets``: the fewest swapped blocks whose *simulated* peak fits each size (fp8 weights,
  checkpointing); a guess from block sizes picks where to start, simulations decide.

    python bench/bench_memory.py [--json] [--rows train|inference|all] [--sizes 512,1024]
                                 [--weights bf16,fp8,q8_0,q4_0] [--scenes 1,2] [--photo-sizes 1536x1152]
                                 [--swap 20] [--targets 20,13,9] [--no-off]
                                 [--text-tokens 512] [--rank 8] [--model dev|tiny]

``--json`` prints one JSON object a line: ``mode`` (``train``, ``inference``, ``swap_needed``
or the closing ``summary``), ``weights``, ``size`` (width; ``height`` beside it), ``scenes``,
``blocks_to_swap`` (train rows), ``peak_gib``, the split of the peak and the settings.
Takes ~3 minutes for the default training rows on one CPU core, ~5 for ``--rows inference``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.utils._python_dispatch import _disable_current_modes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fake_gpu import (  # noqa: E402
    GiB,
    StorageLedger,
    cuda_autocast,
    fake_mode,
    flash_attention,
    materialize,
    split_peak,
)
from _gguf import QTYPES, GgufLinear  # noqa: E402
from _gguf import quantize_flux_blocks_ as gguf_blocks_  # noqa: E402

from lumix_core.latents import LATENT_CHANNELS, VAE_FACTOR  # noqa: E402
from lumix_core.maps import RELEASE, MapSet  # noqa: E402
from lumix_core.model import fp8 as fp8_module  # noqa: E402
from lumix_core.model.adapter import LumiXAdapter, default_spec  # noqa: E402
from lumix_core.model.flux import FLUX_DEV, Flux, FluxConfig, tiny_config  # noqa: E402
from lumix_core.train import block_swap as swap_module  # noqa: E402

#: Frozen FLUX weights: bf16, fp8 e4m3fn, and (inference only) the GGUF quantizations ComfyUI-GGUF loads.
TRAIN_WEIGHTS = ("bf16", "fp8")
INFERENCE_WEIGHTS = ("bf16", "fp8", *QTYPES)
#: ``--model tiny``: a FLUX small enough for a smoke test (its figures mean nothing).
TINY = tiny_config(hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, context_in_dim=32, vec_in_dim=16)
MODELS = {"dev": FLUX_DEV, "tiny": TINY}
DEFAULT_TARGETS = (20.0, 13.0, 9.0)
ASSUMPTIONS = (
    "Peak = live tensor storages, each rounded up to 512 bytes as the CUDA caching allocator does "
    "(torch.cuda.max_memory_allocated); weights, adapter, gradients, AdamW state, batch and activations included.",
    "NOT included: CUDA context + library workspaces (~0.5-1 GB), allocator fragmentation / reserved-but-free memory.",
    "Attention = FlashAttention-2 (PyTorch SDPA flash path): out + fp32 logsumexp forward; dq/dk/dv + fp32 "
    "softmax_d/dq_accum + contiguous dout/out copies backward; no LxL matrix.",
    "bf16 autocast with CUDA's per-op cast policy (probed from this torch build) and weight-cast cache; AdamW and "
    "grad clipping with CUDA's foreach kernels; one 5-map scene per step, rank 8 fp32 adapter.",
    "Host-side tensors (cache reads, CPU noise draws, pinned copies of swapped blocks) not counted.",
    "Inference: one model call, bf16 compute; fp8 weights cast to bf16 per layer; GGUF Q8_0/Q4_0 block weights "
    "held as their bytes and dequantized per layer (fp16, then bf16) as ComfyUI-GGUF does; text mode batches cond "
    "+ uncond.",
)


# ----------------------------------------------------------------------------- cases, rows
@dataclass(frozen=True)
class Case:
    """One configuration to measure."""

    mode: str = "train"  # train | inference
    size: int = 512  # image width in pixels
    weights: str = "bf16"  # frozen FLUX weights: bf16 | fp8 | q8_0 | q4_0 (the last two: inference only)
    blocks_to_swap: int = 0
    gradient_checkpointing: bool = True
    text_tokens: int = 512
    rank: int = 8
    maps: str = RELEASE.to_string()
    inference: str = "text"  # text (CFG: cond + uncond batched) | photo
    config: FluxConfig = FLUX_DEV
    scenes: int = 1  # inference: scenes sampled in one batch
    height: Optional[int] = None  # image height in pixels (None: square); inference only

    @property
    def weight_bytes_per_param(self) -> float:
        """Bytes of a frozen block weight: 2 in bf16, 1 in fp8 (training rows' weights)."""
        return 2.0 if self.weights == "bf16" else 1.0

    @property
    def map_set(self) -> MapSet:
        return MapSet.parse(self.maps)

    @property
    def image_height(self) -> int:
        return self.size if self.height is None else self.height

    @property
    def latent_side(self) -> int:
        if self.image_height != self.size:
            raise ValueError("training rows are square")
        return self.size // VAE_FACTOR


@dataclass
class Row:
    mode: str
    weights: str
    size: int
    gradient_checkpointing: Optional[bool]
    blocks_to_swap: Optional[int]
    peak_gib: float
    peak_bytes: int  # as the CUDA allocator counts (512-byte blocks)
    peak_tensor_bytes: int  # the tensors' own sizes
    parts_gib: dict = field(default_factory=dict)
    peak_phase: str = ""
    parts_bytes: dict = field(default_factory=dict)
    sequences: int = 0
    text_tokens: int = 0
    inference: Optional[str] = None
    swap_bytes_per_step: Optional[int] = None
    swap_traffic_formula_bytes: Optional[int] = None
    swap_seconds_pcie4: Optional[float] = None
    wall_s: float = 0.0
    fake: bool = True
    measured_cuda_bytes: Optional[int] = None  # --cuda-check: torch.cuda.max_memory_allocated of the same step
    scenes: int = 1
    width: int = 0  # pixels (``size`` is the width too)
    height: int = 0


def _gib(n: int) -> float:
    return round(n / GiB, 3)


# --------------------------------------------------------------------------- the simulation
@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def simulation(fake: bool, ledger: StorageLedger) -> Iterator[None]:
    """Fake tensors (or real ones, to check the count), the ledger, CUDA's autocast and flash attention.

    On a real CUDA device (``--cuda-check``) only the ledger: autocast and attention are CUDA's own.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if fake:
            stack.enter_context(fake_mode())
        stack.enter_context(ledger)
        if ledger.device_type != "cuda":
            stack.enter_context(cuda_autocast(ledger.device_type))
            stack.enter_context(flash_attention())
        yield


def _fill_(module: torch.nn.Module, seed: int = 0) -> None:
    """Small random values in place (real tensors: sane numbers; fake: nothing). No new storage."""
    generators: dict = {}
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.dtype.is_floating_point and t.element_size() >= 2:
                if t.device not in generators:
                    generators[t.device] = torch.Generator(device=t.device).manual_seed(seed)
                t.normal_(0.0, 0.02, generator=generators[t.device]) if t.dim() > 1 else t.fill_(
                    1.0 if t.dim() == 1 else 0.5)
            elif t.dtype.is_floating_point:  # fp8: a valid value rather than whatever the memory held
                t.copy_(torch.full(t.shape, 0.01, device=t.device).to(t.dtype))
            else:  # GGUF bytes: fp16 scales 0x1111 (5.5e-4) and small quants, never inf or nan
                t.fill_(0x11)


def build_flux(config: FluxConfig, weights: str, dtype: torch.dtype = torch.bfloat16, *,
               fill: bool = False, device: str = "cpu") -> Flux:
    """FLUX laid out as ``load_flux(dtype=dtype, fp8=weights == 'fp8')`` returns it: built on ``meta``,
    then every tensor created under the current modes (fake or real). fp8: ``Fp8Linear`` blocks with
    float8_e4m3fn weights and float32 scales; q8_0 / q4_0: ``_gguf.GgufLinear`` blocks (uint8 GGUF
    bytes, float32 biases) as ComfyUI-GGUF holds them; everything else in ``dtype``."""
    with torch.device("meta"):
        model = Flux(config)
    if weights == "fp8":
        fp8_module.quantize_flux_blocks_(model, values=False)
    elif weights in QTYPES:
        gguf_blocks_(model, weights)
    kept = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, GgufLinear) for p in ("weight", "bias")}

    def dtype_of(name: str, t: torch.Tensor) -> torch.dtype:
        if weights == "fp8" and (t.dtype == fp8_module.FP8 or name.endswith("scale_weight")):
            return t.dtype
        if name in kept:
            return t.dtype
        return dtype

    materialize(model, device, dtype_of)
    if fill:
        _fill_(model)
    return model.eval().requires_grad_(False)


def _write_cache(folder: Path, case: Case) -> Path:
    """A real one-scene cache (zeros) of the case's shapes, read by the trainer as it reads any cache."""
    from lumix_core.train.cache import CacheWriter

    c, maps, h = case.config, case.map_set, case.latent_side
    with _disable_current_modes(), CacheWriter(folder, maps) as writer:
        writer.add("scene-0", torch.zeros(maps.size, LATENT_CHANNELS, h, h), torch.zeros(case.text_tokens,
                   c.context_in_dim), torch.zeros(c.vec_in_dim), "a scene")
        return writer.finish(torch.zeros(case.text_tokens, c.context_in_dim), torch.zeros(c.vec_in_dim))


def _same_tensor_swap(swap):
    """``Module.to`` swaps fake parameters even when the conversion changed nothing (swapping needs
    no weakrefs, and fake tensors have some); such a swap is a no-op and is skipped."""
    def run(t1, t2):
        if (t1.untyped_storage() is t2.untyped_storage() and t1.dtype == t2.dtype and t1.shape == t2.shape
                and t1.stride() == t2.stride() and t1.storage_offset() == t2.storage_offset()):
            return None
        return swap(t1, t2)

    return run


def _host(fn):
    """Run ``fn`` outside every mode: host-side (CPU) work whose tensors the GPU never holds."""
    def run(*args, **kwargs):
        with _disable_current_modes():
            return fn(*args, **kwargs)

    return run


def simulate_train(case: Case, *, fake: bool = True, device: str = "cpu") -> Row:
    """Peak of one steady-state step of ``lumix_core.train.fit._Trainer`` for ``case``.

    ``fake=False``: the same on real tensors (the check that the count is exact); with
    ``device="cuda"`` on a real GPU, where ``measured_cuda_bytes`` holds CUDA's own count.
    """
    from lumix_core.train import cache as cache_module
    from lumix_core.train import fit
    from lumix_core.train.config import FitConfig
    from lumix_core.train.distributed import init_distributed

    t0 = time.perf_counter()
    ledger = StorageLedger(device)
    with tempfile.TemporaryDirectory(prefix="lumix-bench-memory-") as tmp, contextlib.ExitStack() as stack:
        cache_dir = _write_cache(Path(tmp) / "cache", case)
        fields = dict(cache=str(cache_dir), flux=f"simulated-{case.weights}.safetensors", output=str(Path(tmp) / "run"),
                      steps=2, precision="bf16", gradient_checkpointing=case.gradient_checkpointing, rank=case.rank,
                      checkpoint_every=0, validate_every=0, device=device)
        if case.weights != "bf16":
            fields["base_dtype"] = case.weights
        if case.blocks_to_swap:
            fields["blocks_to_swap"] = case.blocks_to_swap
        config = FitConfig(**fields)
        config.validate()
        ctx = init_distributed(device)

        def load_flux(path, *, device="cpu", dtype=None, fp8=False, **kwargs):
            return build_flux(case.config, "fp8" if fp8 else "bf16", dtype or torch.bfloat16, fill=not fake,
                              device=str(device))

        def mean_across(ctx, value):  # for the log line: a fake tensor has no value to read
            return 0.0

        clip = torch.nn.utils.clip_grad_norm_

        def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
            ledger.mark("optimizer")
            kwargs.setdefault("foreach", True)  # CUDA's default
            clip(parameters, max_norm, *args, **kwargs)
            return 0.0  # the norm's value (logged only) does not exist for fake tensors

        stack.enter_context(logging_disabled())
        stack.enter_context(simulation(fake, ledger))
        stack.enter_context(_patched(fit, "load_flux", load_flux))
        stack.enter_context(_patched(fit, "read_flux_header", lambda path: (None, "", case.config)))
        stack.enter_context(_patched(fit, "mean_across", mean_across))
        stack.enter_context(_patched(fit, "draw_scene", _host(fit.draw_scene)))  # noise and t: drawn on the CPU
        stack.enter_context(_patched(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_))
        stack.enter_context(_patched(torch.utils, "swap_tensors", _same_tensor_swap(torch.utils.swap_tensors)))
        for name in ("scene", "empty_conditioning"):
            method = _host(getattr(cache_module.LatentCache, name))  # cache reads: host memory
            stack.enter_context(_patched(cache_module.LatentCache, name, method))
        def move_home(*args, **kwargs):  # swapped blocks' CPU copies: host memory
            with ledger.paused():
                return original_home(*args, **kwargs)

        original_home = swap_module._move_home
        stack.enter_context(_patched(swap_module, "_move_home", move_home))

        trainer = fit._Trainer(config=config, ctx=ctx, explicit=None, decoder=None, progress=False, on_step=None)
        for group in trainer.optimizer.param_groups:
            group["foreach"] = True  # AdamW's default on CUDA tensors
        trainer.module.register_forward_pre_hook(lambda *a: ledger.mark("forward"))
        trainer.module.register_forward_hook(lambda *a: ledger.mark("backward"))
        swapper = trainer.model.block_swap

        # AdamW's moments exist from the first step on: create them as its first step does (zero
        # gradients, then AdamW's own step), instead of simulating a whole first step
        params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        for p in params:
            p.grad = torch.zeros_like(p)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        del params, p
        for state in trainer.optimizer.state.values():  # AdamW keeps its step counts on the CPU
            if isinstance(state.get("step"), torch.Tensor):
                ledger.forget(state["step"])
        moved0 = swapper.bytes_moved if swapper is not None else 0
        ledger.mark("step start")
        ledger.reset_peak()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        trainer._train_step()
        measured = None
        if device == "cuda":
            torch.cuda.synchronize()
            measured = torch.cuda.max_memory_allocated()
        moved = (swapper.bytes_moved - moved0) if swapper is not None else None

        model, adapter, opt = trainer.model, trainer.adapter, trainer.optimizer
        adapter_ids = {id(p) for p in adapter.parameters()}
        frozen = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in adapter_ids]
        if swapper is not None:
            frozen += [slot.buffer for slot in swapper._slots]
        groups = {
            "frozen_weights": frozen,
            "adapter": list(adapter.parameters()),
            "adapter_grads": [p.grad for p in adapter.parameters() if p.grad is not None],
            "adamw_state": [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)],
        }
        split = split_peak(ledger, groups)
        raw = ledger.peak.bytes
        phase = ledger.phase_at(ledger.peak_blocks.event)
        del trainer, model, adapter, opt, groups, frozen, swapper
    formula = None
    if case.blocks_to_swap:
        formula = swap_module.swap_traffic_bytes(case.config, case.blocks_to_swap, case.weight_bytes_per_param)
    rate = swap_module.PCIE4_X16_BYTES_PER_S
    return Row("train", case.weights, case.size, case.gradient_checkpointing, case.blocks_to_swap,
               _gib(split.total), split.total, raw, {k: _gib(v) for k, v in split.parts.items()}, phase,
               parts_bytes=dict(split.parts), sequences=case.map_set.size, text_tokens=case.text_tokens,
               swap_bytes_per_step=moved, swap_traffic_formula_bytes=formula,
               swap_seconds_pcie4=None if moved is None else round(moved / rate, 3),
               wall_s=round(time.perf_counter() - t0, 2), fake=fake, measured_cuda_bytes=measured, width=case.size,
               height=case.size)


def simulate_inference(case: Case, *, fake: bool = True, device: str = "cpu") -> Row:
    """Peak of one model call (FLUX + adapter, the adapter's factors cached) for ``case``.

    ``fake=False``: the same on real tensors; with ``device="cuda"`` on a real GPU, where
    ``measured_cuda_bytes`` holds CUDA's own count.
    """
    from lumix_core.sampling.denoiser import FluxDenoiser, TextConditioning

    t0 = time.perf_counter()
    ledger = StorageLedger(device)
    c, maps = case.config, case.map_set
    chunks = 2 if case.inference == "text" else 1
    groups = chunks * case.scenes  # one prompt per scene and chunk, each shared by the scene's maps
    B, h, w = groups * maps.size, case.image_height // VAE_FACTOR, case.size // VAE_FACTOR
    with contextlib.ExitStack() as stack:
        stack.enter_context(logging_disabled())
        stack.enter_context(simulation(fake, ledger))
        stack.enter_context(torch.no_grad())
        model = build_flux(c, case.weights, fill=not fake, device=device)
        spec = default_spec(maps, case.rank, c.hidden_size, c.depth, c.depth_single_blocks)
        with torch.device("meta"):
            adapter = LumiXAdapter(spec)
        materialize(adapter, device, lambda name, t: torch.float32)
        if not fake:
            _fill_(adapter)
        adapter.requires_grad_(False)
        model.attach(adapter)
        denoise = FluxDenoiser(model)
        x = torch.zeros(B, LATENT_CHANNELS, h, w, device=device)
        t = torch.full((B,), 0.5, device=device)
        cond = TextConditioning(torch.zeros(groups, case.text_tokens, c.context_in_dim, dtype=torch.bfloat16,
                                            device=device),
                                torch.zeros(groups, c.vec_in_dim, dtype=torch.bfloat16, device=device))
        denoise(x, t, cond, 3.5)  # fills the adapter's cache of contracted factors
        ledger.mark("model call")
        ledger.reset_peak()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        v = denoise(x, t, cond, 3.5)
        measured = None
        if device == "cuda":
            torch.cuda.synchronize()
            measured = torch.cuda.max_memory_allocated()
        groups = {"frozen_weights": [p for p in list(model.parameters()) + list(model.buffers())
                                     if all(p is not q for q in adapter.parameters())],
                  "adapter": list(adapter.parameters()),
                  "adapter_cache": [value for lora in adapter.tensor_loras() for _, value in lora._cache.values()],
                  "inputs": [x, t, cond.txt, cond.y]}
        split = split_peak(ledger, groups)
        raw = ledger.peak.bytes
        del v, model, adapter, groups
    return Row("inference", case.weights, case.size, None, None, _gib(split.total), split.total, raw,
               {k: _gib(v) for k, v in split.parts.items()}, "model call", parts_bytes=dict(split.parts), sequences=B,
               text_tokens=case.text_tokens, inference=case.inference,
               wall_s=round(time.perf_counter() - t0, 2), fake=fake, measured_cuda_bytes=measured, scenes=case.scenes,
               width=case.size, height=case.image_height)


@contextlib.contextmanager
def logging_disabled() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def simulate(case: Case, *, fake: bool = True, device: str = "cpu") -> Row:
    run = simulate_train if case.mode == "train" else simulate_inference
    return run(case, fake=fake, device=device)


# ------------------------------------------------------------------------------ swap targets
def swap_needed(case: Case, target_gib: float, *, cache: dict) -> Optional[int]:
    """Fewest ``blocks_to_swap`` whose simulated peak is at most ``target_gib`` (None: not even the most).

    A guess from the block sizes (``block_swap.swap_saved_bytes``: swapping blocks takes their
    weights off the device; the slots add back the largest) picks where to start; the
    answer itself comes from simulations only: the guess is walked down while one block fewer
    still fits, up while it does not fit (the peak falls as N grows from 3 on).
    """
    def peak(n: int) -> int:
        key = replace(case, blocks_to_swap=n)
        if key not in cache:
            cache[key] = simulate(key)
        return cache[key].peak_bytes

    target = int(target_gib * GiB)
    most = swap_module.max_blocks_to_swap(case.config)
    if peak(0) <= target:
        return 0
    lo = swap_module.SLOTS + 1  # fewer swapped blocks than slots + 1 save nothing
    guess = next((n for n in range(lo, most + 1)
                  if peak(0) - swap_module.swap_saved_bytes(case.config, n, case.weight_bytes_per_param) <= target),
                 most)
    n = max(lo, guess)
    if peak(n) <= target:
        while n > lo and peak(n - 1) <= target:
            n -= 1
        return n
    while n < most:
        n += 1
        if peak(n) <= target:
            return n
    return None


# --------------------------------------------------------------------------------- output
def _cell(value, fmt: str = "{}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def _size(width: int, height: int) -> str:
    return f"{width}²" if width == height else f"{width}×{height}"


def markdown(rows: list[Row]) -> str:
    head = ("| mode | weights | size | ckpt | swap | peak GiB | frozen weights | adapter (+ grads, AdamW; cache) | "
            "activations etc. | peak in | swap GB/step | at PCIe 4.0 x16 | sim s |")
    lines = [head, "|" + " --- |" * 13]
    for r in rows:
        p = r.parts_gib
        adapter = sum(p.get(k, 0) for k in ("adapter", "adapter_grads", "adamw_state", "adapter_cache"))
        scenes = f"{r.scenes} scenes, " if r.scenes != 1 else ""
        mode = "train" if r.mode == "train" else f"infer {r.inference} ({scenes}{r.sequences} seq)"
        ckpt = None if r.gradient_checkpointing is None else ("on" if r.gradient_checkpointing else "off")
        gb = None if r.swap_bytes_per_step is None else r.swap_bytes_per_step / 1e9
        size = _size(r.width, r.height)
        lines.append(f"| {mode} | {r.weights} | {size} | {_cell(ckpt)} | {_cell(r.blocks_to_swap)} | "
                     f"**{r.peak_gib:.2f}** | {p.get('frozen_weights', 0):.2f} | {adapter:.2f} | "
                     f"{p.get('other', 0):.2f} | {r.peak_phase} | {_cell(gb, '{:.1f}')} | "
                     f"{_cell(r.swap_seconds_pcie4, '{:.2f} s')} | {r.wall_s:.0f} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _sizes(text: str) -> list[tuple[int, int]]:
    """``1536x1152,1024`` -> [(1536, 1152), (1024, 1024)] (width, height in pixels)."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item:
            w, _, h = item.partition("x")
            out.append((int(w), int(h or w)))
    return out


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _weights(args, allowed: tuple) -> list[str]:
    asked = [w for w in (args.weights or ",".join(allowed)).split(",") if w]
    return [w for w in asked if w in allowed]


def plan_cases(args) -> list[Case]:
    cases: list[Case] = []
    model = MODELS[args.model]
    if args.rows in ("train", "all"):
        for size in args.sizes:
            for w in _weights(args, TRAIN_WEIGHTS):
                cases.append(Case("train", size, w, 0, True, args.text_tokens, args.rank, config=model))
                if not args.no_off:
                    cases.append(Case("train", size, w, 0, False, args.text_tokens, args.rank, config=model))
                for n in args.swap:
                    if n:
                        cases.append(Case("train", size, w, n, True, args.text_tokens, args.rank, config=model))
    if args.rows in ("inference", "all"):
        sizes = [(size, size, kind) for size in args.sizes for kind in ("text", "photo")]
        sizes += [(w, h, "photo") for w, h in args.photo_sizes if (w, h, "photo") not in sizes]
        for width, height, kind in sizes:
            for w in _weights(args, INFERENCE_WEIGHTS):
                for scenes in args.scenes:
                    cases.append(Case("inference", width, w, text_tokens=args.text_tokens, rank=args.rank,
                                      inference=kind, config=model, scenes=scenes,
                                      height=None if height == width else height))
    return cases


def _label(case: Case) -> str:
    size = _size(case.size, case.image_height)
    if case.mode == "train":
        ckpt = "on" if case.gradient_checkpointing else "off"
        return f"train {case.weights} {size}, checkpointing {ckpt}, {case.blocks_to_swap} swapped"
    return f"{case.inference} {case.weights} {size}, {case.scenes} scene(s)"


def cuda_check(args) -> None:
    """Each row simulated on the CPU and run on the GPU: simulated peak vs CUDA's own count."""
    if not torch.cuda.is_available():
        raise SystemExit("--cuda-check needs a CUDA GPU")
    if not args.json:
        print("| row | simulated GiB | ledger on the GPU GiB | max_memory_allocated GiB | measured - simulated MiB |\n|"
              + " --- |" * 5)
    for case in plan_cases(args):
        sim = simulate(case)
        real = simulate(case, fake=False, device="cuda")
        torch.cuda.empty_cache()
        if args.json:
            print(json.dumps({"mode": f"cuda_check_{case.mode}", "simulated": asdict(sim), "cuda": asdict(real)}),
                  flush=True)
            continue
        print(f"| {_label(case)} | {sim.peak_gib:.3f} | {real.peak_gib:.3f} | {real.measured_cuda_bytes / GiB:.3f} | "
              f"{(real.measured_cuda_bytes - sim.peak_bytes) / 2**20:+.1f} |", flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON object per row instead of a markdown table")
    p.add_argument("--rows", choices=("train", "inference", "all"), default="train")
    p.add_argument("--sizes", type=_ints, default=[512, 1024], help="image sides in pixels, e.g. 512,1024")
    p.add_argument("--weights", default=None,
                   help="frozen FLUX weights, comma-separated: bf16, fp8 (train and inference), q8_0, q4_0 (GGUF, "
                        "inference only); default: all that apply")
    p.add_argument("--swap", type=_ints, default=[20], help="blocks_to_swap values for extra train rows (0: none)")
    p.add_argument("--targets", type=_floats, default=list(DEFAULT_TARGETS),
                   help="GiB: print the fewest swapped blocks that fit each (fp8 weights, checkpointing); '' skips")
    p.add_argument("--scenes", type=_ints, default=[1, 2], help="inference: scenes per batch, e.g. 1,2")
    p.add_argument("--photo-sizes", type=_sizes, default=[(1536, 1152)],
                   help="inference: extra photo-mode sizes WxH (the official photo script's 1536x1152); '' skips")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--no-off", action="store_true", help="skip the gradient-checkpointing-off rows")
    p.add_argument("--cuda-check", action="store_true",
                   help="on a CUDA GPU: also run each row (--rows) for real and print torch.cuda.max_memory_allocated "
                        "beside the simulated peak (checks the modelling: autocast, flash attention, allocator)")
    p.add_argument("--model", choices=sorted(MODELS), default="dev",
                   help="dev: FLUX.1-dev; tiny: a toy FLUX for a quick smoke run (its figures mean nothing)")
    args = p.parse_args(argv)

    if args.cuda_check:
        cuda_check(args)
        return
    t_start = time.perf_counter()
    rows: list[Row] = []
    done: dict[Case, Row] = {}
    for case in plan_cases(args):
        row = done[case] = simulate(case)
        rows.append(row)
        if args.json:
            print(json.dumps(asdict(row)), flush=True)
    needed = []
    fp8_train = "fp8" in _weights(args, TRAIN_WEIGHTS)
    if args.rows in ("train", "all") and args.targets and fp8_train:
        for size in args.sizes:
            base = Case("train", size, "fp8", 0, True, args.text_tokens, args.rank, config=MODELS[args.model])
            for target in args.targets:
                n = swap_needed(base, target, cache=done)
                row = done.get(replace(base, blocks_to_swap=n)) if n is not None else None
                most = swap_module.max_blocks_to_swap(base.config)
                floor = done.get(replace(base, blocks_to_swap=most))
                needed.append({"mode": "swap_needed", "weights": "fp8", "size": size, "target_gib": target,
                               "blocks_to_swap": n, "peak_gib": None if row is None else row.peak_gib,
                               "most": most, "floor_gib": None if floor is None else floor.peak_gib})
                if row is not None and row not in rows:  # the train row that meets the target, in the table too
                    rows.append(row)
                    if args.json:
                        print(json.dumps(asdict(row)), flush=True)
                if args.json:
                    print(json.dumps(needed[-1]), flush=True)
    wall = time.perf_counter() - t_start
    if args.json:
        print(json.dumps({"mode": "summary", "wall_s": round(wall, 1), "simulations": len(done),
                          "assumptions": list(ASSUMPTIONS)}))
        return
    c = MODELS[args.model]
    name = "FLUX.1-dev" if args.model == "dev" else "tiny FLUX (smoke run)"
    print(f"{name} ({c.depth} double + {c.depth_single_blocks} single blocks, hidden {c.hidden_size}), "
          f"one {len(RELEASE.names)}-map scene, {args.text_tokens} T5 tokens, rank {args.rank} fp32 adapter + AdamW, "
          f"bf16 autocast; exact peak of allocated GPU memory, computed on a CPU with fake tensors\n")
    print(markdown(rows))
    for n in needed:
        what = (f"more than swapping gives (all {n['most']} blocks: {n['floor_gib']:.2f} GiB)"
                if n["blocks_to_swap"] is None
                else f"blocks_to_swap >= {n['blocks_to_swap']} (peak {n['peak_gib']:.2f} GiB)")
        print(f"\nfp8 + checkpointing, {n['size']}²: <= {n['target_gib']:g} GiB needs {what}", end="")
    print("\n\nAssumptions:\n" + "\n".join(f"* {a}" for a in ASSUMPTIONS))
    print(f"\n{len(done)} simulations in {wall:.0f} s on this CPU")


if __name__ == "__main__":
    main()
