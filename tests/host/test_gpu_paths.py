"""LumiX on the paths a GPU user takes, inside a real ComfyUI (COMFYUI_PATH): torch.compile (TorchCompileModel
before or after LumiX Load Adapter), re-created models (``clone(force_deepcopy=True)``), ComfyUI's memory
manager, and the map-set tag through stock latent nodes.

torch.compile runs with the ``aot_eager`` backend (the node's 'inductor' takes minutes on a CPU; Dynamo's
tracing, guards and caches, which these tests are about, are the same) and with ComfyUI's SDPA attention as
on a GPU: on a CPU ComfyUI picks an attention by free memory, a graph break per block for any model.
Everything runs inside ``torch.inference_mode()``, as ComfyUI runs its nodes.
"""
import inspect

import compat_packs as C  # skips the module without COMFYUI_PATH (through lumix_host)
import lumix_host as H
import pytest
import torch

# isort: split
import comfy.ldm.flux.math  # noqa: E402
import comfy.ldm.modules.attention  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402

import nodes as comfy_nodes  # noqa: E402  (ComfyUI's nodes.py)
from lumix_core.maps import RELEASE  # noqa: E402

try:
    from comfy_extras.nodes_torch_compile import TorchCompileModel  # noqa: E402
except ImportError:  # pragma: no cover - every supported host has it
    TorchCompileModel = None

FORCE_DEEPCOPY = "force_deepcopy" in inspect.signature(comfy.model_patcher.ModelPatcher.clone).parameters


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = H.models_folder(tmp_path_factory, "models_lumix_gpu_paths")
    H.write_adapter(folder / "other.safetensors", seed=7)
    return folder


@pytest.fixture()
def gpu_like(monkeypatch):
    """SDPA attention as on a GPU, torch.compile on aot_eager, and an empty Dynamo cache around each test."""
    monkeypatch.setattr(comfy.ldm.flux.math, "optimized_attention", comfy.ldm.modules.attention.attention_pytorch)
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, backend=None, **k: real(*a, backend="aot_eager", **k))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(model):
    return H.call_node(TorchCompileModel, model=model, backend="inductor")[0]


def latent(pack, maps=RELEASE.to_string()):
    return H.maps_latent(pack, maps=maps, size=32)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_lumix_adds_no_graph_break_to_flux(pack, tmp_path, gpu_like):
    """9 + 9 blocks: more than Dynamo's recompile limit (8), which per-block frames of a patch would hit."""
    H.write_adapter(tmp_path / "full.safetensors", doubles=9, singles=9)
    H.register_models_dir(tmp_path)
    flux = H.tiny_flux(seed=1, depth=9, depth_single_blocks=9)
    patched = H.load_lumix(pack, flux, "full.safetensors")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(10, 16, 4, 4, generator=g), torch.rand(10, generator=g)
    ctx, y = torch.randn(10, 8, H.CONTEXT, generator=g), torch.randn(10, H.POOLED, generator=g)
    counts = {}
    for name, options in (("plain", {}), ("lumix", patched.model_options["transformer_options"])):
        torch._dynamo.reset()
        with torch.inference_mode():
            ex = torch._dynamo.explain(flux.model.diffusion_model)(
                x, t, ctx, y, guidance=torch.full((10,), 3.5), transformer_options=dict(options, cond_or_uncond=[1, 0]))
        counts[name] = (ex.graph_count, ex.graph_break_count)
    print(f"9 + 9 blocks, (graphs, graph breaks): {counts}")
    assert counts["lumix"] == counts["plain"] == (1, 0)


