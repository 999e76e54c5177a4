"""A toy LumiX: the whole recipe (text -> color backbone, then Tensor LoRA + QBA for the five
maps) at a size that trains on two CPU cores, on the synthetic world of :mod:`lumix_core.world`.

Why: the real recipe needs FLUX.1-dev, a 10 GB text stack and GPUs. The toy keeps every
moving part of it -- a FLUX-architecture backbone (:class:`lumix_core.model.flux.Flux`), flow
matching, shared noise per scene, the trainer's ``prepare``/``fit`` with its Encoder
boundary, QBA and Tensor LoRA -- and swaps only the sizes and the encoders:

* :mod:`.vae`: a fixed linear "VAE" (4 x 4 pixel blocks -> 16 low-frequency DCT coefficients,
  FLUX's latent shape) instead of the FLUX VAE;
* :mod:`.text`: word + position embeddings over the caption grammar instead of CLIP + T5;
* :mod:`.backbone`: a FLUX with hidden 128 and 2 + 2 blocks instead of 3072 and 19 + 38.

The shipped demo model (``weights/``, run by ``lumix demo``) is made by
``python -m lumix_core.toy.reproduce``; ``python -m lumix_core.toy.ablation`` reruns stage 2
for the paper's ablation and the small-data curve (experiments/ablation/README.md).

May import: lumix_core.maps, lumix_core.conventions, lumix_core.latents, lumix_core.cli_args, lumix_core.io,
lumix_core.model, lumix_core.sampling, lumix_core.world, lumix_core.train, lumix_core.shot.
"""
