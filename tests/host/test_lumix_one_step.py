"""One-step adapters in a real ComfyUI (COMFYUI_PATH): a photo's maps in one model call.

A one-step adapter (``lumix-train fit --objective one-step``; its file carries
``lumix.objective = one-step``) is trained for one deterministic call: the photo pinned clean in
the color slot at t = 0, the other maps fed 0 at t = 1, one Euler step to t = 0. In ComfyUI that
is sigmas [1, 0] with the noise disabled, through LumiX Sampler (scheduler ``lumix_one_step``)
or SamplerCustomAdvanced (DisableNoise + LumiX One-Step Schedule + euler + LumiX Pin Photo).
Both are compared here with ``lumix_core.sampling.sampler.decompose_one_step`` on lumix_core's own
FLUX with the same weights and the same adapter file.

Tolerance: the color slot must be bit-identical to the photo's latent. The other maps are one
model call of two FLUX implementations (the host's fuses ``(1+scale)*x+shift`` into ``addcmul``,
lumix_core does not), so they agree to float32 round-off; the measured maximum is printed.
"""
import logging
import sys
from pathlib import Path

import lumix_host as H  # skips the module without COMFYUI_PATH
import pytest
import torch

# isort: split
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
from comfy_extras import nodes_custom_sampler as custom  # noqa: E402

import nodes as comfy_nodes  # noqa: E402  (ComfyUI's nodes.py)
from lumix_core.latents import latent_in, latent_out  # noqa: E402
from lumix_core.maps import RELEASE  # noqa: E402
from lumix_core.model.checkpoint import load_adapter  # noqa: E402
from lumix_core.model.flux_io import load_flux  # noqa: E402
from lumix_core.sampling.denoiser import FluxDenoiser, TextConditioning  # noqa: E402
from lumix_core.sampling.sampler import decompose_one_step  # noqa: E402

#: Largest |ComfyUI - lumix_core| allowed on the decomposed (not pinned) maps, VAE latent space.
TOLERANCE = 1e-5
#: FluxGuidance 1.0 and no negative pass, as the one-step adapter was trained.
COND = H.conditioning(3, guidance=1.0)
COLOR = RELEASE.index("color")
LOGGER = "comfyui-lumix"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = H.models_folder(tmp_path_factory, "models_lumix_one_step")  # lumix.safetensors: a multi-step adapter
    H.write_one_step_adapter(folder / "one_step.safetensors", seed=11, g3=0.5)
    return folder


def pack_module(pack, name):
    """A module of the pack as ComfyUI loaded it (e.g. ``lumix_model``)."""
    base = sys.modules[pack["LumiXLoadAdapter"].__module__].__name__.rsplit(".", 1)[0]
    return sys.modules[f"{base}.{name}"]


def load(pack, model, name="one_step.safetensors"):
    return H.load_lumix(pack, model, name)


