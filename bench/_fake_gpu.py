"""Exact GPU memory without a GPU: fake tensors, a storage ledger, CUDA's autocast and flash attention.

The pieces :mod:`bench_memory` puts together (``tests/test_bench_memory.py`` checks each):

* :class:`StorageLedger` -- a ``TorchDispatchMode`` that sees every tensor an operation returns
  and counts its *storage* from birth to death: keyed by the storage object (views and in-place
  results share it, so nothing is counted twice) and freed by a ``weakref.finalize`` on it,
  which runs when the last tensor using the storage goes. ``data_ptr()`` would not do: it is 0
  for every fake tensor. The same ledger runs on real tensors, so the fake count can be checked
  against a real one to the byte. Each storage is counted at its size and at the size the CUDA
  caching allocator hands out (rounded up to 512 bytes: what ``torch.cuda.memory_allocated``
  reports).
* :func:`cuda_autocast` -- CUDA's autocast *policy* on another device type (CPU), where autograd
  works on fake tensors (a CPU-only torch cannot record autograd graphs on fake CUDA tensors:
  it has no CUDA device guard). Python kernels on that device's autocast dispatch key apply, op
  by op, the casts this torch build's ``AutocastCUDA`` kernels make -- found by running the
  CUDA kernel on fake CUDA copies of the arguments (no gradients there, so that works) and
  recording its casts -- including autocast's cache of weight casts (fp32 leaves that require
  grad, kept until the outermost autocast region ends). Ops that only CPU autocast lists fall
  through, as on CUDA.
* :func:`flash_attention` -- ``scaled_dot_product_attention`` replaced by a stand-in that
  allocates what PyTorch's FlashAttention-2 path allocates on CUDA (``_scaled_dot_product_flash_
  attention`` + ``_flash_attention_backward`` / ``mha_fwd`` / ``mha_bwd``): forward the output
  (``empty_like`` the transposed query, so in the query's memory layout) and the fp32
  log-sum-exp ``[B, H, L]``, saving q, k, v, out and lse for backward; backward the contiguous
  copies of ``dout`` and ``out`` in ``[B, L, H, D]`` order (a copy only where the layout needs
  one), dq, dk, dv (``empty_like`` q, k, v) and the transient fp32 ``softmax_d [B, H, L128]``
  and ``dq_accum [B, L128, H, D32]`` (``L128``: L rounded up to 128, ``D32``: the head dim to
  32). No ``L x L`` matrix. On real tensors it also computes the right values (outside every
  mode, so uncounted), so a real run still trains.
* :func:`materialize` -- turn a module built on the ``meta`` device into fake tensors, so a
  12 B-parameter FLUX never takes real memory.
"""
from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

#: The CUDA caching allocator hands out blocks in multiples of this (``kMinBlockSize``).
CUDA_BLOCK = 512
GiB = 2**30


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def cuda_block_bytes(nbytes: int) -> int:
    """Bytes the CUDA caching allocator takes for one allocation of ``nbytes`` (0 stays 0)."""
    return _round_up(nbytes, CUDA_BLOCK)


def fake_mode() -> FakeTensorMode:
    """A fake mode that also accepts real tensors (host-side data such as cache reads) as inputs."""
    return FakeTensorMode(allow_non_fake_inputs=True)


# ------------------------------------------------------------------------------ ledger
@dataclass
class _Life:
    nbytes: int
    block: int
    birth: int
    death: Optional[int] = None


@dataclass
class Peak:
    """The largest total of live storages and the moment (event number) it was reached."""

    bytes: int = 0
    event: int = 0


_LIFTS = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)


