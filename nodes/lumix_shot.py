"""LumiX shot nodes: decompose a batch of frames as one shot, save a shot as frame-numbered sequences.

LumiX Decompose Shot runs the photo decomposition the other nodes make (LumiX Photo To Maps
Latent -> LumiX Sampler -> LumiX Decode Maps) on ``chunk`` frames at a time, through
``lumix_core.shot.chunks.decompose_shot``, then stabilises the maps over the shot
(``lumix_core.shot.stabilize``). One noise per shot: every frame's latent gets noise index 0,
so ComfyUI draws the same noise for every frame of every chunk. LumiX Save Sequence writes
``lumix_core.io.sequence``'s layout into the output folder.
"""
from __future__ import annotations

from ..lumix_core.conventions import DEFAULT_NORMAL_CONVENTION, conventions_metadata
from ..lumix_core.io.sequence import SEQUENCE_FORMATS, save_sequence
from ..lumix_core.maps import RELEASE, RELEASE_MAPS
from ..lumix_core.shot.chunks import decompose_shot
from ..lumix_core.shot.stabilize import CAMERAS, DEFAULT_CAMERA, check_camera, stabilize_shot
from . import _host
from .lumix_latents import LumiXPhotoToMapsLatent
from .lumix_maps import OUTPUT_TOOLTIPS, LumiXDecodeMaps, _options_inputs
from .lumix_sampler import ONE_STEP_SCHEDULER, RELEASE_SCHEDULER, LumiXSampler

CATEGORY = "LumiX/Shot"


def one_noise_per_shot(latent: dict) -> dict:
    """The LATENT with every item on noise index 0: the frames of a shot share one noise."""
    return dict(latent, batch_index=[0] * int(latent["samples"].shape[0]))


