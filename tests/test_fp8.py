"""fp8 storage of the frozen FLUX linears: exact maths, what backward keeps, the files users have.

Files are written here the way ComfyUI lays out its fp8 FLUX files: weights in float8_e4m3fn,
with per-layer ``scale_weight`` tensors, ``scale_input`` and the ``scaled_fp8`` marker (older
scaled files), or ``weight_scale`` + a ``comfy_quant`` JSON tensor (newer ones).
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_adapter, tiny_flux
from safetensors.torch import save_file
from test_flux_model import forward, inputs

from lumix_core.io.safetensors_io import CheckpointError
from lumix_core.model.flux_io import COMFY_PREFIX, load_flux, save_flux
from lumix_core.model.fp8 import FP8, FP8_MAX, Fp8Linear, dequantize, fp8_weight_names, quantize, quantize_flux_blocks_

F32 = torch.float32


def _layer(bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(48, 80, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(80, 48, generator=g) * 0.05)
        linear.weight[3, 7] = 1.7  # an outlier sets the scale, as in FLUX's weights
    return Fp8Linear.from_linear(linear), linear


@pytest.mark.parametrize("bias", [True, False])
def test_forward_is_linear_with_the_dequantized_weight_exactly(bias):
    layer, linear = _layer(bias)
    x = torch.randn(3, 5, 48)
    w = layer.weight.to(F32) * layer.scale_weight
    assert layer.weight.dtype == FP8 and layer.scale_weight.shape == ()
    assert torch.equal(layer(x), F.linear(x, w, linear.bias))
    assert torch.equal(layer(x[0]), F.linear(x[0], w, linear.bias))  # 2-D input too


def test_quantization_rounds_to_nearest_fp8_with_a_power_of_two_scale():
    layer, linear = _layer()
    scale = float(layer.scale_weight)
    assert scale == 2.0 ** round(torch.log2(torch.tensor(scale)).item())
    assert 224 < 1.7 / scale <= FP8_MAX  # the smallest power of two that fits the largest weight
    w = linear.weight.detach()
    err = (layer.dequantized() - w).abs()
    # half an fp8 step: 1/16 of the value for normal numbers, 2^-10 x scale below 2^-6 x scale
    assert bool((err <= torch.maximum(w.abs() / 16, torch.tensor(scale * 2.0 ** -10))).all())
    # the dequantized value is the same in any compute dtype (a power-of-two scale multiplies exactly)
    assert torch.equal(layer.dequantized(torch.bfloat16).to(F32), layer.weight.to(torch.bfloat16).to(F32) * scale)


def test_input_gradient_equals_the_reference():
    layer, linear = _layer()
    x = torch.randn(3, 5, 48, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(3, 5, 80)
    layer(x).backward(g)
    F.linear(x_ref, layer.dequantized(), linear.bias).backward(g)
    assert torch.equal(x.grad, x_ref.grad)
    assert layer.weight.grad is None and layer.bias.grad is None  # frozen: no weight or bias gradient


def _saved_by(fn):
    """Every tensor autograd saves for backward while ``fn`` runs."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


def test_backward_keeps_the_fp8_weight_and_its_scale_not_a_cast_copy():
    layer, _ = _layer()
    x = torch.randn(3, 5, 48, requires_grad=True)
    saved = _saved_by(lambda: layer(x))
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(FP8, (80, 48)), (F32, ())]
    assert saved[0].data_ptr() == layer.weight.data_ptr()  # the stored weight itself, no copy
    # The check catches the obvious implementation, which keeps a float32 copy of the weight:
    naive = _saved_by(lambda: F.linear(x, dequantize(layer.weight, layer.scale_weight, F32), layer.bias))
    assert [(t.dtype, t.numel()) for t in naive] == [(F32, 80 * 48)]  # (as the transposed view)


def test_a_whole_fp8_flux_keeps_no_float_copy_of_a_block_weight_for_backward():
    """Training forward (frozen FLUX, gradients to the adapter): no saved tensor is a copy shaped
    like a block weight; the block weights backward keeps are the stored fp8 ones."""
    model = tiny_flux().requires_grad_(False)
    quantize_flux_blocks_(model)
    shapes = {s for m in model.modules() if isinstance(m, Fp8Linear) for s in (m.weight.shape, m.weight.T.shape)}
    model.attach(tiny_adapter(model).requires_grad_(True))
    saved = _saved_by(lambda: model(**inputs(5)))
    stored = {p.data_ptr() for p in model.parameters()}  # saving a parameter itself costs nothing
    copies = [(t.dtype, t.shape) for t in saved if t.dim() == 2 and t.shape in shapes and t.data_ptr() not in stored]
    assert not copies
    # one fp8 weight per linear between the first adapter and the loss: double block 0 after its
    # attention (proj + 2 MLP layers, both streams), all of double block 1 but the modulations,
    # linear1 and linear2 of each single block
    assert sum(t.dtype == FP8 for t in saved) == 6 + 8 + 2 * 2


