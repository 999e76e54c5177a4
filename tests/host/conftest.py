"""Fixtures shared by the host tests (a real ComfyUI from ``COMFYUI_PATH``, see ``lumix_host``)."""
import pytest


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """The pack loaded as ComfyUI loads it: ``{node name: class}``."""
    import lumix_host as H  # imported here: without COMFYUI_PATH, importing it skips the test

    return H.pack_classes(tmp_path_factory)