class LumiXDecomposeShot:
    DESCRIPTION = (
        "Decomposes a batch of video frames as one shot: chunks of frames through the photo decomposition with one "
        "noise for the shot, then the maps stabilised over the frames. Connect the model from LumiX Load Adapter, the "
        "FLUX VAE and the frames (Load Video, Get Video Components, or an image batch)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "decompose"
    RETURN_TYPES = ("IMAGE",) * len(RELEASE_MAPS)
    RETURN_NAMES = RELEASE_MAPS
    OUTPUT_TOOLTIPS = tuple(f"{tip[:-1]}; one per frame, in frame order."
                            for tip in OUTPUT_TOOLTIPS[:len(RELEASE_MAPS)])

    @classmethod
    def INPUT_TYPES(cls):
        schedulers = [ONE_STEP_SCHEDULER, RELEASE_SCHEDULER] + _host.scheduler_names()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The LumiX model (FLUX.1 + LumiX Load Adapter)."}),
                "vae": ("VAE", {"tooltip": "The FLUX VAE (ae.safetensors)."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompt conditioning for every frame, with FluxGuidance "
                                                         "1.0 as photos are decomposed."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt conditioning (unused when cfg is 1)."}),
                "frames": ("IMAGE", {"tooltip": "The shot's frames in order, one image each, all the same size."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed of the whole shot (unused by one-step adapters)."}),
                "steps": ("INT", {"default": 1, "min": 1, "max": 10000,
                                  "tooltip": "Sampling steps per frame: 1 with a one-step adapter, 50 for the "
                                             "release."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "True CFG with the negative prompt; 1.0 (no negative pass) for "
                                             "photos."}),
                "sampler_name": (_host.sampler_names(), {"default": "euler",
                                                         "tooltip": "Sampling algorithm (the release uses euler)."}),
                "scheduler": (schedulers, {"default": ONE_STEP_SCHEDULER,
                                           "tooltip": "Noise schedule: 'lumix_one_step' for one-step adapters, "
                                                      "'lumix_release' for the published settings."}),
                "chunk": ("INT", {"default": 4, "min": 1, "max": 4096,
                                  "tooltip": "Frames per sampling pass: memory grows with it, the maps do not "
                                             "change."}),
                "camera": (list(CAMERAS), {"default": DEFAULT_CAMERA,
                                           "tooltip": "moving: blend neighbouring frames along optical flow; "
                                                      "locked-off: one albedo, normal and depth for the shot."}),
                **_options_inputs(),
            }
        }

    def decompose(self, model, vae, positive, negative, frames, seed, steps, cfg, sampler_name, scheduler, chunk,
                  camera, normal_convention=DEFAULT_NORMAL_CONVENTION, depth_far_bright=False):
        import comfy.model_management
        import comfy.utils

        check_camera(camera)
        bar = comfy.utils.ProgressBar(int(frames.shape[0]))

        def one_chunk(batch):
            comfy.model_management.throw_exception_if_processing_interrupted()
            (latent,) = LumiXPhotoToMapsLatent().encode(batch, vae, RELEASE.to_string())
            (sampled,) = LumiXSampler().sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                               one_noise_per_shot(latent))
            decoded = LumiXDecodeMaps().decode(sampled, vae, normal_convention, depth_far_bright)
            return dict(zip(RELEASE_MAPS, decoded))

        maps = decompose_shot(frames, one_chunk, int(chunk), progress=lambda done, total: bar.update_absolute(done))
        comfy.model_management.throw_exception_if_processing_interrupted()
        maps = stabilize_shot(maps, camera)
        return tuple(maps[name] for name in RELEASE_MAPS)


class LumiXSaveSequence:
    DESCRIPTION = (
        "Saves a shot's maps as frame-numbered sequences in the output folder: one multi-layer EXR per frame "
        "<name>.####.exr, and per-map EXR or 16-bit PNG; a sequence that exists is never overwritten (a _v002 folder "
        "is made). Connect LumiX Decompose Shot."
    )
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        optional = {name: ("IMAGE", {"tooltip": f"The shot's {name} frames; not saved when unconnected."})
                    for name in RELEASE_MAPS}
        optional["prompt_text"] = ("STRING", {"default": "", "multiline": True,
                                              "tooltip": "Prompt to record in every frame's metadata."})
        optional["seed"] = ("INT", {"default": -1, "min": -1, "max": 0xFFFFFFFFFFFFFFFF,
                                    "tooltip": "Seed to record in the metadata; -1 records none."})
        return {
            "required": {
                "filename_prefix": ("STRING", {
                    "default": "LumiX/shot",
                    "tooltip": "Sequence name relative to the output folder, its folder and file names; sub-folders "
                               "are allowed, '..' is not."}),
                "start_frame": ("INT", {"default": 1001, "min": 0, "max": 99999999,
                                        "tooltip": "Number of the first frame in the file names."}),
                "save_exr": ("BOOLEAN", {"default": True,
                                         "tooltip": "One multi-layer float32 EXR per frame, <name>.####.exr."}),
                "save_exr_per_map": ("BOOLEAN", {"default": False,
                                                 "tooltip": "One EXR per map and frame, <name>_<map>.####.exr."}),
                "save_png16": ("BOOLEAN", {"default": False,
                                           "tooltip": "One 16-bit PNG per map and frame, <name>_<map>.####.png."}),
                "normal_convention": _options_inputs()["normal_convention"],
                "depth_far_bright": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Set if the connected depth is inverted (far = bright); recorded in the metadata."}),
            },
            "optional": optional,
        }

    def save(self, filename_prefix, start_frame, save_exr, save_exr_per_map, save_png16, normal_convention,
             depth_far_bright, prompt_text="", seed=-1, **maps):
        import folder_paths  # ComfyUI; imported here so the module loads without it

        images = {name: maps[name] for name in RELEASE_MAPS if maps.get(name) is not None}
        formats = [f for f, on in zip(SEQUENCE_FORMATS, (save_exr, save_exr_per_map, save_png16)) if on]
        if not formats:
            raise ValueError("LumiX Save Sequence: no format is switched on; switch on save_exr, save_exr_per_map or "
                             "save_png16")
        seq = save_sequence(images, folder_paths.get_output_directory(), filename_prefix,
                            start_frame=int(start_frame), formats=formats, prompt=prompt_text,
                            seed=None if seed is None or seed < 0 else int(seed),
                            conventions=conventions_metadata(normal_convention, depth_invert=bool(depth_far_bright)))
        first, last = seq.files[0].filename, seq.files[-1].filename
        text = [f"{len(seq.files)} files in {seq.subfolder}/: {first} ... {last}"] + ([seq.note] if seq.note else [])
        if seq.note:
            _host.log.warning("LumiX Save Sequence: %s", seq.note)
        return {"ui": {"text": text}}


NODE_CLASS_MAPPINGS = {
    "LumiXDecomposeShot": LumiXDecomposeShot,
    "LumiXSaveSequence": LumiXSaveSequence,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LumiXDecomposeShot": "LumiX Decompose Shot",
    "LumiXSaveSequence": "LumiX Save Sequence",
}