class StorageLedger(TorchDispatchMode):
    """Counts the storages of tensors that operations return, from birth to death.

    ``device_type``: only storages of tensors on that device type count (fake tensors report
    the device they stand for). Storages that existed before the ledger saw them (inputs from
    outside, e.g. a real host tensor handed to a fake op) are not counted when an op returns a
    view of them. :meth:`paused` stops counting births (host-side work); :meth:`reset_peak`
    starts a new peak from the current total. Every storage's life is kept (``lives``) so a
    peak can be split by what was alive at that moment.
    """

    def __init__(self, device_type: str = "cpu") -> None:
        super().__init__()
        self.device_type = device_type
        self.live: dict[int, int] = {}  # id(storage) -> index into lives
        self.lives: list[_Life] = []
        self.current = self.current_blocks = 0
        self.peak, self.peak_blocks = Peak(), Peak()
        self.event = 0
        self.marks: list[tuple[int, str]] = []
        self._paused = 0

    # -- what callers use ------------------------------------------------------------------
    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def reset_peak(self) -> None:
        self.peak = Peak(self.current, self.event)
        self.peak_blocks = Peak(self.current_blocks, self.event)

    def mark(self, label: str) -> None:
        """Name the moment (for telling in which phase a peak happened)."""
        self.marks.append((self.event, label))

    def phase_at(self, event: int) -> str:
        label = "start"
        for e, name in self.marks:
            if e <= event:
                label = name
        return label

    def index_of(self, t: Tensor) -> Optional[int]:
        """The ``lives`` index of ``t``'s storage while it is alive and counted."""
        return self.live.get(id(t.untyped_storage()))

    def alive_at(self, index: int, event: int) -> bool:
        life = self.lives[index]
        return life.birth <= event and (life.death is None or life.death > event)

    def forget(self, t: Tensor) -> None:
        """Stop counting ``t``'s storage, as if it had gone (memory a GPU run keeps on the host)."""
        key = id(t.untyped_storage())
        index = self.live.get(key)
        if index is not None:
            self._death(key, index)

    # -- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._paused:
            # torch.tensor(data) hands its fresh tensor to lift_fresh: new memory, though an input
            inputs = frozenset() if func in _LIFTS else None
            for t in tree_leaves(out):
                if isinstance(t, Tensor):
                    if inputs is None:
                        inputs = frozenset(id(a.untyped_storage()) for a in tree_leaves((args, kwargs))
                                           if isinstance(a, Tensor) and a.device.type != "meta")
                    self._birth(t, inputs)
        return out

    def _birth(self, t: Tensor, inputs: frozenset) -> None:
        if t.device.type != self.device_type:
            return
        st = t.untyped_storage()
        key = id(st)
        index = self.live.get(key)
        nbytes = st.nbytes()
        if index is not None:  # seen before: only a resize_ changes anything
            life = self.lives[index]
            if nbytes != life.nbytes:
                self._add(nbytes - life.nbytes, cuda_block_bytes(nbytes) - life.block)
                life.nbytes, life.block = nbytes, cuda_block_bytes(nbytes)
            return
        if key in inputs:  # a view of, or an in-place op on, memory from before the ledger
            return
        self.event += 1
        index = len(self.lives)
        self.lives.append(_Life(nbytes, cuda_block_bytes(nbytes), self.event))
        self.live[key] = index
        self._add(nbytes, cuda_block_bytes(nbytes))
        weakref.finalize(st, self._death, key, index)

    def _add(self, nbytes: int, block: int) -> None:
        self.current += nbytes
        self.current_blocks += block
        if self.current > self.peak.bytes:
            self.peak = Peak(self.current, self.event)
        if self.current_blocks > self.peak_blocks.bytes:
            self.peak_blocks = Peak(self.current_blocks, self.event)

    def _death(self, key: int, index: int) -> None:
        if self.live.get(key) != index:
            return
        del self.live[key]
        life = self.lives[index]
        self.event += 1
        life.death = self.event
        self.current -= life.nbytes
        self.current_blocks -= life.block


# ---------------------------------------------------------------------- CUDA's autocast
_AUTOCAST_KEYS = ("AutocastCPU", "AutocastCUDA", "AutocastPrivateUse1", "AutocastXPU", "AutocastMPS")


def _autocast_keyset() -> "torch._C.DispatchKeySet":
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
    for name in _AUTOCAST_KEYS[1:]:
        if hasattr(torch._C.DispatchKey, name):
            keys = keys | torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, name))
    return keys


def _overload(name: str):
    """``aten::sum.dim_IntList`` -> ``torch.ops.aten.sum.dim_IntList``."""
    ns, rest = name.split("::")
    op, _, overload = rest.partition(".")
    return getattr(getattr(getattr(torch.ops, ns), op), overload or "default")