@pytest.mark.skipif(TorchCompileModel is None, reason="this ComfyUI has no TorchCompileModel")
def test_torch_compile_model_before_or_after_lumix_equals_eager(pack, models, gpu_like):
    flux = H.tiny_flux(seed=1)
    x, x4 = latent(pack), latent(pack, "albedo,color,depth,normal")
    H.write_adapter(models / "four.safetensors", maps=RELEASE.parse("albedo,color,depth,normal"), seed=3)
    eager = {"1.0": C.sample(H.load_lumix(pack, flux), x), "0.5": C.sample(H.load_lumix(pack, flux, strength=0.5), x),
             "other": C.sample(H.load_lumix(pack, flux, "other.safetensors"), x), "plain": C.sample(flux, x),
             "four": C.sample(H.load_lumix(pack, flux, "four.safetensors"), x4)}
    base = compiled(flux)  # TorchCompileModel before LumiX Load Adapter, one node for every run below
    runs = [("compile, LumiX 1.0", C.sample(H.load_lumix(pack, base), x), eager["1.0"]),
            ("compile, LumiX 0.5", C.sample(H.load_lumix(pack, base, strength=0.5), x), eager["0.5"]),
            ("compile, another adapter", C.sample(H.load_lumix(pack, base, "other.safetensors"), x), eager["other"]),
            ("compile, four maps", C.sample(H.load_lumix(pack, base, "four.safetensors"), x4), eager["four"]),
            ("LumiX 0.5, then compile", C.sample(compiled(H.load_lumix(pack, flux, strength=0.5)), x), eager["0.5"]),
            ("the compiled plain model", C.sample(base, x), eager["plain"]),
            ("compile, LumiX 1.0 again", C.sample(H.load_lumix(pack, base), x), eager["1.0"])]
    for name, got, want in runs:
        print(f"{name}: relative difference to eager {rel(got, want):.2g}")
        assert rel(got, want) <= 1e-5, name
    assert rel(eager["1.0"], eager["0.5"]) > 1e-3 and rel(eager["1.0"], eager["plain"]) > 1e-3


def _recreatable_flux(seed):
    """A tiny FLUX whose patcher can be re-created, as a loader's ``cached_patcher_init`` allows."""
    def make(seed, disable_dynamic=False):
        return H.tiny_flux(seed=seed)

    model = make(seed)
    model.cached_patcher_init = (make, (seed,))
    return model


@pytest.mark.skipif(not FORCE_DEEPCOPY, reason="this ComfyUI's ModelPatcher.clone has no force_deepcopy")
def test_a_re_created_model_keeps_a_lora_stacked_with_lumix(pack, models, tmp_path):
    lora = C.random_lora(H.tiny_flux(seed=4))
    name = C.write_lora(tmp_path, lora)
    x = latent(pack)
    truth = C.sample(H.load_lumix(pack, C.merged_flux(4, lora)), x)
    for order, model in (("LoRA, LumiX", H.load_lumix(pack, C.with_lora(_recreatable_flux(4), name))),
                         ("LumiX, LoRA", C.with_lora(H.load_lumix(pack, _recreatable_flux(4)), name))):
        clone = model.clone(force_deepcopy=True)
        assert clone.model is not model.model
        got = C.sample(clone, x)
        print(f"{order}, clone(force_deepcopy=True): max |clone - truth| = {(got - truth).abs().max().item():.3g}")
        assert torch.equal(got, truth), order


def test_comfyui_memory_manager_counts_the_adapter(pack, models):
    flux = H.tiny_flux(seed=2)
    patched = H.load_lumix(pack, flux)
    owners = {id(m): m for m in patched.model_patches_models()}
    assert len(owners) == 1  # one patcher for every block patch
    owner = next(iter(owners.values()))
    adapter = owner.model
    assert type(adapter).__name__ == "LumiXAdapter"
    assert owner.model_size() == sum(p.numel() * p.element_size() for p in adapter.parameters())
    again = H.load_lumix(pack, H.tiny_flux(seed=3))  # same file: the same adapter object and patcher
    assert {id(m) for m in again.model_patches_models()} == set(owners)
    C.sample(patched, latent(pack))
    loaded = [m.model for m in comfy.model_management.current_loaded_models]
    assert any(m is owner for m in loaded)


def test_the_map_set_of_a_latent_survives_latent_from_batch_into_a_stock_ksampler(pack, models):
    model = H.load_lumix(pack, H.tiny_flux(seed=1))
    swapped = "irradiance,albedo,color,depth,normal"  # the release's maps in another order
    x = H.maps_latent(pack, 2, swapped, size=32)
    one = comfy_nodes.LatentFromBatch().frombatch(x, 0, 5)[0]  # clones the samples tensor
    assert not hasattr(one["samples"], "lumix_maps") and one["lumix_maps"] == swapped
    with torch.inference_mode(), pytest.raises(ValueError, match="set the latent node's 'maps'"):
        comfy_nodes.KSampler().sample(model, 0, 2, 2.0, "euler", "simple", H.conditioning(1), H.conditioning(2), one)
    right = comfy_nodes.LatentFromBatch().frombatch(latent(pack), 0, 5)[0]
    with torch.inference_mode():
        out = comfy_nodes.KSampler().sample(model, 0, 2, 2.0, "euler", "simple", H.conditioning(1),
                                            H.conditioning(2), right)[0]
    assert out["samples"].isfinite().all()