def test_autocast_gives_the_autocast_dtype_and_an_input_gradient_in_the_input_dtype():
    layer, linear = _layer()
    x = torch.randn(3, 5, 48, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    w = layer.weight.to(torch.bfloat16) * layer.scale_weight.to(torch.bfloat16)
    assert torch.equal(y, F.linear(x.to(torch.bfloat16), w, linear.bias.to(torch.bfloat16)))
    y.float().sum().backward()
    assert x.grad.dtype == F32


def test_fp8_flux_forward_is_close_to_the_full_precision_one():
    """The one approximation: block weights rounded to fp8 (3 mantissa bits)."""
    model = tiny_flux()
    reference = forward(model)
    quantize_flux_blocks_(model)
    err = float((forward(model) - reference).norm() / reference.norm())
    assert 0 < err < 0.05, err


# ---------------------------------------------------------------------------------------- files
def _block_weights(model) -> set[str]:
    """Names of the weights ``load_flux(..., fp8=True)`` stores in fp8."""
    shell = copy.deepcopy(model)
    quantize_flux_blocks_(shell, values=False)
    return fp8_weight_names(shell)


def comfy_fp8_file(path, model, *, scaled="scale_weight", prefix=COMFY_PREFIX, fp8_extra=(), metadata=None):
    """Block linear weights in float8_e4m3fn, the rest in bf16, under ComfyUI's prefix.

    ``scaled``: None (weights cast to fp8, no scales: ``flux1-dev-fp8``), "scale_weight" (older
    scaled files: ``scale = amax / 448`` as ComfyUI computes it, ``scale_input`` and the marker) or
    "weight_scale" (newer: with a ``comfy_quant`` JSON per layer). ``fp8_extra``: more weights to
    store in fp8 (without a scale).
    """
    state, block_weights = {}, _block_weights(model)
    for name, value in model.state_dict().items():
        key = prefix + name
        if name in block_weights:
            layer = key[: -len(".weight")]
            if scaled is None:
                state[key] = value.to(FP8)
                continue
            scale = value.abs().max().float() / FP8_MAX
            state[key] = (value / scale).to(FP8)
            state[f"{layer}.{scaled}"] = scale
            if scaled == "scale_weight":
                state[f"{layer}.scale_input"] = torch.tensor(1.0)
            else:
                state[f"{layer}.comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
        elif name in fp8_extra:
            state[key] = value.to(FP8)
        else:
            state[key] = value.to(torch.bfloat16)
    if scaled == "scale_weight":
        state[prefix + "scaled_fp8"] = torch.empty(0, dtype=FP8)
    save_file(state, str(path), metadata=metadata)
    return path, state


def test_a_bf16_file_is_quantized_as_it_loads(tmp_path):
    model = tiny_flux().to(torch.bfloat16)
    path = save_flux(model, tmp_path / "flux1-dev.safetensors", comfy_prefix=True)
    loaded = load_flux(path, dtype=F32, fp8=True)
    names = fp8_weight_names(loaded)
    assert names == _block_weights(model) and len(names) == 2 * 10 + 2 * 3  # 10 per double block, 3 per single
    state = model.state_dict()
    for name, value in loaded.state_dict().items():
        if name in names:
            q, scale = quantize(state[name])
            assert value.dtype == FP8 and torch.equal(value.view(torch.uint8), q.view(torch.uint8)), name
        elif name.endswith("scale_weight"):
            assert torch.equal(value, quantize(state[name[: -len("scale_weight")] + "weight"])[1])
        else:
            assert value.dtype == F32 and torch.equal(value, state[name].float()), name


@pytest.mark.parametrize("scaled", [None, "scale_weight", "weight_scale"])
def test_fp8_files_load_as_they_are(tmp_path, scaled):
    path, written = comfy_fp8_file(tmp_path / "flux1-dev-fp8.safetensors", tiny_flux(), scaled=scaled,
                                   fp8_extra=("img_in.weight",))
    fp8 = load_flux(path, dtype=F32, fp8=True)
    for name in fp8_weight_names(fp8):
        layer = fp8.get_submodule(name[: -len(".weight")])
        stored = written[COMFY_PREFIX + name]
        assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8)), name  # no requantization
        scale = written.get(f"{COMFY_PREFIX}{name[: -len('weight')]}{scaled}") if scaled else torch.tensor(1.0)
        assert float(layer.scale_weight) == float(scale), name
    # outside the blocks fp8 is dequantized; the same file without fp8 storage computes the same numbers
    assert fp8.img_in.weight.dtype == F32
    assert torch.equal(fp8.img_in.weight, written[COMFY_PREFIX + "img_in.weight"].float())
    plain = load_flux(path, dtype=F32)
    assert not fp8_weight_names(plain)
    assert torch.equal(forward(fp8), forward(plain))


