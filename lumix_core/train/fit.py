"""``fit``: train the Tensor LoRA factors of a LumiX adapter on a prepared cache.

The FLUX backbone is loaded frozen (:func:`lumix_core.model.flux_io.load_flux`; its block weights in
fp8 with ``--base-dtype fp8``, :mod:`lumix_core.model.fp8`); the adapter is
attached to it (QBA + Tensor LoRA in every block) and only its factors are optimised.
One optimizer step consumes ``batch_size x processes x grad_accum`` scenes; scene order is
a per-epoch permutation from the seed, and each scene's random draws come from its
position in the run (:mod:`lumix_core.train.objective`), so resumption and multi-process
runs reproduce a single uninterrupted process. Multi-GPU: start it with ``torchrun``; the
adapter is wrapped with its forward in :class:`AdapterTrainingModule` so that
DistributedDataParallel averages exactly the adapter's gradients (the frozen 12 B backbone
is not a submodule and is never broadcast).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..io.files import write_text_atomically
from ..latents import PATCH
from ..model.adapter import LumiXAdapter, default_spec
from ..model.checkpoint import META_OBJECTIVE, OBJECTIVE_ONE_STEP, ModelShape, load_adapter, save_adapter
from ..model.flux import Flux
from ..model.flux_io import load_flux, read_flux_header
from ..sampling.denoiser import FluxDenoiser, TextConditioning
from .block_swap import check_blocks_to_swap, swap_blocks
from .cache import LatentCache
from .config import ConfigError, FitConfig, config_to_dict, resume_config
from .curves import EVALUATIONS, METRICS, write_curves
from .distributed import DistContext, barrier, init_distributed, mean_across, shutdown
from .folders import check_new_folder, is_unused_dir, remove_previous, remove_temp_files
from .lr_schedule import make_scheduler
from .objective import (
    STREAM_INIT,
    DrawSettings,
    SceneDraw,
    draw_scene,
    make_noisy_batch,
    sample_generator,
    scene_losses,
)
from .one_step import make_one_step_batch, one_step_losses
from .state import (
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    restore,
    seed_global_rngs,
    staging_dir,
    write_rng,
)

log = logging.getLogger("lumix.train")

RUN_CONFIG = "train_config.json"  # the resolved config; also marks the folder as a run of ours
RUN_FORMAT = "lumix-train-run"
#: Timesteps of the held-out loss (fixed, so successive evaluations compare like with like).
HOLDOUT_TIMESTEPS = (0.25, 0.5, 0.75)
#: Sample positions of the held-out draws start here, far from any position a run trains on.
HOLDOUT_POSITION = 1 << 40
FINAL_ADAPTER = "adapter.safetensors"
#: Adapter metadata saying whether it was trained with Query-Broadcast Attention (sample it the same way).
META_SHARE_QUERY = "lumix.train.share_query"
VALIDATION_DIR = "validation"


class AdapterTrainingModule(nn.Module):
    """What DDP wraps: the adapter as the only submodule, plus a forward through the frozen FLUX."""

    def __init__(self, model: Flux, adapter: LumiXAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        if model.lumix is None or model.lumix.adapter is not adapter:
            raise ValueError("attach the adapter to the model before wrapping it")
        self.__dict__["_denoise"] = FluxDenoiser(model)  # not registered: frozen weights stay out of DDP

    def forward(self, x_t: Tensor, t: Tensor, txt: Tensor, y: Tensor, guidance: float) -> Tensor:
        return self._denoise(x_t, t, TextConditioning(txt, y), guidance)


@dataclass
class FitResult:
    """Where the run went; ``model``/``adapter`` are the live objects (for inspection in tests)."""

    output: Path
    adapter_path: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # per optimizer step of this call, global mean
    model: Optional[Flux] = None
    adapter: Optional[LumiXAdapter] = None


class DataOrder:
    """Scene index for the ``p``-th sample of a run: a fresh permutation per epoch, from the seed."""

    def __init__(self, num_scenes: int, seed: int) -> None:
        self.n, self.seed = num_scenes, seed
        self._perm = lru_cache(maxsize=4)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(self.n)

    def __call__(self, position: int) -> int:
        return int(self._perm(position // self.n)[position % self.n])


def resolve_precision(config: FitConfig, device: torch.device) -> tuple[torch.dtype, Optional[torch.dtype]]:
    """``(weight dtype, autocast dtype or None)``: bf16 + autocast on CUDA by default, fp32 on CPU."""
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return (torch.bfloat16, torch.bfloat16) if precision == "bf16" else (torch.float32, None)


def check_cache_fits(cache: LatentCache, model: Flux, config: FitConfig) -> None:
    c = model.config
    problems = []
    if cache.latent_channels * PATCH * PATCH != c.in_channels:
        problems.append(f"latent channels {cache.latent_channels} (x{PATCH * PATCH} per token) vs the model's "
                        f"in_channels {c.in_channels}")
    if cache.context_dim != c.context_in_dim:
        problems.append(f"text features {cache.context_dim} vs the model's context_in_dim {c.context_in_dim}")
    if cache.pooled_dim != c.vec_in_dim:
        problems.append(f"pooled features {cache.pooled_dim} vs the model's vec_in_dim {c.vec_in_dim}")
    if problems:
        raise ConfigError(f"the cache {cache.path} was not encoded for this FLUX model: " + "; ".join(problems))
    if config.batch_size > 1:
        shapes = cache.batch_shapes()
        tokens = {s[2] for s in shapes}
        if len({s[:2] for s in shapes}) > 1 or len(tokens) > 1 or (
                config.caption_dropout > 0 and tokens != {int(cache.manifest["empty_text_tokens"])}):
            raise ConfigError(
                f"--batch-size {config.batch_size} needs every scene to have the same latent size and text length "
                f"(cache has {sorted(shapes)} as (h, w, tokens); the empty caption has "
                f"{cache.manifest['empty_text_tokens']} tokens). Use --batch-size 1 with --grad-accum for larger "
                "batches, or prepare with one --size")


def _resolve_config(config: FitConfig, ctx: DistContext, explicit: Optional[set[str]]) -> FitConfig:
    """The effective config (a resumed run's saved settings + the flags that may change);
    refuses an output folder it may not use. Writes nothing: the folder is claimed only
    once every input has loaded (:func:`_claim_output`), so a bad ``--flux`` or cache leaves
    no half-started run behind that a corrected rerun would then refuse."""
    out = Path(config.output)
    if config.resume:
        saved_path = out / RUN_CONFIG
        if not saved_path.is_file():
            why = (" (only the temp copy of a run killed while starting is there; a fresh start cleans it up)"
                   if out.exists() and is_unused_dir(out, RUN_CONFIG) and any(out.iterdir()) else "")
            raise ConfigError(f"--resume: {out} holds no run (no {RUN_CONFIG}){why}; start one without --resume")
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        if saved.get("format") != RUN_FORMAT:
            raise ConfigError(f"{saved_path} is not a lumix-train run config")
        return resume_config(saved["config"], config, explicit)
    if ctx.is_main:
        check_new_folder(out, overwrite=config.overwrite, marker=RUN_CONFIG, what="lumix-train run")
    return config


def _claim_output(config: FitConfig, ctx: DistContext) -> None:
    """Rank 0 (re)writes ``train_config.json``, after deleting a previous run (``--overwrite``)
    or the temp files an interrupted run left (a fresh start into an unused folder, ``--resume``)."""
    if ctx.is_main:
        out = Path(config.output)
        if config.resume:
            removed = remove_temp_files(out)
        else:
            check_new_folder(out, overwrite=config.overwrite, marker=RUN_CONFIG, what="lumix-train run")
            if config.overwrite:
                remove_previous(out, marker=RUN_CONFIG, what="lumix-train run")
            out.mkdir(parents=True, exist_ok=True)
            removed = remove_temp_files(out, marker=RUN_CONFIG)
        if removed:
            log.info("removed %d temp file(s) left by an interrupted run: %s", len(removed),
                     ", ".join(str(p.relative_to(out)) for p in removed))
        _write_run_config(out, config)
    barrier(ctx)


def _write_run_config(out: Path, config: FitConfig) -> None:
    body = {"format": RUN_FORMAT, "config": config_to_dict(config)}
    write_text_atomically(out / RUN_CONFIG, json.dumps(body, indent=2, sort_keys=True) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """After a resume, drop metric lines of steps the checkpoint does not contain."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, AttributeError):
            continue
    write_text_atomically(path, "".join(k + "\n" for k in keep))


def build_adapter(config: FitConfig, model: Flux, cache: LatentCache, device: torch.device) -> LumiXAdapter:
    c = model.config
    spec = default_spec(maps=cache.maps, rank=config.rank, hidden=c.hidden_size, double_blocks=c.depth,
                        single_blocks=c.depth_single_blocks, alpha=config.alpha)
    if config.init_adapter:
        adapter = load_adapter(config.init_adapter, ModelShape(c.hidden_size, c.depth, c.depth_single_blocks),
                               maps=cache.maps, dtype=torch.float32)
        if adapter.spec != spec:
            raise ConfigError(f"--init-adapter has rank {adapter.spec.rank} and alpha {adapter.spec.alpha}; "
                              f"this run asks for rank {spec.rank} and alpha {spec.alpha}: set --rank/--alpha to match")
    else:
        adapter = LumiXAdapter(spec)
        adapter.reset_parameters(sample_generator(config.seed, 0, stream=STREAM_INIT))
    return adapter.to(device=device, dtype=torch.float32).train()


def keep_maps_independent(adapter: LumiXAdapter) -> None:
    """Zero the cross-map entries of every G1 and keep them zero while training.

    Why a gradient mask: with ``G1[i, j] = 0`` for ``i != j`` the Tensor LoRA of map i reads
    only map i, i.e. it is an ordinary rank-R LoRA per map (the "independent LoRAs" ablation).
    Masked entries get zero gradients, so AdamW's moments and its decoupled weight decay
    leave them exactly zero, and a resumed run keeps them zero too.
    """
    for lora in adapter.tensor_loras():
        mask = torch.eye(lora.num_maps, device=lora.G1.device, dtype=lora.G1.dtype)[:, :, None]
        with torch.no_grad():
            lora.G1.mul_(mask)
        lora.G1.register_hook(lambda grad, mask=mask: grad * mask)


#: ``evaluator(model, step) -> {score: value}``: extra held-out scores at each validation, e.g.
#: ground-truth metrics of decompositions (:mod:`lumix_core.toy.scoring.training_scores`). The model has the
#: adapter attached; the evaluator must not change it.
Evaluator = Callable[[Flux, int], dict]


def run_fit(config: FitConfig, *, explicit: Optional[set[str]] = None, decoder=None, progress: bool = False,
            on_step: Optional[Callable[[int, float], None]] = None,
            evaluator: Optional[Evaluator] = None) -> FitResult:
    """Train; returns where the adapter went. ``on_step(step, loss)`` runs after each step (tests)."""
    config.validate()
    ctx = init_distributed(config.device, config.backend)
    try:
        return _Trainer(config, ctx, explicit, decoder, progress, on_step, evaluator).run()
    finally:
        shutdown(ctx)


class _Trainer:
    def __init__(self, config: FitConfig, ctx: DistContext, explicit: Optional[set[str]], decoder,
                 progress: bool, on_step, evaluator: Optional[Evaluator] = None) -> None:
        self.ctx = ctx
        self.config = config = _resolve_config(config, ctx, explicit)
        self.out = Path(config.output)
        self.decoder, self.progress, self.on_step, self.evaluator = decoder, progress, on_step, evaluator
        self.one_step = config.objective == OBJECTIVE_ONE_STEP
        self._pixel_decode = self._loss_decoder()  # refused before anything is loaded or written
        self.cache = LatentCache(config.cache)
        if config.holdout >= len(self.cache):
            raise ConfigError(f"--holdout {config.holdout} leaves no scene to train on (the cache has "
                              f"{len(self.cache)}); hold out fewer scenes")
        self.weight_dtype, self.autocast_dtype = resolve_precision(config, ctx.device)
        if config.blocks_to_swap:  # refused from the header, before minutes of loading
            check_blocks_to_swap(read_flux_header(config.flux)[2], config.blocks_to_swap)
        load_device = torch.device("cpu") if config.blocks_to_swap else ctx.device  # swapped blocks stay there
        self.model = load_flux(config.flux, device=load_device, dtype=self.weight_dtype, fp8=config.base_dtype == "fp8")
        swap_blocks(self.model, config.blocks_to_swap, ctx.device)  # held as self.model.block_swap
        check_cache_fits(self.cache, self.model, config)
        self.adapter = build_adapter(config, self.model, self.cache, ctx.device)
        _claim_output(config, ctx)
        if config.independent_maps:
            keep_maps_independent(self.adapter)
        self.model.attach(self.adapter, share_query=config.share_query)
        self.model.gradient_checkpointing = config.gradient_checkpointing
        module = AdapterTrainingModule(self.model, self.adapter)
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(
                module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        self.module = module
        self._denoise = FluxDenoiser(self.model)  # for evaluations: no DDP wrapper, no gradients
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=config.lr,
                                           betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
                                           weight_decay=config.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, config.warmup_steps, config.steps, config.lr_schedule)
        self.train_scenes = len(self.cache) - config.holdout  # the held-out scenes are the cache's last ones
        self.order = DataOrder(self.train_scenes, config.seed)
        self.draw = DrawSettings(config.timestep_sampler, config.logit_mean, config.logit_std, config.shift_schedule,
                                 config.caption_dropout, config.photo_conditioning_prob)
        self.global_batch = config.batch_size * ctx.world_size * config.grad_accum
        self.step, self.position = 0, 0
        self._empty = None

    def _loss_decoder(self):
        """The differentiable decoder of the one-step pixel losses (None where none is needed)."""
        c = self.config
        if not self.one_step or c.one_step_loss == "latent":
            return None
        decode = getattr(self.decoder, "decode_for_loss", None)
        if decode is None:
            raise ConfigError(f"--one-step-loss {c.one_step_loss} decodes the maps at every step and needs a "
                              "differentiable decoder (the toy VAE has one; FLUX's VAE is not offered for it): "
                              "use --one-step-loss latent")
        return decode

    def _scene_losses(self, v: Tensor, batch) -> Tensor:
        if self.one_step:
            return one_step_losses(v, batch, self.cache.maps, self.config.one_step_loss, self._pixel_decode,
                                   self.config.one_step_detail_weight)
        return scene_losses(v, batch)

    # -- state ---------------------------------------------------------------------------
    def _resume(self) -> None:
        folder = latest_checkpoint(self.out)
        if folder is None:
            log.warning("--resume: %s has no checkpoint yet; starting from step 0", self.out)
            if self.ctx.is_main:
                for name in (METRICS, EVALUATIONS):
                    _trim_metrics(self.out / name, 0)
            return
        state = load_checkpoint(folder, self.adapter, self.ctx.rank)
        restore(state, self.optimizer, self.scheduler, self.ctx.device, log.warning)
        self.scheduler.lr_lambdas[0].total_steps = self.config.steps  # --steps may grow on resume
        self.step = state.step
        self.position = int(state.extra.get("data_order", {}).get("next_position", state.step * self.global_batch))
        if self.ctx.is_main:
            for name in (METRICS, EVALUATIONS):
                _trim_metrics(self.out / name, self.step)
        log.info("resumed from %s (step %d)", folder, self.step)

    def _save(self) -> None:
        stage = staging_dir(self.out, self.step)
        if self.ctx.is_main:
            if stage.exists():  # left over by a crash: start it afresh
                shutil.rmtree(stage)
            stage.mkdir(parents=True)
        barrier(self.ctx)
        write_rng(stage, self.ctx.rank)
        barrier(self.ctx)
        if self.ctx.is_main:
            extra = {"data_order": {"seed": self.config.seed, "num_scenes": self.train_scenes,
                                    "global_batch": self.global_batch, "next_position": self.position,
                                    "rule": "scene(p) = permutation(seed, p // num_scenes)[p % num_scenes]; rank r, "
                                            "micro-batch a takes p = next_position + a*batch*world + r*batch + k"},
                     "world_size": self.ctx.world_size}
            commit_checkpoint(self.out, self.step, self.adapter, self.optimizer, self.scheduler, extra,
                              self.config.keep_checkpoints, self._adapter_metadata())
        barrier(self.ctx)

    def _adapter_metadata(self) -> dict[str, str]:
        return {"lumix.train.step": str(self.step), "lumix.train.base_model": Path(self.config.flux).name,
                "lumix.train.scenes": str(self.train_scenes),
                META_SHARE_QUERY: str(self.config.share_query).lower(),
                "lumix.train.independent_maps": str(self.config.independent_maps).lower(),
                META_OBJECTIVE: self.config.objective}

    # -- data ----------------------------------------------------------------------------
    def _micro_batch(self, micro: int):
        c, ctx = self.config, self.ctx
        base = self.position + micro * c.batch_size * ctx.world_size + ctx.rank * c.batch_size
        positions = [base + k for k in range(c.batch_size)]
        scenes = [self.cache.scene(self.order(p)) for p in positions]
        x0 = torch.stack([s.latents for s in scenes]).to(ctx.device, torch.float32)
        draws = [draw_scene(c.seed, p, tuple(x0.shape[2:]), self.draw) for p in positions]
        batch = (make_one_step_batch(x0, self.cache.maps.query_index) if self.one_step
                 else make_noisy_batch(x0, draws, self.cache.maps.query_index))
        if self._empty is None:
            self._empty = self.cache.empty_conditioning()
        txt = torch.stack([self._empty[0] if d.drop_caption else s.txt for s, d in zip(scenes, draws)])
        y = torch.stack([self._empty[1] if d.drop_caption else s.y for s, d in zip(scenes, draws)])
        return batch, txt.to(ctx.device, torch.float32), y.to(ctx.device, torch.float32)

    # -- loop ----------------------------------------------------------------------------
    def _train_step(self) -> tuple[float, float, float]:
        """One optimizer step; returns (global mean scene loss, gradient norm, learning rate used)."""
        c = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.ctx.device)
        for micro in range(c.grad_accum):
            batch, txt, y = self._micro_batch(micro)
            sync = (self.module.no_sync() if self.ctx.distributed and micro < c.grad_accum - 1
                    else contextlib.nullcontext())
            with sync:
                with torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    v = self.module(batch.x_t, batch.t, txt, y, c.guidance)
                loss = self._scene_losses(v, batch).sum() / (c.batch_size * c.grad_accum)
                loss.backward()
            total += loss.detach()
        params = list(self.adapter.parameters())
        if c.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm))
        else:
            norms = [p.grad.norm() for p in params if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack(norms)))
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.position += self.global_batch
        return float(mean_across(self.ctx, total)), grad_norm, lr

    @torch.no_grad()
    def _holdout_losses(self) -> dict[str, float]:
        """Mean loss of the held-out scenes. Flow matching: at :data:`HOLDOUT_TIMESTEPS` with fixed
        noise per scene, and ``holdout_loss_photo`` with the color pinned clean (decomposition).
        One step: the training loss of the one-step decomposition (nothing random in it)."""
        c, maps = self.config, self.cache.maps
        out: dict[str, float] = {}
        for photo in ((False, True) if maps.size > 1 and not self.one_step else (False,)):
            total = []
            for k in range(self.train_scenes, len(self.cache)):
                scene = self.cache.scene(k)
                x0 = scene.latents[None].to(self.ctx.device, torch.float32)
                if self.one_step:
                    batch = make_one_step_batch(x0, maps.query_index)
                else:
                    g = sample_generator(c.seed, HOLDOUT_POSITION + k)
                    noise = torch.randn(tuple(x0.shape[2:]), generator=g).to(self.ctx.device)
                    draws = [SceneDraw(noise, t, False, photo) for t in HOLDOUT_TIMESTEPS]
                    batch = make_noisy_batch(x0.expand(len(draws), *x0.shape[1:]), draws, maps.query_index)
                n = batch.weight.shape[0]
                txt = scene.txt[None].expand(n, *scene.txt.shape).to(self.ctx.device, torch.float32)
                y = scene.y[None].expand(n, *scene.y.shape).to(self.ctx.device, torch.float32)
                with torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    v = self._denoise(batch.x_t, batch.t, TextConditioning(txt, y), c.guidance)
                total.append(float(self._scene_losses(v, batch).mean()))
            out["holdout_loss_photo" if photo else "holdout_loss"] = float(np.mean(total))
        return out

    def _validate(self) -> None:
        if self.ctx.is_main:
            from .validation import render_validation

            if self.decoder is None:
                self.decoder = _make_decoder(self.config)
            c = self.config
            path = self.out / VALIDATION_DIR / f"step-{self.step:08d}.png"
            render_validation(self.model, self.cache, path, scenes=c.validation_scenes, steps=c.validation_steps,
                              guidance=c.validation_guidance, seed=c.validation_seed, decoder=self.decoder,
                              device=self.ctx.device, autocast_dtype=self.autocast_dtype,
                              text={"lumix.step": str(self.step), META_OBJECTIVE: c.objective},
                              one_step=self.one_step)
            log.info("validation sheet: %s", path)
            scores: dict[str, float] = self._holdout_losses() if c.holdout else {}
            if self.evaluator is not None:
                scores.update(self.evaluator(self.model, self.step))
            if scores:
                with open(self.out / EVALUATIONS, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": self.step, **scores}) + "\n")
                log.info("held-out at step %d: %s", self.step, {k: round(v, 4) for k, v in scores.items()})
            write_curves(self.out)
        barrier(self.ctx)

    def run(self) -> FitResult:
        c = self.config
        seed_global_rngs(c.seed + self.ctx.rank)  # for library code; a resume restores the saved states
        if c.resume:
            self._resume()
        bar = None
        if self.progress and self.ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc="fit", unit="step", dynamic_ncols=True)
        losses: list[float] = []
        metrics = self.out / METRICS
        try:
            while self.step < c.steps:
                t0 = time.perf_counter()
                loss, grad_norm, lr = self._train_step()
                elapsed = time.perf_counter() - t0
                losses.append(loss)
                if self.ctx.is_main:
                    record = {"step": self.step, "loss": loss, "lr": lr,
                              "grad_norm": grad_norm, "step_time_s": elapsed,
                              "scenes_per_s": self.global_batch / elapsed, "time": time.time()}
                    if self.ctx.device.type == "cuda":
                        record["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
                    with open(metrics, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
                        bar.update(1)
                last = self.step == c.steps
                if (c.checkpoint_every and self.step % c.checkpoint_every == 0) or last:
                    self._save()
                if (c.validate_every and self.step % c.validate_every == 0) or last:
                    self._validate()
                if self.on_step is not None:
                    self.on_step(self.step, loss)
        finally:
            if bar is not None:
                bar.close()
        final = self.out / FINAL_ADAPTER
        if self.ctx.is_main:
            save_adapter(self.adapter, final, overwrite=True, extra_metadata=self._adapter_metadata())
            log.info("adapter written: %s", final)
        barrier(self.ctx)
        return FitResult(self.out, final, self.step, losses, self.model, self.adapter)


def _make_decoder(config: FitConfig):
    if config.validation_decoder == "comfy":
        from .comfy_host import ComfyVAEDecoder

        return ComfyVAEDecoder.from_file(config.comfyui, config.vae)
    from .validation import PreviewDecoder

    return PreviewDecoder()
