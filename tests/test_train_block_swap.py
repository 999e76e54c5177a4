"""``--blocks-to-swap``: blocks streamed from CPU buffers through two slots give the very same training.

On the CPU the slots are CPU tensors and every copy really happens, so bit-exact equality with an
unswapped model means the copies, the re-pointing of the weights and the release points are right;
what only a GPU shows (the side stream, pinned memory, events) is left to ``bench/``.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from train_helpers import MAPS3, fit_config, interrupted_and_resumed, synthetic_cache, tiny_flux_file, torchrun_fit

from lumix_core.model.adapter import LumiXAdapter, default_spec
from lumix_core.model.checkpoint import load_adapter
from lumix_core.model.flux import FLUX_DEV, Flux, tiny_config
from lumix_core.train import block_swap
from lumix_core.train.block_swap import (
    BlockSwapper,
    block_param_count,
    swap_slot_bytes,
    swap_traffic_bytes,
    swapped_block_names,
)
from lumix_core.train.config import ConfigError, FitConfig
from lumix_core.train.fit import run_fit

TINY = tiny_config(hidden_size=64, num_heads=2, context_in_dim=32, vec_in_dim=16)  # 2 double + 2 single blocks


# ---------------------------------------------------------------------------- model level
def _model(fp8: bool = False, adapt_first_block: bool = True, config=TINY) -> tuple[Flux, LumiXAdapter]:
    torch.manual_seed(0)
    model = Flux(config).requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if fp8:
        from lumix_core.model.fp8 import quantize_flux_blocks_

        quantize_flux_blocks_(model)
    spec = default_spec(maps=MAPS3, rank=4, hidden=config.hidden_size, double_blocks=config.depth,
                        single_blocks=config.depth_single_blocks)
    if not adapt_first_block:  # double block 1 then gets inputs that need no gradient
        spec = replace(spec, double_blocks=(1,))
    adapter = LumiXAdapter(spec)
    adapter.reset_parameters(torch.Generator().manual_seed(3))
    with torch.no_grad():  # G3 = 0 at init would make every adapter gradient but G3's zero
        for lora in adapter.tensor_loras():
            lora.G3.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    model.attach(adapter)
    model.gradient_checkpointing = True
    return model, adapter


def _inputs(seed: int, config=TINY, tokens: int = 16, device: str = "cpu") -> tuple:
    g = torch.Generator().manual_seed(seed)
    B, T, c = 3, 8, config
    x = (torch.randn(B, tokens, c.in_channels, generator=g), torch.zeros(B, tokens, 3),
         torch.randn(B, T, c.context_in_dim, generator=g), torch.zeros(B, T, 3), torch.rand(B, generator=g),
         torch.randn(B, c.vec_in_dim, generator=g), torch.ones(B))
    return tuple(t.to(device) for t in x)


def _passes(model: Flux, adapter: LumiXAdapter, micro_batches: int = 2, **inputs) -> list[torch.Tensor]:
    """Outputs and accumulated adapter gradients of a few forward + backward passes, then a no-grad forward."""
    adapter.zero_grad(set_to_none=True)
    outs = []
    for k in range(micro_batches):
        out = model(*_inputs(k, **inputs))
        out.square().mean().backward()
        outs.append(out.detach())
    with torch.no_grad():
        outs.append(model(*_inputs(9, **inputs)))
    return outs + [p.grad for p in adapter.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize("n, fp8, adapt_first_block", [
    (1, False, True), (3, False, True), (3, False, False), (3, True, True)])
def test_swap_matches_no_swap_bit_exactly(n, fp8, adapt_first_block):
    reference = _passes(*_model(fp8, adapt_first_block))
    model, adapter = _model(fp8, adapt_first_block)
    swapper = BlockSwapper(model, n, "cpu")
    assert swapper.names == swapped_block_names(TINY, n)
    assert _same(_passes(model, adapter), reference)
    assert _same(_passes(model, adapter), reference)  # and again, from whatever the slots hold now
    assert all(slot.holds == 0 for slot in swapper._slots)


def test_swapped_weights_rest_on_the_cpu_and_compute_reads_the_slots():
    model, adapter = _model()
    swapper = BlockSwapper(model, 3, "cpu")
    homes = {b.name: _storage(b.home) for b in swapper._order}
    slots = {_storage(s.buffer) for s in swapper._slots}
    assert len(slots) == 2 and swapper.device_bytes == 2 * max(b.nbytes for b in swapper._order)
    seen = []

    def record(module, args, name):
        in_slots = sum(_storage(b.tensors[0]) in slots for b in swapper._order)
        seen.append((name, _storage(module.weight), in_slots))

    for name in swapper.names:
        for sub_name, sub in model.get_submodule(name).named_modules():
            if isinstance(sub, torch.nn.Linear):
                sub.register_forward_pre_hook(lambda m, a, name=name: record(m, a, name))
    _passes(model, adapter)
    # Every call of a swapped block's layers (forward, recompute, no-grad forward) read a slot,
    # and never more than the two blocks in the slots pointed there at once.
    assert {name for name, _, _ in seen} == set(swapper.names)
    assert all(ptr in slots and ptr != homes[name] for name, ptr, _ in seen)
    assert max(n for _, _, n in seen) <= 2
    # Between passes every tensor of a swapped block is a view of its block's CPU buffer.
    for b in swapper._order:
        assert all(_storage(t) == homes[b.name] and t.device.type == "cpu" for t in b.tensors)
    resident = [p for n, p in model.named_parameters() if not n.startswith(tuple(swapper.names))]
    assert all(_storage(p) not in slots | set(homes.values()) for p in resident)


def test_copies_per_pass_follow_the_traffic_formula():
    model, adapter = _model()
    swapper = BlockSwapper(model, 3, "cpu")  # double_blocks.1, single_blocks.0, single_blocks.1
    first, middle, last = swapper.names
    assert swapper.copies == {first: 1, middle: 1}  # the first two, prefetched at install
    k = 3
    for seed in range(k):
        model(*_inputs(seed)).square().mean().backward()
    # Forward: the first two blocks are still in the slots; backward: so are the last two.
    assert swapper.copies == {first: 1 + k, middle: 1, last: k}
    per_pass = sum(block_param_count(TINY, name.split("_")[0]) for name in (first, last)) * 4
    assert swap_traffic_bytes(TINY, 3, 4) == per_pass


def test_a_slot_is_reused_only_after_its_block_backward(monkeypatch):
    """Scribble over a slot the moment its block is released: any later read of it shows."""
    reference = _passes(*_model())

    def poisoned(release):
        def run(self, block):
            release(self, block)
            slot = next(s for s in self._slots if s.block is block)
            if slot.holds == 0:
                slot.buffer.fill_(0xFF)  # NaN in every float dtype
                slot.block = None
        return run

    monkeypatch.setattr(BlockSwapper, "_release", poisoned(BlockSwapper._release))
    model, adapter = _model()
    BlockSwapper(model, 3, "cpu")
    assert _same(_passes(model, adapter), reference)

    # The same check catches a release at the end of the recompute, i.e. before the block's backward.
    def early(self, fn):
        def run(*args, **kwargs):
            if not self.forward_done:
                self.forward_done = True
                return self.swapper._call_once(self.block, fn, args, kwargs, None)
            return self.swapper._call_once(self.block, fn, args, kwargs, None)
        return run

    monkeypatch.setattr(block_swap._Ticket, "streamed", early)
    model, adapter = _model()
    BlockSwapper(model, 3, "cpu")
    assert not _same(_passes(model, adapter), reference)


def test_a_graph_dropped_without_backward_frees_its_slots():
    model, adapter = _model()
    swapper = BlockSwapper(model, 3, "cpu")
    out = model(*_inputs(0))
    out.square().mean().backward(inputs=[adapter.single_blocks["1"].processor.proj_tt_lora.G3])
    assert sum(s.holds for s in swapper._slots) == 1  # single_blocks.1 recomputed, its inputs' marker not reached
    del out
    assert sum(s.holds for s in swapper._slots) == 0
    assert _same(_passes(model, adapter), _passes(*_model()))


def test_gradients_without_checkpointing_are_refused():
    model, adapter = _model()
    BlockSwapper(model, 3, "cpu")
    model.gradient_checkpointing = False
    with torch.no_grad():
        model(*_inputs(0))  # inference needs no checkpointing
    with pytest.raises(RuntimeError, match="double_blocks.1 is swapped to the CPU and needs gradient checkpointing"):
        model(*_inputs(0))


def test_sizes_and_order_at_flux_dev_size():
    assert swapped_block_names(FLUX_DEV, 2) == ["single_blocks.36", "single_blocks.37"]
    assert swapped_block_names(FLUX_DEV, 40)[:3] == ["double_blocks.17", "double_blocks.18", "single_blocks.0"]
    with torch.device("meta"):
        model = Flux(FLUX_DEV)
    for kind, blocks in (("double", model.double_blocks), ("single", model.single_blocks)):
        assert block_param_count(FLUX_DEV, kind) == sum(p.numel() for p in blocks[0].parameters())
        assert block_param_count(TINY, kind) == sum(p.numel() for p in getattr(Flux(TINY), f"{kind}_blocks")[0]
                                                    .parameters())
    single, double = block_param_count(FLUX_DEV, "single"), block_param_count(FLUX_DEV, "double")
    assert (single, double) == (141_591_808, 339_831_296)
    # 38 single blocks swapped: 2 x 36 copied per pass; 56: + 18 doubles twice, minus the slot reuse.
    assert swap_traffic_bytes(FLUX_DEV, 38, 2) == 2 * 36 * single * 2
    assert swap_traffic_bytes(FLUX_DEV, 56, 2) == (36 * single + 18 * double + 38 * single + 16 * double) * 2
    assert swap_traffic_bytes(FLUX_DEV, 2, 2) == 0
    assert swap_slot_bytes(FLUX_DEV, 20, 2) == 2 * single * 2
    assert swap_slot_bytes(FLUX_DEV, 40, 1) == 2 * double


class _Event:
    def __init__(self, log: list) -> None:
        self.log, self.stream = log, None

    def record(self, stream) -> None:
        self.stream = stream
        self.log.append(("record", stream, self))


class _Stream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_event(self, event: _Event) -> None:
        self.log.append(("wait", self, event))


def test_the_cuda_branch_orders_copies_and_compute_with_events(monkeypatch):
    """Stand-in streams and events on the CPU: the CUDA branch runs, and its event protocol holds.

    Every block call makes the compute stream wait for the event recorded after its copy; every
    copy first makes the copy stream wait for an event the compute stream recorded (the release
    of the slot's previous block, or the slots' allocation).
    """
    reference = _passes(*_model())
    model, adapter = _model()
    swapper = BlockSwapper(model, 3, "cpu")
    log: list = []
    compute, copy = _Stream("compute", log), _Stream("copy", log)
    current = [compute]

    class _Use:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            self.previous, current[0] = current[0], self.stream

        def __exit__(self, *exc):
            current[0] = self.previous

    monkeypatch.setattr(torch.cuda, "Event", lambda: _Event(log))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch.cuda, "stream", _Use)
    swapper.cuda, swapper._copy_stream = True, copy
    for slot in swapper._slots:
        slot.used, slot.block = swapper._record(), None  # empty slots: every block is copied in again
    acquire = BlockSwapper._acquire
    monkeypatch.setattr(BlockSwapper, "_acquire", lambda self, block: (log.append(("acquire",)),
                                                                       acquire(self, block)))
    assert _same(_passes(model, adapter), reference)
    copies = [i for i, e in enumerate(log) if e[0] == "record" and e[1] is copy]
    assert len(copies) == sum(swapper.copies.values()) - 2  # less the two at install, before the stand-ins
    for i in copies:  # the copy waited for the compute that last used its slot
        kind, stream, event = log[i - 1]
        assert (kind, stream, event.stream) == ("wait", copy, compute)
    acquires = [i for i, e in enumerate(log) if e[0] == "acquire"]
    for i in acquires:  # the compute waited for the slot's copy
        waits = [e for e in log[i + 1:] if e[0] == "wait" and e[1] is compute]
        assert waits and waits[0][2].stream is copy
    assert len([e for e in log if e[0] == "wait" and e[1] is compute]) == len(acquires)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the side stream and pinned memory")
@pytest.mark.parametrize("tokens", [16, 2048])
def test_on_cuda_swap_matches_no_swap(tokens):
    """Blocks of 60-150 MB: with 16 tokens the copies take far longer than the compute (a missing
    wait for a copy would compute with another block's weights), with 2048 the other way round
    (a copy not waiting for the compute would overwrite weights in use)."""
    config = tiny_config(hidden_size=1024, num_heads=8, depth=2, depth_single_blocks=4, context_in_dim=32,
                         vec_in_dim=16)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model, adapter = _model(config=config)
        model.to("cuda"), adapter.to("cuda")
        reference = _passes(model, adapter, config=config, tokens=tokens, device="cuda")
        model, adapter = _model(config=config)
        swapper = BlockSwapper(model, 5, "cuda")
        adapter.to("cuda")
        assert swapper.pinned and all(b.home.is_pinned() for b in swapper._order)
        for _ in range(2):
            got = _passes(model, adapter, config=config, tokens=tokens, device="cuda")
            torch.cuda.synchronize()
            assert len(got) == len(reference)
            for a, b in zip(got, reference):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert all(slot.holds == 0 for slot in swapper._slots)
        assert all(t.device.type == "cpu" for b in swapper._order for t in b.tensors)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


# ------------------------------------------------------------------------------ trainer
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    return root, synthetic_cache(root / "cache", scenes=4, size=4), tiny_flux_file(root / "flux.safetensors")


def _adapter(path) -> dict[str, torch.Tensor]:
    return load_adapter(path).state_dict()


def _equal_adapters(a, b) -> bool:
    a, b = _adapter(a.adapter_path), _adapter(b.adapter_path)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_fit_with_swap_trains_the_same_adapter(files, tmp_path, grad_accum):
    root, cache, flux = files
    kw = dict(steps=3, grad_accum=grad_accum, gradient_checkpointing=True, caption_dropout=0.5,
              photo_conditioning_prob=0.5, validate_every=2)
    plain = run_fit(fit_config(tmp_path, cache, flux, name="plain", **kw))
    swapped = run_fit(fit_config(tmp_path, cache, flux, name="swap", blocks_to_swap=3, **kw))
    assert swapped.model.block_swap.names == ["double_blocks.1", "single_blocks.0", "single_blocks.1"]
    assert swapped.losses == plain.losses
    assert _equal_adapters(swapped, plain)


def test_resumed_with_another_swap_equals_uninterrupted_without(files, tmp_path):
    root, cache, flux = files
    kw = dict(steps=4, checkpoint_every=2, gradient_checkpointing=True, caption_dropout=0.5)
    full = run_fit(fit_config(tmp_path, cache, flux, name="full", **kw))

    def interrupt(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_fit(fit_config(tmp_path, cache, flux, name="cut", blocks_to_swap=3, **kw), on_step=interrupt)
    resumed = run_fit(fit_config(tmp_path, cache, flux, name="cut", blocks_to_swap=1, resume=True, **kw))
    assert resumed.model.block_swap.names == ["single_blocks.1"]  # the setting may change on resume
    assert _equal_adapters(resumed, full)
    again = interrupted_and_resumed(tmp_path, cache, flux, stop_at=3, name="cut2", blocks_to_swap=2, **kw)
    assert _equal_adapters(again, full)


@pytest.mark.parametrize("settings, message", [
    ({"blocks_to_swap": -1}, "blocks_to_swap must be >= 0, got -1"),
    ({"blocks_to_swap": 3, "gradient_checkpointing": False},
     "--blocks-to-swap needs gradient checkpointing: without it autograd keeps every swapped block's weights"),
])
def test_settings_that_cannot_swap_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        FitConfig(cache="c", flux="f", output="o", **settings).validate()


def test_more_blocks_than_the_model_can_swap_is_refused_before_the_run_starts(files, tmp_path):
    root, cache, flux = files
    config = fit_config(tmp_path, cache, flux, name="big", blocks_to_swap=4, gradient_checkpointing=True)
    with pytest.raises(ConfigError, match=r"--blocks-to-swap 4: this FLUX has 4 blocks \(2 double \+ 2 single\) "
                                          r"and the first stays on the GPU; use at most 3"):
        run_fit(config)
    assert not (tmp_path / "big").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_torchrun_two_processes_with_swap_match_one_process(files, tmp_path):
    """Two ranks of one scene each, swapping, against one process accumulating two scenes without:
    the same float operations (see test_train_ddp), so the adapters are bit-identical."""
    root, cache, flux = files
    common = dict(steps=2, lr=1e-2, caption_dropout=0.5, gradient_checkpointing=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accum2 = run_fit(fit_config(tmp_path, cache, flux, name="accum2", batch_size=1, grad_accum=2, **common))
    finally:
        torch.set_num_threads(before)
    out = tmp_path / "ddp"
    torchrun_fit(cache, flux, out, "--blocks-to-swap", "3", steps=2, lr=1e-2)
    ddp = _adapter(Path(out) / "adapter.safetensors")
    ref = _adapter(accum2.adapter_path)
    assert ddp.keys() == ref.keys() and all(torch.equal(ddp[k], ref[k]) for k in ref)
    assert max(float(ddp[k].abs().max()) for k in ddp if k.endswith("G3")) > 1e-3  # it trained


def test_fit_with_fp8_weights_and_swap_trains_the_same_adapter(files, tmp_path):
    root, cache, flux = files
    kw = dict(steps=2, gradient_checkpointing=True, base_dtype="fp8")
    plain = run_fit(fit_config(tmp_path, cache, flux, name="plain", **kw))
    swapped = run_fit(fit_config(tmp_path, cache, flux, name="swap", blocks_to_swap=3, **kw))
    fp8 = [t for b in swapped.model.block_swap._order for t in b.tensors if t.dtype == torch.float8_e4m3fn]
    assert fp8 and all(t.device.type == "cpu" for t in fp8)
    assert swapped.losses == plain.losses
    assert _equal_adapters(swapped, plain)
