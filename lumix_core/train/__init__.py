"""Headless trainer for LumiX adapters (Tensor LoRA factors on a frozen FLUX.1).

Two stages, run from ``lumix-train`` / ``python -m lumix_core.train``:

* ``prepare`` (:mod:`.prepare`): read a dataset in the release layout, check every file,
  encode images with the FLUX VAE and captions with CLIP-L + T5 (through a ComfyUI
  checkout, :mod:`.comfy_host`) and write a cache of safetensors shards (:mod:`.cache`).
* ``fit`` (:mod:`.fit`): train the adapter on the cache -- flow matching with shared noise
  per scene, AdamW, resumable pickle-free checkpoints (:mod:`.state`), DDP via torchrun.

Nothing here imports ComfyUI at import time; only ``prepare`` (and the optional ComfyUI
validation decoder) import it, from the checkout the user names: :mod:`.comfy_host` is the one
module of ``lumix_core`` with ``import comfy`` statements, all inside its functions. Training
never imports the synthetic world or the toy: it reads datasets from disk, whatever made them.

May import: lumix_core.maps, lumix_core.latents, lumix_core.io, lumix_core.model, lumix_core.sampling.
"""