class _Recorder(TorchDispatchMode):
    """Records the calls the CUDA autocast kernel makes below itself (its casts, then the op)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append((func, args, kwargs or {}, out))
        return out


_HASHABLE = (bool, int, float, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


@dataclass
class _Plan:
    """What CUDA autocast does to one call: cast leaf ``i`` to ``casts[i]``; maybe call another overload."""

    casts: dict[int, torch.dtype]
    target: object = None  # the overload the kernel redispatches to, where it changed non-tensor args
    template: Optional[tuple] = None  # (flat leaves with ("leaf", i) refs, treespec) of that call


class CudaAutocastPolicy:
    """CUDA autocast's casts, applied to calls on ``device_type`` (see :func:`cuda_autocast`)."""

    def __init__(self, device_type: str = "cpu") -> None:
        self.device_type = device_type
        self.plans: dict[tuple, _Plan] = {}
        self.cache: dict[int, tuple[weakref.ref, Tensor]] = {}  # autocast's weight-cast cache

    # -- the probe --------------------------------------------------------------------------
    def _plan(self, op, flat: list, spec, dtype: torch.dtype) -> _Plan:
        """The cast plan of ``op`` on the flattened ``(args, kwargs)`` ``flat`` / ``spec``."""
        # non-tensor arguments are part of the key: a plan may replay them (sum(x, dim) -> sum(x, dim, dtype))
        key = (op, dtype, str(spec), tuple(
            (x.dtype, x.device.type == self.device_type) if isinstance(x, Tensor)
            else (type(x), x) if isinstance(x, _HASHABLE) else (type(x), repr(x)) for x in flat))
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self._probe(op, flat, spec, dtype)
        return plan

    def _probe(self, op, flat: list, spec, dtype: torch.dtype) -> _Plan:
        with _disable_current_modes(), fake_mode(), torch.no_grad():
            probes = [torch.empty_strided(x.shape, x.stride(), dtype=x.dtype,
                                          device="cuda" if x.device.type == self.device_type else x.device)
                      if isinstance(x, Tensor) else x for x in flat]
            ids = {id(p): i for i, p in enumerate(probes) if isinstance(p, Tensor)}
            recorder = _Recorder()
            was_enabled, was_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
            torch.set_autocast_enabled("cuda", True)
            torch.set_autocast_dtype("cuda", dtype)
            torch.autocast_increment_nesting()
            try:
                a, k = tree_unflatten(probes, spec)
                with recorder:
                    op(*a, **k)
            finally:
                torch.autocast_decrement_nesting()
                torch.set_autocast_enabled("cuda", was_enabled)
                torch.set_autocast_dtype("cuda", was_dtype)
        casts, refs = {}, dict(ids)
        main = None
        for func, a, k, out in recorder.calls:
            if func.namespace == "prim":  # metadata queries (prim.device) come before the casts
                continue
            if func is torch.ops.aten._to_copy.default and id(a[0]) in ids and "dtype" in k:
                casts[ids[id(a[0])]] = k["dtype"]
                refs[id(out)] = ids[id(a[0])]
                continue
            main = (func, a, k)
            break
        plan = _Plan(casts)
        if main is not None and main[0].overloadpacket is op.overloadpacket:
            inner_flat, inner_spec = tree_flatten((main[1], main[2]))
            if any(isinstance(x, Tensor) and id(x) not in refs for x in inner_flat):
                raise NotImplementedError(f"emulated CUDA autocast: cannot map the arguments of {main[0]}")
            template = [("leaf", refs[id(x)]) if isinstance(x, Tensor) else ("value", x) for x in inner_flat]
            own = [("leaf", i) if isinstance(x, Tensor) else ("value", x) for i, x in enumerate(flat)]
            if main[0] is not op or len(template) != len(own) or any(
                    t[0] != o[0] or (t[0] == "value" and t[1] is not o[1] and t[1] != o[1])
                    for t, o in zip(template, own)):
                plan.target, plan.template = main[0], (template, inner_spec)
        return plan

    # -- the kernel -----------------------------------------------------------------------
    def cast(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """``x.to(dtype)``, through autocast's cache where CUDA autocast caches (fp32 leaf weights)."""
        cacheable = (dtype == torch.get_autocast_dtype(self.device_type) and x.dtype == torch.float32
                     and x.requires_grad and x.is_leaf and not x._is_view() and torch.is_autocast_cache_enabled())
        if not cacheable:
            return x.to(dtype)
        hit = self.cache.get(id(x))
        if hit is not None and hit[0]() is x:
            return hit[1]
        out = x.to(dtype)
        self.cache[id(x)] = (weakref.ref(x), out)
        return out

    def kernel(self, op) -> Callable:
        def run(*args, **kwargs):
            flat, spec = tree_flatten((args, kwargs))
            plan = self._plan(op, flat, spec, torch.get_autocast_dtype(self.device_type))
            cast = {i: self.cast(flat[i], d) for i, d in plan.casts.items()}
            with torch._C._ExcludeDispatchKeyGuard(_autocast_keyset()):
                if plan.target is None:
                    new = [cast.get(i, x) for i, x in enumerate(flat)]
                    a, k = tree_unflatten(new, spec)
                    return op(*a, **k)
                template, inner_spec = plan.template
                new = [cast.get(v, flat[v]) if kind == "leaf" else v for kind, v in template]
                a, k = tree_unflatten(new, inner_spec)
                return plan.target(*a, **k)

        return run


def _dispatch_key(device_type: str) -> str:
    return {"cpu": "AutocastCPU", "privateuseone": "AutocastPrivateUse1"}[device_type]


@contextlib.contextmanager
def cuda_autocast(device_type: str = "cpu") -> Iterator[CudaAutocastPolicy]:
    """While open, ``torch.autocast(device_type)`` follows CUDA's autocast policy, op by op.

    Every op with an ``AutocastCUDA`` kernel gets a Python kernel on ``device_type``'s autocast
    key that makes the casts the CUDA kernel makes (found by probing it with fake CUDA tensors);
    ops only ``device_type``'s own autocast lists fall through (CUDA leaves them alone). The
    weight-cast cache is emptied whenever ``torch.clear_autocast_cache`` runs (at the exit of the
    outermost autocast region, as on CUDA). Closing restores the built-in kernels.
    """
    key = _dispatch_key(device_type)
    policy = CudaAutocastPolicy(device_type)
    cuda_ops = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA"))
    own_ops = set(torch._C._dispatch_get_registrations_for_dispatch_key(key))
    lib = torch.library.Library("aten", "IMPL")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": that is the point
        for name in sorted(cuda_ops):
            if name.startswith("aten::"):
                lib.impl(name[len("aten::"):], policy.kernel(_overload(name)), key)
        for name in sorted(own_ops - cuda_ops):
            if name.startswith("aten::"):
                lib.impl(name[len("aten::"):], torch.library.fallthrough_kernel, key)
    clear = torch.clear_autocast_cache

    def clear_both() -> None:
        policy.cache.clear()
        clear()

    torch.clear_autocast_cache = clear_both
    try:
        yield policy
    finally:
        torch.clear_autocast_cache = clear
        policy.cache.clear()
        lib._destroy()


# -------------------------------------------------------------------- flash attention
def _is_fake(*tensors: Tensor) -> bool:
    return any(isinstance(t, FakeTensor) for t in tensors)


def _reference(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float]):
    """Attention output and log-sum-exp, computed plainly (real tensors only, nothing counted)."""
    s = (q.float() @ k.float().transpose(-2, -1)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    lse = torch.logsumexp(s, dim=-1)
    return (torch.exp(s - lse[..., None]) @ v.float()).to(q.dtype), lse


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float]) -> Tensor:
        B, H, L, D = q.shape
        out = torch.empty_like(q.transpose(1, 2)).transpose(1, 2)  # mha_fwd: empty_like(q_t)
        lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
        if not _is_fake(q, k, v):
            with _disable_current_modes(), torch.no_grad(), torch.autocast(q.device.type, enabled=False):
                value, logsumexp = _reference(q, k, v, scale)
                out.copy_(value)
                lse.copy_(logsumexp)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        B, H, L, D = q.shape
        dout_c = dout.transpose(1, 2).contiguous()  # _flash_attention_backward: contiguous [B, L, H, D]
        out_c = out.transpose(1, 2).contiguous()
        dq = torch.empty_like(q.transpose(1, 2))  # mha_bwd: empty_like(q), (k), (v)
        dk = torch.empty_like(k.transpose(1, 2))
        dv = torch.empty_like(v.transpose(1, 2))
        softmax_d = torch.empty((B, H, _round_up(L, 128)), dtype=torch.float32, device=q.device)
        dq_accum = torch.empty((B, _round_up(L, 128), H, _round_up(D, 32 if D <= 128 else 64)),
                               dtype=torch.float32, device=q.device)
        if not _is_fake(q, k, v, dout):
            with _disable_current_modes(), torch.enable_grad(), torch.autocast(q.device.type, enabled=False):
                qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                value, _ = _reference(qq, kk, vv, ctx.scale)
                gq, gk, gv = torch.autograd.grad(value, (qq, kk, vv), dout)
                dq.copy_(gq.transpose(1, 2))
                dk.copy_(gk.transpose(1, 2))
                dv.copy_(gv.transpose(1, 2))
        del dout_c, out_c, softmax_d, dq_accum
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None


