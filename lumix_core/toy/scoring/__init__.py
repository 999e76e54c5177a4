"""The toy model's scores, one job per module; ``python -m lumix_core.toy.evaluate`` runs them
all and prints the report.

* :mod:`.held_out` -- the held-out scenes (seed stream 3), their true maps, the sampling settings;
* :mod:`.map_scores` -- decomposition against ground truth, coherence of generated maps, and the
  mean ± standard error every table shows;
* :mod:`.object_checks` -- does a generated object have the named colour and shape?
* :mod:`.light_check` -- does "light from the left" light the left half?
* :mod:`.caption_checks` -- both checks over their prompts, on the model and on the world's truth;
* :mod:`.references` -- what the metrics give without a model (truth, trivial guesses, the prior);
* :mod:`.training_scores` -- the trainer's evaluator: quick decomposition scores during a run;
* :mod:`.steps_sweep` -- decomposition scores and time per photo for each Euler step count.

Part of the unit :mod:`lumix_core.toy`, whose ``May import:`` line applies to every module here.
"""