def photo_latent(pack, scenes=2, seed=5):
    photos = torch.rand(scenes, 64, 64, 3, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return pack["LumiXPhotoToMapsLatent"]().encode(photos, H.tiny_vae(), RELEASE.to_string())[0]


def lumix_sampler(pack, model, latent, *, steps=1, scheduler="lumix_one_step", seed=0, denoise=1.0):
    with torch.no_grad():
        return pack["LumiXSampler"]().sample(model, seed, steps, 1.0, "euler", scheduler, COND, COND, latent,
                                             denoise)[0]["samples"]


def custom_advanced(pack, model, latent, *, sigmas=None, noise=None, pin=True):
    """SamplerCustomAdvanced as the fast workflow wires it (DisableNoise, BasicGuider, euler, one-step sigmas)."""
    if pin:
        (model,) = pack["LumiXPinPhoto"]().pin(model, latent)
    if noise is None:
        (noise,) = H.call_node(custom.DisableNoise)
    if sigmas is None:
        (sigmas,) = pack["LumiXOneStepSchedule"]().sigmas()
    (guider,) = H.call_node(custom.BasicGuider, model=model, conditioning=COND)
    (sampler,) = H.call_node(custom.KSamplerSelect, sampler_name="euler")
    with torch.no_grad():
        out, _ = H.call_node(custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                             latent_image=latent)
    return out["samples"]


def reference(flux, adapter_file: Path, latent, tmp_path):
    """``decompose_one_step`` with lumix_core's FLUX on the host model's weights; VAE latent space like
    ComfyUI's output."""
    from safetensors.torch import save_file

    dm = flux.model.diffusion_model
    save_file({k: v.contiguous() for k, v in dm.state_dict().items()}, str(tmp_path / "tiny_flux.safetensors"))
    ref = load_flux(tmp_path / "tiny_flux.safetensors")
    ref.attach(load_adapter(adapter_file))
    txt, extra = COND[0]
    cond = TextConditioning(txt, extra["pooled_output"])
    photo = latent["samples"][COLOR::RELEASE.size]
    with torch.no_grad():
        maps = decompose_one_step(FluxDenoiser(ref), latent_in(photo), RELEASE, cond, guidance=extra["guidance"])
        ref.detach()
        plain = decompose_one_step(FluxDenoiser(ref), latent_in(photo), RELEASE, cond, guidance=extra["guidance"])
    return latent_out(maps), latent_out(plain)


def not_color(x):
    return x[[i for i in range(x.shape[0]) if i % RELEASE.size != COLOR]]


def lumix_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_a_one_step_adapter_loads_like_any_other_and_says_what_it_is(pack, models):
    installed = pack_module(pack, "lumix_model").installed_adapter
    flux = H.tiny_flux(seed=7)
    one, multi = load(pack, flux), load(pack, flux, "lumix.safetensors")
    assert (installed(one).objective, installed(one).adapter_name) == ("one-step", "one_step.safetensors")
    assert installed(multi).objective == "flow-matching"  # a file without lumix.objective: the release's kind
    assert installed(one).maps.to_string() == RELEASE.to_string()


def test_one_step_through_both_samplers_equals_lumix_core(pack, models, tmp_path, caplog):
    flux = H.tiny_flux(seed=7)
    patched = load(pack, flux)
    latent = photo_latent(pack)
    photo = latent["samples"][COLOR::RELEASE.size]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ours = lumix_sampler(pack, patched, latent)
        # lumix_one_step: one step whatever 'steps' says
        other_seed = lumix_sampler(pack, patched, latent, seed=123, steps=50)
        advanced = custom_advanced(pack, patched, latent)
    assert lumix_warnings(caplog) == []  # sampled as trained: nothing to warn about
    expected, plain = reference(flux, models / "one_step.safetensors", latent, tmp_path)
    for name, out in (("LumiX Sampler", ours), ("SamplerCustomAdvanced", advanced)):
        assert out.shape == (10, 16, 8, 8)
        assert torch.equal(out[COLOR::RELEASE.size], photo), name  # bit-exact: the photo's latent
        diff = (not_color(out) - not_color(expected)).abs().max().item()
        print(f"one step, {name} vs lumix_core decompose_one_step: max |diff| over the 8 decomposed maps = {diff:.3g} "
              f"(tolerance {TOLERANCE:g}; values up to {not_color(expected).abs().max().item():.3g})")
        assert diff <= TOLERANCE, (name, diff)
    assert torch.equal(ours, other_seed)  # the noise is disabled: the seed (and the steps widget) change nothing
    assert torch.equal(ours, advanced)  # the two graphs are the same arithmetic
    assert (not_color(expected) - not_color(plain)).abs().max() > 1e-2  # the adapter (non-zero G3) does change the maps


def test_lumix_sampler_feeds_a_one_step_adapter_the_zero_input(pack, models):
    patched = load(pack, H.tiny_flux(seed=7))
    seen = []

    def spy(executor, noise, latent_image, *args, **kwargs):
        seen.append((noise.clone(), args[1].clone()))  # outer_sample(noise, latent, sampler, sigmas, ...)
        return executor(noise, latent_image, *args, **kwargs)

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "test_spy", spy)
    lumix_sampler(pack, patched, photo_latent(pack), seed=9)
    (noise, sigmas), = seen
    assert noise.abs().max() == 0 and sigmas.tolist() == [1.0, 0.0]
    multi = load(pack, H.tiny_flux(seed=7), "lumix.safetensors")
    multi.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "test_spy", spy)
    lumix_sampler(pack, multi, photo_latent(pack), seed=9, steps=2, scheduler="lumix_release")
    assert seen[-1][0].abs().max() > 0.1  # a multi-step adapter still samples from the seed's noise


