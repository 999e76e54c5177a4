"""LumiX Sampler: KSampler for LumiX latents, with the release schedule and photo pinning.

Sampling itself is ComfyUI's (its samplers, CFG, progress bar, previews, interruption); this
node only adds what LumiX needs around it: the latent's map set must match the adapter's,
the release schedule and the one-step schedule as custom sigmas, the colour slot pinned for
photo latents, and the fixed zero input of one-step adapters.

What happens per adapter objective (``installed_adapter(model).objective``), steps and latent;
the warnings come from the sampling guard (``_patches.LumiXSamplingGuard``), so KSampler and
SamplerCustomAdvanced give the same ones, and sampling always goes ahead as asked:

* multi-step adapter: noise from the seed, shared per scene; more than one step runs normally;
  one step (e.g. scheduler ``lumix_one_step``) runs one step and warns (a blurred average).
* one-step adapter: the noise is disabled (a zero input, as it was trained; the seed is unused).
  Photo latent + one step (``lumix_one_step``) = ``lumix_core.sampling.sampler.decompose_one_step``,
  no warning; more than one step runs them all and warns; a text latent (no pinned photo) runs and warns.
* ``lumix_one_step`` is one step from t = 1 to 0 whatever ``steps`` says, and needs denoise 1.0.
"""
from __future__ import annotations

from ..lumix_core.model.checkpoint import OBJECTIVE_ONE_STEP
from ..lumix_core.sampling.layout import (
    PIN_KEY,
    check_same_maps,
    check_scene_latent,
    maps_of,
    one_step_sigmas,
    pixel_size,
    release_sigmas,
    require_flux_latent,
    tag_maps,
)
from . import _host
from .lumix_model import installed_adapter, pin_model

CATEGORY = "LumiX/Sampling"
#: Scheduler entry that selects lumix_core.sampling.sampler's "release" schedule.
RELEASE_SCHEDULER = "lumix_release"
#: Scheduler entry of one-step adapters: sigmas [1, 0] (lumix_core.sampling.layout.one_step_sigmas).
ONE_STEP_SCHEDULER = "lumix_one_step"