def test_a_scaled_fp8_file_is_the_fp8_weights_times_their_scales(tmp_path):
    model = tiny_flux()
    path, written = comfy_fp8_file(tmp_path / "flux1-dev-fp8-scaled.safetensors", model)
    plain = load_flux(path, dtype=F32).state_dict()
    name = "double_blocks.1.img_attn.qkv.weight"
    key = COMFY_PREFIX + name
    expected = written[key].float() * written[key[: -len("weight")] + "scale_weight"]
    assert torch.equal(plain[name], expected)
    assert float((expected - model.state_dict()[name]).abs().max()) < 0.1 * float(expected.abs().max())


def test_a_weight_that_cannot_be_quantized_is_named(tmp_path):
    model = tiny_flux()
    with torch.no_grad():
        model.single_blocks[1].linear2.weight[0, 0] = float("inf")
    path = save_flux(model, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError, match="broken.safetensors: 'single_blocks.1.linear2.weight': cannot quantize "
                                              "a weight that holds inf or nan"):
        load_flux(path, fp8=True)


def test_our_fp8_model_saves_and_loads_back_as_a_scaled_fp8_file(tmp_path):
    model = tiny_flux()
    quantize_flux_blocks_(model)
    path = save_flux(model, tmp_path / "mine.safetensors")
    loaded = load_flux(path, fp8=True)
    assert all(torch.equal(a.view(torch.uint8) if a.dtype == FP8 else a, b.view(torch.uint8) if b.dtype == FP8 else b)
               for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert torch.equal(forward(model), forward(loaded))


def _edit(state, **changes):
    out = dict(state)
    for key, value in changes.items():
        key = COMFY_PREFIX + key.replace("__", ".")
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    return out


QKV = "double_blocks__0__img_attn__qkv"


@pytest.mark.parametrize("change, metadata, message", [
    ({f"{QKV}__weight": torch.zeros(192, 64, dtype=torch.float8_e5m2)}, None,
     "'model.diffusion_model.double_blocks.0.img_attn.qkv.weight' is float8_e5m2, which the trainer does not read"),
    ({f"{QKV}__scale_weight": torch.ones(192)}, None,
     r"'model.diffusion_model.double_blocks.0.img_attn.qkv.scale_weight' has shape \[192\]: the trainer reads one "
     r"scale per weight \(shape \[\] or \[1\]\), not one per channel or block"),
    ({f"{QKV}__weight_scale": torch.tensor(1.0)}, None, "has two scales"),
    ({"double_blocks__0__img_attn__norm__scale_weight": torch.tensor(1.0)}, None,
     "scales 'model.diffusion_model.double_blocks.0.img_attn.norm.weight', which the file does not have"),
    ({f"{QKV}__scale_weight": torch.tensor(float("nan"))}, None, "is nan; a weight scale must be finite and > 0"),
    ({f"{QKV}__weight": torch.zeros(192, 64, dtype=torch.int8)}, None, "is stored as I8; FLUX weights must be one of"),
    ({f"{QKV}__comfy_quant": torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8),
      f"{QKV}__weight": torch.zeros(192, 32, dtype=torch.uint8)}, None,
     "'model.diffusion_model.double_blocks.0.img_attn.qkv' is quantized as 'nvfp4', which the trainer cannot read"),
    ({}, {"_quantization_metadata": json.dumps({"layers": {COMFY_PREFIX + "single_blocks.1.linear2": {
        "format": "mxfp8"}}})}, "'model.diffusion_model.single_blocks.1.linear2' is quantized as 'mxfp8'"),
])
def test_unusable_fp8_files_are_refused_before_loading(tmp_path, change, metadata, message):
    _, state = comfy_fp8_file(tmp_path / "base.safetensors", tiny_flux())
    path = tmp_path / "odd.safetensors"
    save_file(_edit(state, **change), str(path), metadata=metadata)
    for fp8 in (True, False):
        with pytest.raises(CheckpointError, match=message) as caught:
            load_flux(path, fp8=fp8)
        assert str(caught.value).startswith("odd.safetensors: ")
        assert "use the bf16 flux1-dev.safetensors" in str(caught.value)
