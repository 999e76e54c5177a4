"""LumiX Decompose Shot and LumiX Save Sequence in a real ComfyUI (COMFYUI_PATH), and the shipped
shot_to_intrinsics workflow run headless from a video file.

Chunking must not change the maps (every frame is decomposed on its own with the shot's one
noise), the progress bar counts the shot's frames, a cancelled queue stops between chunks, and the
sequence lands in ComfyUI's output folder under compositor names without overwriting.
"""
import logging
from pathlib import Path

import lumix_host as H  # skips the module without COMFYUI_PATH
import pytest
import torch

# isort: split
import comfy.model_management as mm  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
from test_lumix_workflows import api_prompt, host, run_prompt  # noqa: E402, F401  (host: the module fixture)

from lumix_core.maps import RELEASE_MAPS  # noqa: E402

pytest.importorskip("cv2", reason="the moving-camera blend needs opencv-python")
COND = H.conditioning(3, guidance=1.0)
FRAMES = torch.rand(5, 32, 48, 3, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = H.models_folder(tmp_path_factory, "models_lumix_shot")  # lumix.safetensors: a multi-step adapter
    H.write_one_step_adapter(folder / "one_step.safetensors", seed=11, g3=0.5)
    return folder


def shot(pack, adapter, *, chunk, camera="none", steps=1, scheduler="lumix_one_step", frames=FRAMES, seed=3):
    model = H.load_lumix(pack, H.tiny_flux(seed=7), adapter)
    with torch.inference_mode():  # as ComfyUI runs every node
        return pack["LumiXDecomposeShot"]().decompose(model, H.tiny_vae(), COND, COND, frames, seed, steps, 1.0,
                                                      "euler", scheduler, chunk, camera)


def test_chunks_do_not_change_the_maps_and_the_outputs_are_frame_aligned(pack, models):
    whole, pairs = shot(pack, "one_step.safetensors", chunk=5), shot(pack, "one_step.safetensors", chunk=2)
    assert len(whole) == len(RELEASE_MAPS)
    for a, b in zip(whole, pairs):
        assert a.shape == (5, 32, 48, 3)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # the color output follows its own frame: frame order is kept
    assert not torch.allclose(whole[RELEASE_MAPS.index("color")][0], whole[RELEASE_MAPS.index("color")][1])


def test_one_noise_per_shot_with_a_multi_step_adapter(pack, models):
    frames = FRAMES[:1].repeat(3, 1, 1, 1)  # the same frame three times: the same noise gives the same maps
    whole = shot(pack, "lumix.safetensors", chunk=3, steps=2, scheduler="lumix_release", frames=frames)
    single = shot(pack, "lumix.safetensors", chunk=1, steps=2, scheduler="lumix_release", frames=frames)
    albedo = whole[0]
    torch.testing.assert_close(albedo[0], albedo[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(single[0], albedo, atol=1e-5, rtol=0)
    other_seed = shot(pack, "lumix.safetensors", chunk=3, steps=2, scheduler="lumix_release", frames=frames, seed=9)
    assert not torch.allclose(other_seed[0], albedo)


def test_locked_off_gives_the_shot_one_albedo_and_moving_keeps_the_frames_apart(pack, models):
    locked = shot(pack, "one_step.safetensors", chunk=2, camera="locked-off")
    moving = shot(pack, "one_step.safetensors", chunk=2, camera="moving")
    for name in ("albedo", "normal", "depth"):
        out = locked[RELEASE_MAPS.index(name)]
        assert torch.equal(out[0], out[-1]), name
    assert not torch.equal(moving[0][0], moving[0][-1])


def test_the_progress_bar_counts_frames_and_a_cancel_stops_between_chunks(pack, models):
    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        shot(pack, "one_step.safetensors", chunk=2)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    shot_updates = [value for value, total in seen if total == 5]  # ComfyUI 0.33 drops updates that come too fast
    assert shot_updates[-1] == 5 and set(shot_updates) <= {2, 4, 5} and shot_updates == sorted(shot_updates)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            shot(pack, "one_step.safetensors", chunk=2)
    finally:
        mm.interrupt_current_processing(False)


def test_save_sequence_writes_compositor_names_into_the_output_folder_and_versions(pack, tmp_path, caplog):
    pytest.importorskip("OpenEXR")
    maps = {k: torch.rand(3, 8, 8, 3) for k in RELEASE_MAPS}
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        node = pack["LumiXSaveSequence"]()
        first = node.save("LumiX/plate", 1001, True, False, True, "opengl", False, prompt_text="a room", seed=3, **maps)
        with caplog.at_level(logging.WARNING, logger="comfyui-lumix"):
            second = node.save("LumiX/plate", 1001, True, False, False, "opengl", False, **maps)
        with pytest.raises(ValueError, match="no format is switched on"):
            node.save("LumiX/plate", 1, False, False, False, "opengl", False, **maps)
    finally:
        folder_paths.set_output_directory(old)
    names = sorted(p.name for p in (tmp_path / "LumiX" / "plate").iterdir())
    assert names[:3] == ["plate.1001.exr", "plate.1002.exr", "plate.1003.exr"]
    assert "plate_normal.1003.png" in names and len(names) == 3 + 3 * len(RELEASE_MAPS)
    assert "plate.1001.exr ... plate_normal.1003.png" in first["ui"]["text"][0]
    assert (tmp_path / "LumiX" / "plate_v002" / "plate_v002.1001.exr").is_file()
    assert "plate_v002/ instead" in second["ui"]["text"][1]
    assert any("plate_v002" in r.getMessage() for r in caplog.records)


def _write_video(path: Path, frames: int = 4, size=(64, 48)) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        g = torch.Generator().manual_seed(1)
        for _ in range(frames):
            pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_the_shot_workflow_runs_from_a_video_to_an_exr_sequence(host, tmp_path):  # noqa: F811 (the fixture)
    pytest.importorskip("av")
    pytest.importorskip("OpenEXR")
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    inputs.mkdir()
    _write_video(inputs / "shot.mp4")
    prompt = api_prompt(host, "shot_to_intrinsics", {("ImageScale", "width"): 64})
    old_in, old_out = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    folder_paths.set_input_directory(str(inputs))
    folder_paths.set_output_directory(str(outputs))
    try:
        run_prompt(prompt, "lumix-shot")
    finally:
        folder_paths.set_input_directory(old_in)
        folder_paths.set_output_directory(old_out)
    written = sorted(p.name for p in (outputs / "LumiX" / "shot").iterdir())
    assert written == [f"shot.{1001 + i}.exr" for i in range(4)]