def test_one_step_adapter_with_several_steps_warns_and_runs_them_all(pack, models, caplog):
    patched = load(pack, H.tiny_flux(seed=8))
    calls = []

    def count(executor, x, t, *args, **kwargs):
        calls.append(x.shape[0])
        return executor(x, t, *args, **kwargs)

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_count", count)
    latent = photo_latent(pack)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = lumix_sampler(pack, patched, latent, steps=4, scheduler="lumix_release")
    (text,) = lumix_warnings(caplog)
    assert text.startswith("LumiX: one_step.safetensors is a one-step adapter (trained for one call: the photo pinned, "
                           "the other maps fed 0 at t = 1), but it is sampled with 4 steps;"), text
    assert text.endswith("sample it in one step: LumiX Sampler with the 'lumix_one_step' scheduler, or "
                         "SamplerCustomAdvanced with DisableNoise and LumiX One-Step Schedule")
    print(text)
    assert len(calls) == 4  # what was asked is what ran
    assert torch.equal(out[COLOR::RELEASE.size], latent["samples"][COLOR::RELEASE.size]) and out.isfinite().all()
    caplog.clear()
    (sigmas,) = pack["LumiXReleaseSchedule"]().sigmas(64, 64, 3, 1.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        custom_advanced(pack, patched, latent, sigmas=sigmas)
    assert [t.split(";")[0] for t in lumix_warnings(caplog)] == [text.split(";")[0].replace("4 steps", "3 steps")]


def test_multi_step_adapter_in_one_step_warns_through_every_sampler(pack, models, caplog):
    patched = load(pack, H.tiny_flux(seed=8), "lumix.safetensors")
    latent = photo_latent(pack)
    wanted = ("LumiX: lumix.safetensors is a multi-step (flow-matching) adapter, sampled here in 1 step: its maps come "
              "out as a blurred average (on the toy, one step is no better than a trivial guess). Use 24-50 steps, or "
              "a one-step adapter (lumix-train fit --objective one-step)")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = lumix_sampler(pack, patched, latent)
    assert lumix_warnings(caplog) == [wanted]
    assert out.isfinite().all()
    print(wanted)
    for run in (lambda: custom_advanced(pack, patched, latent),
                lambda: comfy_nodes.KSampler().sample(patched, 0, 1, 1.0, "euler", "simple", COND, COND, latent, 1.0)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER), torch.no_grad():
            run()
        assert lumix_warnings(caplog) == [wanted]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        lumix_sampler(pack, patched, latent, steps=4, scheduler="lumix_release")
    assert lumix_warnings(caplog) == []  # several steps: as trained


def test_one_step_adapter_without_a_photo_or_with_noise_warns(pack, models, caplog):
    patched = load(pack, H.tiny_flux(seed=8))
    text_latent = H.maps_latent(pack)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = lumix_sampler(pack, patched, text_latent)
    (text,) = lumix_warnings(caplog)
    assert "it decomposes photos, but this latent has no pinned photo (text-to-maps)" in text
    assert "Make the latent with LumiX Photo To Maps Latent" in text and out.isfinite().all()
    print(text)
    caplog.clear()
    latent = photo_latent(pack, scenes=1)
    (pinned,) = pack["LumiXPinPhoto"]().pin(patched, latent)
    with caplog.at_level(logging.WARNING, logger=LOGGER), torch.no_grad():
        comfy_nodes.KSampler().sample(pinned, 0, 1, 1.0, "euler", "simple", COND, COND, latent, 1.0)
    (text,) = lumix_warnings(caplog)
    assert "sampled from random noise instead of the zero input it was trained on" in text
    assert "with SamplerCustomAdvanced connect DisableNoise" in text
    print(text)


def test_the_one_step_scheduler_needs_denoise_one(pack, models):
    patched = load(pack, H.tiny_flux(seed=8))
    with pytest.raises(ValueError, match=r"the 'lumix_one_step' scheduler is the whole step from t = 1 to 0, so "
                                         r"denoise must be 1.0 \(got 0.5\)"):
        lumix_sampler(pack, patched, photo_latent(pack, scenes=1), denoise=0.5)
