"""``prepare`` through a real ComfyUI checkout (``COMFYUI_PATH``), on files built for the test.

What is real: ComfyUI's loaders and encoders -- ``comfy.utils.load_torch_file``,
``comfy.sd.VAE`` (auto-detecting the FLUX VAE from the file), ``comfy.sd.load_clip`` with
``CLIPType.FLUX``, the FLUX tokenizers shipped with ComfyUI, ``VAE.encode`` /
``CLIP.encode_from_tokens``. What is synthetic: the weights. The VAE file has the full FLUX
VAE architecture with random weights (84 M parameters, ~1 s to build); the CLIP-L and
T5-XXL files are shrunk to width 32 (24 T5 blocks so the file is recognised as T5-XXL),
passed to ``load_clip`` as model options. Then the cache is trained on for two steps with a
tiny FLUX and a validation sheet is decoded with ComfyUI's VAE.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

COMFYUI = os.environ.get("COMFYUI_PATH")
if not COMFYUI:
    pytest.skip("host test: set COMFYUI_PATH to a ComfyUI checkout to run it", allow_module_level=True)
pytest.importorskip("transformers", reason="ComfyUI's tokenizers need 'transformers' (ComfyUI's requirements)")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for train_helpers
from train_helpers import MAPS3, write_dataset  # noqa: E402

from lumix_core.latents import LATENT_SCALE, LATENT_SHIFT  # noqa: E402
from lumix_core.train.comfy_host import ComfyEncoder, ComfyVAEDecoder, import_comfy, load_flux_text_encoders, load_vae  # noqa: E402

TEXT_WIDTH = 32
#: ComfyUI reads CLIP-L's config overrides from ``model_options["model_config"]`` (its long-CLIP hook
#: rebuilds ``clip_l_model_config`` from it) and T5's from ``t5xxl_model_config``.
TINY_TEXT = {
    "model_config": {"hidden_size": TEXT_WIDTH, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "projection_dim": TEXT_WIDTH},
    "t5xxl_model_config": {"d_model": TEXT_WIDTH, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 24},
}


def _random(state: dict, seed: int, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        t = torch.randn(v.shape, generator=g) * 0.05
        if v.ndim == 1 and ("norm" in k) and not k.endswith("bias"):
            t += 1.0
        out[k] = t.to(dtype)
    return out


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    from safetensors.torch import save_file

    comfy = import_comfy(COMFYUI)
    import comfy.ldm.models.autoencoder as ae
    import comfy.text_encoders.flux as flux_te

    root = tmp_path_factory.mktemp("host")
    # FLUX VAE architecture (what comfy.sd.VAE detects for ae.safetensors), random weights.
    dd = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae_model = ae.AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": dd},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": dd})
    save_file(_random(vae_model.state_dict(), 0, torch.float16), str(root / "ae.safetensors"))
    te = flux_te.FluxClipModel(device="cpu", dtype=torch.float32,
                               model_options={**TINY_TEXT, "clip_l_model_config": dict(TINY_TEXT["model_config"])})
    save_file(_random(te.clip_l.transformer.state_dict(), 1), str(root / "clip_l.safetensors"))
    save_file(_random(te.t5xxl.transformer.state_dict(), 2, torch.float16), str(root / "t5xxl_fp16.safetensors"))
    vae = load_vae(comfy, root / "ae.safetensors")
    clip = load_flux_text_encoders(comfy, root / "clip_l.safetensors", root / "t5xxl_fp16.safetensors",
                                   model_options={k: dict(v) for k, v in TINY_TEXT.items()})
    return comfy, root, vae, ComfyEncoder(vae, clip, {"host": "comfyui-test"})


def test_encoder_gives_model_space_latents_and_flux_conditioning(host):
    comfy, root, vae, encoder = host
    images = torch.rand(2, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    latents = encoder.encode_images(images)
    assert latents.shape == (2, 16, 4, 6)
    raw = vae.encode(images)
    # Model space = ComfyUI's own FLUX latent format, and LumiX's constants.
    assert torch.allclose(latents, comfy.latent_formats.Flux().process_in(raw), atol=1e-6)
    assert torch.allclose(latents, (raw - LATENT_SHIFT) * LATENT_SCALE, atol=1e-6)
    txt, pooled = encoder.encode_text(["a small room with a red chair"])
    assert txt.shape == (1, 256, TEXT_WIDTH) and pooled.shape == (1, TEXT_WIDTH)  # T5 padded to 256 tokens
    again, _ = encoder.encode_text(["a small room with a red chair"])
    other, other_pooled = encoder.encode_text(["a bathroom"])
    assert torch.equal(txt, again)
    assert not torch.allclose(txt, other) and not torch.allclose(pooled, other_pooled)


def test_prepare_then_fit_with_comfy_validation_decoding(host, tmp_path):
    from lumix_core.model.flux import Flux, tiny_config
    from lumix_core.model.flux_io import save_flux
    from lumix_core.train.cache import LatentCache
    from lumix_core.train.config import FitConfig, PrepareConfig
    from lumix_core.train.fit import run_fit
    from lumix_core.train.prepare import run_prepare

    comfy, root, vae, encoder = host
    data = write_dataset(tmp_path / "data", ["ai_001", "ai_002"], width=48, height=40)
    report = run_prepare(PrepareConfig(data=str(data), cache=str(tmp_path / "cache"), maps=MAPS3.to_string(),
                                       size="32", cache_dtype="fp32"), encoder=encoder, progress=False)
    assert report.prepared == 2
    cache = LatentCache(tmp_path / "cache")
    scene = cache.scene(0)
    assert scene.latents.shape == (3, 16, 4, 4) and scene.txt.shape == (256, TEXT_WIDTH)
    assert cache.empty_conditioning()[0].shape == (256, TEXT_WIDTH)
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["encoder"] == {"host": "comfyui-test"}

    flux = save_flux(Flux(tiny_config(context_in_dim=TEXT_WIDTH, vec_in_dim=TEXT_WIDTH)), tmp_path / "flux.safetensors")
    config = FitConfig(cache=str(tmp_path / "cache"), flux=str(flux), output=str(tmp_path / "run"), steps=2, rank=2,
                       warmup_steps=0, checkpoint_every=0, validate_every=2, validation_scenes=1, validation_steps=2,
                       device="cpu", gradient_checkpointing=False)
    run_fit(config, decoder=ComfyVAEDecoder(vae))
    import cv2

    sheet = cv2.imread(str(tmp_path / "run" / "validation" / "step-00000002.png"))
    from lumix_core.train.validation import LABEL_HEIGHT

    # VAE-decoded 32x32 pixels per map, enlarged 2x so the map names fit in the label strip
    assert sheet.shape == (LABEL_HEIGHT + 64, 3 * 64 + 2 * 4, 3)