class LumiXSampler:
    DESCRIPTION = (
        "KSampler for LumiX latents: adds the 'lumix_release' and 'lumix_one_step' schedules, photo pinning and "
        "map-set checks. Connect the model from LumiX Load Adapter and a LumiX latent; decode the result with "
        "LumiX Decode Maps."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The sampled N x M maps latent; decode it with LumiX Decode Maps.",)

    @classmethod
    def INPUT_TYPES(cls):
        schedulers = [RELEASE_SCHEDULER, ONE_STEP_SCHEDULER] + _host.scheduler_names()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The LumiX model (FLUX.1 + LumiX Load Adapter)."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                    "tooltip": "Noise seed, shared by the maps of a scene (unused by one-step adapters, whose input "
                               "is zero)."}),
                "steps": ("INT", {
                    "default": 50, "min": 1, "max": 10000,
                    "tooltip": "Sampling steps: 50 for the release, 1 for a one-step adapter ('lumix_one_step' "
                               "always runs one)."}),
                "cfg": ("FLOAT", {
                    "default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "True CFG with the negative prompt: 3.0 for text, 1.0 (no negative pass) for "
                               "photos."}),
                "sampler_name": (_host.sampler_names(), {"default": "euler",
                                                         "tooltip": "Sampling algorithm (the release uses euler)."}),
                "scheduler": (schedulers, {
                    "default": RELEASE_SCHEDULER,
                    "tooltip": "Noise schedule: 'lumix_release' for the published settings, 'lumix_one_step' for "
                               "one-step adapters, or one of ComfyUI's."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompt conditioning, with FluxGuidance 3.5 for text and "
                                                         "1.0 for photos."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt conditioning (unused when cfg is 1)."}),
                "latent_image": ("LATENT", {"tooltip": "A LumiX latent from LumiX Empty Maps Latent (text) or LumiX "
                                                       "Photo To Maps Latent (photo)."}),
                "denoise": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "Amount of denoising: 1.0 for text and photo mode (and always for "
                               "'lumix_one_step')."}),
            }
        }

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
               denoise=1.0):
        import comfy.sample
        import comfy.samplers
        import comfy.utils
        import latent_preview

        samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        require_flux_latent(samples, "LumiX Sampler: the LATENT")
        maps = maps_of(latent_image)
        adapter = installed_adapter(model)
        if adapter is None:
            raise ValueError(
                f"LumiX Sampler: the MODEL ({_host.model_family(model)}) has no LumiX adapter, so it would sample "
                f"{samples.shape[0]} unrelated plain images instead of coherent maps; connect the model through "
                "LumiX Load Adapter (FLUX model -> LumiX Load Adapter -> LumiX Sampler)")
        check_same_maps(maps, adapter.maps, adapter.adapter_name)
        check_scene_latent(latent_image, maps, "LATENT batch")
        work = pin_model(model, latent_image) if latent_image.get(PIN_KEY) else model
        if adapter.objective == OBJECTIVE_ONE_STEP:
            noise = _host.empty_noise(samples)  # the fixed input it was trained on (what DisableNoise gives)
        else:
            noise = comfy.sample.prepare_noise(samples, seed, latent_image.get("batch_index"))
        noise_mask = latent_image.get("noise_mask")
        disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
        sigmas = None
        if scheduler == RELEASE_SCHEDULER:
            width, height = pixel_size(samples)
            sigmas = release_sigmas(width, height, int(steps), float(denoise))
        elif scheduler == ONE_STEP_SCHEDULER:
            if float(denoise) != 1.0:
                raise ValueError(f"LumiX Sampler: the '{ONE_STEP_SCHEDULER}' scheduler is the whole step from t = 1 "
                                 f"to 0, so denoise must be 1.0 (got {denoise}); set denoise to 1.0 or pick another "
                                 "scheduler")
            sigmas = one_step_sigmas()
        if sigmas is not None:
            callback = latent_preview.prepare_callback(work, max(len(sigmas) - 1, 1))
            out = comfy.sample.sample_custom(work, noise, cfg, comfy.samplers.sampler_object(sampler_name), sigmas,
                                             positive, negative, samples, noise_mask=noise_mask, callback=callback,
                                             disable_pbar=disable_pbar, seed=seed)
        else:
            callback = latent_preview.prepare_callback(work, steps)
            out = comfy.sample.sample(work, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                                      denoise=denoise, noise_mask=noise_mask, callback=callback,
                                      disable_pbar=disable_pbar, seed=seed)
        result = dict(latent_image)
        result["samples"] = tag_maps(out, maps)  # a second sampler downstream checks it too
        return (result,)


class LumiXReleaseSchedule:
    DESCRIPTION = (
        "SIGMAS of the released LumiX schedule (FLUX shift from the image size, as in the published script) for "
        "SamplerCustomAdvanced. LumiX Sampler offers the same as its 'lumix_release' scheduler."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sigmas"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("steps + 1 sigmas from 1 to 0 (ComfyUI's sigma is FLUX's t).",)

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 512, "min": 16, "max": 16384, "step": 16}
        return {
            "required": {
                "width": ("INT", {**size, "tooltip": "Image width in pixels (sets the shift)."}),
                "height": ("INT", {**size, "tooltip": "Image height in pixels (sets the shift)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 10000,
                                  "tooltip": "Number of steps (the release uses 50)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Runs only the last part of a longer schedule, like KSampler's "
                                                 "denoise."}),
            }
        }

    def sigmas(self, width, height, steps, denoise):
        return (release_sigmas(int(width), int(height), int(steps), float(denoise)),)


class LumiXOneStepSchedule:
    DESCRIPTION = (
        "SIGMAS [1, 0] of a one-step adapter for SamplerCustomAdvanced: one Euler step from t = 1 to 0. Connect "
        "DisableNoise, KSamplerSelect 'euler' and a guider on the model from LumiX Pin Photo "
        "(workflows/photo_to_intrinsics_fast.json)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sigmas"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("[1.0, 0.0]: one step from t = 1 (the zero input) to t = 0 (the maps), sampled with "
                       "DisableNoise and euler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def sigmas(self):
        return (one_step_sigmas(),)


NODE_CLASS_MAPPINGS = {
    "LumiXSampler": LumiXSampler,
    "LumiXReleaseSchedule": LumiXReleaseSchedule,
    "LumiXOneStepSchedule": LumiXOneStepSchedule,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LumiXSampler": "LumiX Sampler",
    "LumiXReleaseSchedule": "LumiX Release Schedule",
    "LumiXOneStepSchedule": "LumiX One-Step Schedule",
}
