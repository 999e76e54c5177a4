"""The synthetic world: ray-cast scenes with exact ground truth, their dataset, the metrics.

* :mod:`.scene` -- what is in a scene, how scenes are sampled and captioned;
* :mod:`.render` -- the ray caster: exact albedo, irradiance, color, depth and normals;
* :mod:`.dataset` -- scenes written in the release's training-data layout
  (``python -m lumix_core.world.dataset``);
* :mod:`.metrics` -- predicted maps scored against ground truth (and, where no truth is
  reported, against each other).

The world knows nothing of the model or of training: anything that produces maps can be scored.
Image sizes follow FLUX's latent rules (:mod:`lumix_core.latents`).

May import: lumix_core.maps, lumix_core.conventions, lumix_core.latents, lumix_core.cli_args, lumix_core.io,
lumix_core.finish.
"""
