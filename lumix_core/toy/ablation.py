"""The paper's ablation and the small-data curve at toy scale: ``python -m lumix_core.toy.ablation --out DIR``.

Stage-2 runs on one frozen stage-1 backbone (default: the shipped one), with the same steps,
batch, learning rate and rank; only the setting named in the row changes:

* ablation, on the largest training set, two training seeds for each of (a), (b) and (c):
  (a) QBA + Tensor LoRA (the LumiX recipe);
  (b) independent per-map LoRAs -- no query broadcast, G1 held block-diagonal, so map i's
      adapter reads only map i (the maps meet only through the shared noise and prompt);
  (c) Tensor LoRA without QBA (maps mix through G1 only; each attends with its own queries);
* small-data curve: (a) on the first 50, 200 and 800 scenes of the same stream.

``--objective`` picks the stage-2 objective of every run: ``flow-matching`` (the multi-step
adapter's recipe, :class:`Stage2Settings`) or ``one-step`` (the one-step decomposition
adapter's recipe, :data:`ONE_STEP_SETTINGS`: photo decompositions only, no caption, one model
call). One-step runs have no generation to score; their table shows decomposition only.

Every run is scored on the same held-out scenes and seeds (:mod:`lumix_core.toy.evaluate`):
decomposition (color pinned, no caption) against ground truth, and the physical coherence
of maps generated from the caption alone. Each run writes ``DIR/run_<name>/scores.json``;
``--runs a,b`` runs only those (so two processes can share a 2-core machine), and
``--report`` renders the table from whatever runs are in DIR into ``DIR/ablation.md`` (and
``--doc``). Whatever the numbers are, they are printed as they come out.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..io.files import write_text_atomically
from ..model.checkpoint import OBJECTIVE_FLOW_MATCHING, OBJECTIVE_ONE_STEP, inspect_adapter
from ..train.fit import FINAL_ADAPTER
from .model import BACKBONE_FILE, TEXT_FILE, WEIGHTS_DIR, ToyLumiX
from .recipe import ONE_STEP_SETTINGS, Stage2Settings, fit_adapter, prepare_cache, write_maps_dataset
from .reproduce import _progress, check_empty_folder
from .scoring.held_out import EvalSettings, held_out_scenes
from .scoring.map_scores import evaluate_decomposition, evaluate_generation
from .scoring.references import reference_scores
from .seed_streams import EVAL_DATA_SEED
from .text import ToyTextEncoder

log = logging.getLogger("lumix.toy")

CURVE_SIZES = (50, 200, 800)
SCORES_FILE = "scores.json"
#: Marks a folder as an ablation's own: only such a folder (or an empty one) is written into again.
MARKER = "lumix_ablation.json"


@dataclass(frozen=True)
class Run:
    name: str
    label: str
    share_query: bool
    independent_maps: bool
    scenes: int = max(CURVE_SIZES)
    seed: int = 0


_A = dict(share_query=True, independent_maps=False)
_B = dict(share_query=False, independent_maps=True)
PLAN: tuple[Run, ...] = (
    Run("a", "(a) QBA + Tensor LoRA", **_A),
    Run("a_seed1", "(a) QBA + Tensor LoRA, seed 1", **_A, seed=1),
    Run("b", "(b) independent per-map LoRAs (no QBA, block-diagonal G1)", **_B),
    Run("b_seed1", "(b) independent per-map LoRAs, seed 1", **_B, seed=1),
    Run("c", "(c) Tensor LoRA without QBA", share_query=False, independent_maps=False),
    Run("c_seed1", "(c) Tensor LoRA without QBA, seed 1", share_query=False, independent_maps=False, seed=1),
    *(Run(f"a{n}", f"(a) on {n} scenes", **_A, scenes=n) for n in CURVE_SIZES if n != max(CURVE_SIZES)),
)

DEC_COLUMNS = (("normal_angular_error_deg", "normal error (deg) ↓", 1), ("depth_abs_rel", "depth AbsRel ↓", 3),
               ("albedo_si_mse", "albedo si-MSE ↓", 4), ("irradiance_si_mse", "irradiance si-MSE ↓", 4),
               ("reads_photo_depth", "reads photo, depth ↑", 2), ("reads_photo_normal", "reads photo, normal ↑", 2))
GEN_COLUMNS = (("recompose_error", "generation recompose error ↓", 3),
               ("depth_normal_error_deg", "generation depth↔normal (deg) ↓", 1))


def run_one(out: Path, weights: Path, run: Run, stage2: Stage2Settings, evaluation: EvalSettings) -> dict:
    """Train and score one run into ``out/run_<name>`` (its own dataset and cache)."""
    folder = out / f"run_{run.name}"
    if (folder / SCORES_FILE).is_file():
        log.info("run %s: already done", run.name)
        return json.loads((folder / SCORES_FILE).read_text(encoding="utf-8"))
    text = ToyTextEncoder.load(weights / TEXT_FILE)
    settings = replace(stage2, scenes=run.scenes, seed=run.seed, share_query=run.share_query,
                       independent_maps=run.independent_maps, holdout=min(stage2.holdout, run.scenes // 10))
    adapter = folder / "stage2" / FINAL_ADAPTER
    if adapter.is_file() and inspect_adapter(adapter).metadata.get("lumix.train.step") == str(settings.steps):
        log.info("run %s: trained before (%s), scoring it", run.name, adapter)  # e.g. the process died in scoring
        seconds = float("nan")
    else:
        write_maps_dataset(folder / "data", run.scenes, settings.data_seed)
        cache = prepare_cache(folder / "data", folder / "cache", text)
        log.info("run %s: %s, %d scenes, %d steps", run.name, run.label, run.scenes, settings.steps)
        t = time.perf_counter()
        adapter = fit_adapter(cache, weights / BACKBONE_FILE, folder / "stage2", settings,
                              on_step=_progress(f"run {run.name}", 100, settings.steps), text=text).adapter_path
        seconds = time.perf_counter() - t
    model = ToyLumiX.load(weights, adapter=adapter)  # QBA on/off and the objective read from its metadata
    scenes = held_out_scenes(evaluation.scenes)
    scores = {"run": asdict(run), "stage2": asdict(settings), "stage2_s": seconds,
              "decomposition": evaluate_decomposition(model, scenes, evaluation),
              "generation": {} if model.one_step else evaluate_generation(model, scenes, evaluation)}
    write_text_atomically(folder / SCORES_FILE, json.dumps(scores, indent=1, sort_keys=True) + "\n")
    log.info("run %s: %.0f s, %s", run.name, seconds,
             {k: round(scores["decomposition"][k], 4) for k, *_ in DEC_COLUMNS})
    return scores


def _cell(scores: Optional[dict], key: str, digits: int) -> str:
    """``mean ± standard error over held-out scenes`` (no ± where the spread is 0, e.g. ground truth)."""
    if not scores or key not in scores:
        return "–"
    sem = scores.get(f"{key}_sem", 0.0)
    text = f"{scores[key]:.{digits}f}"
    return text + (f" ± {sem:.{digits}f}" if sem and sem >= 10 ** -digits else "")


def _row(label: str, dec: Optional[dict], gen: Optional[dict], seconds: Optional[float], generation: bool) -> str:
    cells = [label] + [_cell(dec, k, d) for k, _, d in DEC_COLUMNS]
    cells += [_cell(gen, k, d) for k, _, d in GEN_COLUMNS] if generation else []
    cells.append(f"{seconds:.0f}" if seconds is not None and seconds == seconds else "–")
    return "| " + " | ".join(cells) + " |"


def _header(generation: bool) -> str:
    names = [n for _, n, _ in DEC_COLUMNS + (GEN_COLUMNS if generation else ())]
    return "| setting | " + " | ".join(names) + " | stage-2 wall time (s) |\n" + "|---" * (len(names) + 2) + "|"


def render_markdown(results: dict[str, dict], refs: dict, meta: dict) -> str:
    """The ablation and small-data tables; one-step runs (``meta['objective']``) have no generation columns."""
    generation = meta["objective"] != OBJECTIVE_ONE_STEP
    if generation:
        recipe = (f"flow matching, photo-conditioning probability {meta['photo']}. Held-out: {meta['eval_scenes']} "
                  f"scenes (seed stream {EVAL_DATA_SEED}), {meta['sample_steps']} Euler steps; decomposition with the "
                  f"color pinned and no caption (CFG 1), generation from the caption with true CFG {meta['true_cfg']}.")
    else:
        weight = meta.get("one_step_detail_weight") or 0.0
        recipe = (f"the one-step objective ({meta['one_step_loss']} loss spaces"
                  + (f", normal detail weight {weight:g}" if weight else "") + "), every scene a photo "
                  f"decomposition without caption. Held-out: {meta['eval_scenes']} scenes (seed stream "
                  f"{EVAL_DATA_SEED}), one model call with the color pinned and no caption.")
    lines = [f"## Ablation (toy scale, {meta['objective']} objective)", "", f"Command: `{meta['command']}`", "",
             f"Stage 2: {meta['steps']} steps x {meta['batch_size']} scenes, lr {meta['lr']}, rank {meta['rank']}, "
             f"{recipe} Backbone `{meta['backbone']}`.", "", _header(generation)]
    for run in PLAN:
        if run.name in results and run.scenes == max(CURVE_SIZES):
            r = results[run.name]
            lines.append(_row(run.label, r["decomposition"], r["generation"], r["stage2_s"], generation))
    labels = {"ground_truth": "ground truth (the renders' own maps)",
              "ground_truth_vae": "ground truth through the toy VAE (the best a toy model can reach)",
              "prior": "prior: the mean maps of 64 training scenes, whatever the photo (the bar for reading it)",
              "trivial": "trivial: camera-facing normals, flat depth, color as albedo, luminance as irradiance",
              "copy_color": "baseline: the color copied into every map",
              "independent_noise": "baseline: one uniform noise image per map"}
    for key, label in labels.items():
        lines.append(_row(label, refs[key], refs[key], None, generation))
    lines += ["", "## Small-data curve (setting a, same steps)", "", _header(generation)]
    for n in CURVE_SIZES:
        name = "a" if n == max(CURVE_SIZES) else f"a{n}"
        if name in results:
            r = results[name]
            lines.append(_row(f"{n} training scenes", r["decomposition"], r["generation"], r["stage2_s"], generation))
    lines += ["", "Cells are mean ± standard error over the held-out scenes (one sampling seed per scene). "
                  "Decomposition: normal = mean angular error vs the true camera-space normals; depth = AbsRel "
                  "after a least-squares scale/shift fit; albedo, irradiance = scale-invariant MSE in linear light; "
                  "reads photo = share of scenes whose depth (normal) map is closer to its own truth than to the "
                  "next scene's (chance ~0.5)."]
    if generation:
        lines[-1] += (" Generation: lumix_core.world.metrics.map_coherence -- albedo x irradiance vs color (relative "
                      "RMS after one exposure fit) and depth-derived vs predicted normals; the baseline rows score "
                      "the references' own maps the same way.")
    lines.append("")
    return "\n".join(lines)


def report(out: Path, weights: Path, stage2: Stage2Settings, evaluation: EvalSettings, command: str) -> str:
    """The markdown table of every finished run in ``out`` (+ references), also to ``out/ablation.md``."""
    results = {}
    for run in PLAN:
        path = out / f"run_{run.name}" / SCORES_FILE
        if path.is_file():
            results[run.name] = json.loads(path.read_text(encoding="utf-8"))
    refs = reference_scores(held_out_scenes(evaluation.scenes), evaluation.seed)
    meta = {"command": command, "objective": stage2.objective, "one_step_loss": stage2.one_step_loss,
            "one_step_detail_weight": stage2.one_step_detail_weight,
            "steps": stage2.steps, "batch_size": stage2.batch_size, "lr": stage2.lr,
            "rank": stage2.rank, "photo": stage2.photo_conditioning_prob, "backbone": str(weights / BACKBONE_FILE),
            "eval_scenes": evaluation.scenes, "sample_steps": evaluation.steps, "true_cfg": evaluation.true_cfg}
    text_md = render_markdown(results, refs, meta)
    write_text_atomically(out / "ablation.md", text_md)
    write_text_atomically(out / "references.json", json.dumps(refs, indent=1, sort_keys=True) + "\n")
    return text_md


def main(argv: Optional[Sequence[str]] = None) -> int:
    de = EvalSettings()
    ap = argparse.ArgumentParser(prog="python -m lumix_core.toy.ablation", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the runs (finished runs in it are kept, not redone)")
    ap.add_argument("--weights", default=str(WEIGHTS_DIR), help="model folder whose backbone + text encoder are used")
    ap.add_argument("--objective", choices=(OBJECTIVE_FLOW_MATCHING, OBJECTIVE_ONE_STEP),
                    default=OBJECTIVE_FLOW_MATCHING,
                    help="stage-2 objective of every run: the multi-step adapter's recipe (flow matching) or the "
                         "one-step decomposition adapter's")
    ap.add_argument("--steps", type=int, default=None, help="stage-2 steps of every run (default: the recipe's)")
    ap.add_argument("--rank", type=int, default=None, help="adapter rank of every run (default: the recipe's)")
    ap.add_argument("--one-step-detail-weight", type=float, default=None,
                    help="--objective one-step: the normal loss's detail weight of every run (default: the "
                         "recipe's; experiments/ablation/README.md's runs used 0)")
    ap.add_argument("--eval-scenes", type=int, default=de.scenes)
    ap.add_argument("--runs", default=",".join(r.name for r in PLAN),
                    help="comma-separated runs to do (default: all): " + ", ".join(r.name for r in PLAN))
    ap.add_argument("--report", action="store_true", help="only render the table of the finished runs")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--doc", default=None,
                    help="also write the table to this markdown file (e.g. experiments/ablation/README.md)")
    ap.add_argument("--overwrite-doc", action="store_true", help="replace an existing --doc file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(max(1, args.threads))
    doc = Path(args.doc) if args.doc else None
    if doc is not None and doc.exists() and not args.overwrite_doc:
        print(f"ablation: {doc} exists; pass --overwrite-doc to replace it", file=sys.stderr)
        return 2
    known = {r.name: r for r in PLAN}
    wanted = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(f"ablation: unknown run(s) {', '.join(unknown)}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    out, weights = Path(args.out), Path(args.weights)
    recipe = ONE_STEP_SETTINGS if args.objective == OBJECTIVE_ONE_STEP else Stage2Settings()
    if args.one_step_detail_weight is not None and args.objective != OBJECTIVE_ONE_STEP:
        print("ablation: --one-step-detail-weight applies to --objective one-step only", file=sys.stderr)
        return 2
    chosen = (("steps", args.steps), ("rank", args.rank), ("one_step_detail_weight", args.one_step_detail_weight))
    stage2 = replace(recipe, **{k: v for k, v in chosen if v is not None})
    evaluation = replace(de, scenes=args.eval_scenes)
    if out.exists() and not (out / MARKER).is_file():
        try:
            check_empty_folder(out)
        except FileExistsError as e:
            print(f"ablation: {e}", file=sys.stderr)
            return 2
    if (out / MARKER).is_file():
        recorded = json.loads((out / MARKER).read_text(encoding="utf-8")).get("stage2")
        if recorded != json.loads(json.dumps(asdict(stage2))):
            print(f"ablation: {out} holds runs made with other stage-2 settings ({recorded}); use the same "
                  "--steps, or a new --out", file=sys.stderr)
            return 2
    if not args.report:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).is_file():
            write_text_atomically(out / MARKER, json.dumps({"stage2": asdict(stage2)}, indent=1) + "\n")
        for name in wanted:
            run_one(out, weights, known[name], stage2, evaluation)
    command = "python -m lumix_core.toy.ablation " + " ".join(sys.argv[1:] if argv is None else argv)
    text_md = report(out, weights, stage2, evaluation, command)
    if doc is not None:
        write_text_atomically(doc, "# Toy-scale ablation and small-data curve\n\n" + text_md)
    print(text_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