def flash_sdpa(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
               enable_gqa: bool = False) -> Tensor:
    """``scaled_dot_product_attention`` as CUDA runs it through FlashAttention-2 (memory only)."""
    if attn_mask is not None or dropout_p or is_causal or enable_gqa:
        raise NotImplementedError("the flash-attention stand-in models unmasked, dropout-free attention only")
    if query.shape[-1] % 8 or any(t.stride(-1) != 1 for t in (query, key, value)):
        raise NotImplementedError("the stand-in models head dims divisible by 8 with contiguous last dims")
    device = query.device.type
    if torch.is_autocast_enabled(device):  # SDPA is on autocast's lower-precision list
        dtype = torch.get_autocast_dtype(device)
        query, key, value = (t.to(dtype) for t in (query, key, value))
    return _FlashAttention.apply(query, key, value, scale)


@contextlib.contextmanager
def flash_attention() -> Iterator[None]:
    """``torch.nn.functional.scaled_dot_product_attention`` is :func:`flash_sdpa` while open."""
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = flash_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


# ------------------------------------------------------------------------ construction
def materialize(module: nn.Module, device: "torch.device | str" = "cpu",
                dtype_of: Callable[[str, Tensor], torch.dtype] = lambda name, t: t.dtype) -> nn.Module:
    """Replace every parameter and buffer of a ``meta`` module by a new (fake, under a fake mode)
    tensor on ``device`` with ``dtype_of(qualified name, meta tensor)``; ``requires_grad`` is kept.

    Assigned in place (no ``Module.to``: fake parameters cannot be swapped by it).
    """
    for prefix, sub in module.named_modules():
        for name, t in list(sub._parameters.items()):
            if t is not None:
                new = torch.empty(t.shape, dtype=dtype_of(f"{prefix}.{name}".lstrip("."), t), device=device)
                sub._parameters[name] = nn.Parameter(new, requires_grad=t.requires_grad)
        for name, t in list(sub._buffers.items()):
            if t is not None:
                sub._buffers[name] = torch.empty(t.shape, dtype=dtype_of(f"{prefix}.{name}".lstrip("."), t),
                                                 device=device)
    return module


@dataclass
class Split:
    """A peak split by what was alive at that moment (bytes as the CUDA allocator counts them)."""

    total: int
    parts: dict[str, int] = field(default_factory=dict)


def split_peak(ledger: StorageLedger, groups: dict[str, Iterable[Tensor]], *, blocks: bool = True) -> Split:
    """The ledger's peak, with the bytes of each group of tensors alive at that moment apart;
    ``other`` is the rest (activations, gradients of activations, the batch, temporaries)."""
    peak = ledger.peak_blocks if blocks else ledger.peak
    parts: dict[str, int] = {}
    counted: set[int] = set()
    for label, tensors in groups.items():
        total = 0
        for t in tensors:
            index = ledger.index_of(t)
            if index is None or index in counted or not ledger.alive_at(index, peak.event):
                continue
            counted.add(index)
            life = ledger.lives[index]
            total += life.block if blocks else life.nbytes
        parts[label] = total
    parts["other"] = peak.bytes - sum(parts.values())
    return Split(peak.bytes, parts)
