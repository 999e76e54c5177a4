"""LumiX under step-caching packs inside a real ComfyUI (COMFYUI_PATH): TeaCache
(welltop-cn/ComfyUI-TeaCache) and First Block Cache (chengzeyi/Comfy-WaveSpeed).

Both replace FLUX's ``forward_orig`` with their own copy, which still calls the ``dit`` block
replacements LumiX installs, and reuse a step's residual when the input barely changed. At threshold 0
either node returns its input model. At a threshold so small that no step is reused (every block runs
at every step; counted), LumiX's output through their forward must equal LumiX without them bit for bit.
Skips, saying why, without a pack or where it does not import.
"""
import compat_packs as C  # skips the module without COMFYUI_PATH (through lumix_host)
import lumix_host as H
import pytest
import torch

from lumix_core.maps import RELEASE

#: Below the smallest step either node's widget offers (TeaCache 0.01, First Block Cache 0.001).
NEVER_REUSED = 1e-6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return H.models_folder(tmp_path_factory, "models_lumix_caches")


def teacache(model, threshold):
    node = C.other_pack("teacache", needs=("diffusers",))["TeaCache"]
    return H.call_node(node, model=model, model_type="flux", rel_l1_thresh=threshold, start_percent=0.0,
                       end_percent=1.0, cache_device="cpu")[0]


def first_block_cache(model, threshold):
    node = C.other_pack("wavespeed")["ApplyFBCacheOnModel"]
    return H.call_node(node, model=model, object_to_patch="diffusion_model", residual_diff_threshold=threshold,
                       start=0.0, end=1.0, max_consecutive_cache_hits=-1)[0]


def require_plain_flux_runs(cache):
    """Skip where the pack's cache fails on this ComfyUI for a plain FLUX too: its problem, not LumiX's."""
    flux = H.tiny_flux(seed=6)
    x = {"samples": torch.zeros(1, 16, 8, 8)}
    try:
        C.sample(cache(flux, NEVER_REUSED), x, steps=1)
    except Exception as e:  # noqa: BLE001  (any failure of the other pack on plain FLUX)
        pytest.skip(f"{cache.__name__} fails on this ComfyUI ({H.COMFYUI_PATH}) for a plain FLUX, without LumiX: "
                    f"{type(e).__name__}: {e}")


def text_scene(pack, lumix):
    return lumix, H.maps_latent(pack)


def photo_scene(pack, lumix):
    """A photo pinned in the color slot: inside the model call that slot runs at timestep 0."""
    (latent,) = pack["LumiXPhotoToMapsLatent"]().encode(torch.rand(1, 64, 64, 3), H.tiny_vae(), RELEASE.to_string())
    return pack["LumiXPinPhoto"]().pin(lumix, latent)[0], latent


@pytest.mark.parametrize("scene", [text_scene, photo_scene], ids=["text", "photo"])
@pytest.mark.parametrize("cache", [teacache, first_block_cache], ids=["teacache", "first-block-cache"])
def test_a_step_cache_that_reuses_nothing_leaves_lumix_bit_identical(pack, models, monkeypatch, cache, scene):
    require_plain_flux_runs(cache)
    lumix = H.load_lumix(pack, H.tiny_flux(seed=6))
    model, x = scene(pack, lumix)
    assert cache(model, 0.0) is model  # threshold 0: the node hands its input back
    cached = cache(model, NEVER_REUSED)
    assert cached is not model
    truth = C.sample(model, x)
    calls = H.counted_blocks(model, monkeypatch)
    ours = C.sample(cached, x)
    print(f"{cache.__name__} at {NEVER_REUSED} + LumiX ({scene.__name__}) vs LumiX, 4 euler steps: "
          f"max abs {C.diff(ours, truth)[0]:.3g}")
    assert calls == ["double", "single"] * 4  # every block at every step (cond + uncond batched): nothing reused
    assert torch.equal(ours, truth)


@pytest.mark.parametrize("cache, threshold", [(teacache, 0.4), (first_block_cache, 0.12)],
                         ids=["teacache", "first-block-cache"])
def test_a_reusing_step_cache_costs_lumix_what_it_costs_flux(pack, models, monkeypatch, cache, threshold):
    """At the packs' FLUX settings a step's residual is reused for the whole batch (the maps of a scene skip
    together), and LumiX's deviation from uncached LumiX is of the order of plain FLUX's from uncached FLUX."""
    require_plain_flux_runs(cache)
    flux = H.tiny_flux(seed=6)
    lumix = H.load_lumix(pack, flux)
    x = H.maps_latent(pack)
    plain = C.diff(C.sample(cache(flux, threshold), x, steps=12), C.sample(flux, x, steps=12))
    truth = C.sample(lumix, x, steps=12)
    calls = H.counted_blocks(lumix, monkeypatch)
    ours = C.diff(C.sample(cache(lumix, threshold), x, steps=12), truth)
    reused = 12 - calls.count("single")  # a reused step skips the single blocks (First Block Cache runs double 0)
    print(f"{cache.__name__} at {threshold}, 12 steps: {reused} reused; max rel deviation LumiX {ours[1]:.3g}, "
          f"plain FLUX {plain[1]:.3g}")
    assert reused > 0
    assert 0 < ours[1] <= 4 * plain[1]
