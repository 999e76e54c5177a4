"""Sampling: flow-matching schedules, shared noise, the Euler sampler, scene batches for hosts.

* :mod:`.sampler` -- the release's and FLUX's schedules, one noise per scene, Euler with true
  CFG, pinned maps (the photo in decomposition);
* :mod:`.denoiser` -- the reference FLUX of :mod:`lumix_core.model.flux` as the sampler's
  velocity function;
* :mod:`.layout` -- scene-group batches as a host moves them (map-set tags, noise indices,
  pinned slots, finished images): what the nodes check and translate.

FLUX's latent layout itself is :mod:`lumix_core.latents`.

May import: lumix_core.maps, lumix_core.conventions, lumix_core.latents, lumix_core.model.
"""
