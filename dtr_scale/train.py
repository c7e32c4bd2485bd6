"""Training: `python -m dtr_scale.train --config FILE [key.sub=value ...]`.

One loop for every engine (single, DDP, FSDP2, DeepSpeed ZeRO-1/2/3); it runs the same under
torchrun, srun and the deepspeed launcher. `run()` reads top to bottom: `setup` (data, model,
engine, seeds), `resume`, then per step `train_step` (micro-batches, backward, optimizer step,
EMA), log the window's metrics, run the in-loop monitor, `maybe_checkpoint`, and stop cleanly on
preemption.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from . import faults
from .checkpoint import CheckpointManager, prepare_checkpoint_dir, rng_state, set_rng_state
from .checkpoint_meta import fingerprint as run_fingerprint
from .checkpoint_storage import check_reachable
from .config import Config, ConfigError, load_config, to_yaml, validate
from .data import GlobalLoader, LatentLoader, check_data_path
from .errors import UserError, remember_process_group, run_cli
from .export import data_identity
from .in_loop import InLoopMonitor
from .metrics import MetricsLogger, StepStats
from .mfu import mfu, peak_flops
from .models import dit_train_flops
from .objective import Objective, build_objective, check_repa_inputs, dit_from_config
from .parallel.engine import Engine
from .parallel.factory import engine_class
from .parallel.optim import lr_factor
from .parallel.parallelize import CompileWatch, compile_wanted
from .parallel.process_group import DistEnv, init_distributed, local_device, read_dist_env, shutdown
from .preemption import REQUEUE_EXIT_CODE, PreemptionFlag, exit_now, ignore_preemption_signals
from .randomness import rank_streams, training_inputs
from .run_log import LOG_NAME, close_run_logging, setup_run_logging, start_run_log_file
from .threads import configure_threads

log = logging.getLogger("dtr_scale")
NUM_LOG_CLUSTERS = 8  # loss per timestep cluster, the way DTR/ANT users read training


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dtr_scale.train", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    p.add_argument("--resume", default=None, help="auto | none | CHECKPOINT_DIR (overrides checkpoint.resume)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.routing.sharing_ratio=0.6 "
                   "(before, between or after the options)")
    return p.parse_intermixed_args(argv)


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The dotted overrides of a parsed command line, with `--resume` as `checkpoint.resume`."""
    return list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])


def fill_model_shape(cfg: Config, latent_shape: tuple[int, int, int], num_classes: int) -> None:
    """The DiT's shape/class defaults from the data (latent (C, H, W) and class count), checked."""
    m = cfg.model
    channels, height, width = latent_shape
    m.in_channels = m.in_channels or channels
    m.input_size = m.input_size or height
    m.num_classes = m.num_classes or num_classes
    if (m.in_channels, m.input_size) != (channels, height) or height != width:
        raise ConfigError(
            f"model.input_size/in_channels = {m.input_size}/{m.in_channels} do not match the data's "
            f"latent shape {tuple(latent_shape)} (from {cfg.data.path}/dataset.json)"
        )


def build_training(cfg: Config, env: DistEnv, device: torch.device, latent_shape: tuple[int, int, int],
                   num_classes: int) -> tuple[Objective, Engine]:
    """Config → DiT (shaped by the data) → objective → engine, with the same initial weights on
    every rank. The engine says where the DiT is built: whole, or (parallel.meta_init) on the
    meta device / inside zero.Init, and then gives it its weights after sharding."""
    fill_model_shape(cfg, latent_shape, num_classes)
    engine_cls = engine_class(cfg, env, device)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    with engine_cls.init_context(cfg, env, device):
        dit = dit_from_config(cfg)
    objective = build_objective(cfg, dit)
    return objective, engine_cls(objective, cfg, env, device)


def build_loader(cfg: Config, env: DistEnv, pin_memory: bool = False) -> LatentLoader | GlobalLoader:
    """This rank's micro-batches: streamed (epoch | resampled) or by global position (global)."""
    t, d = cfg.train, cfg.data
    if d.mode == "global":
        return GlobalLoader(d.path, t.global_batch_size, rank=env.rank, world_size=env.world_size,
                            grad_accum=t.grad_accum, num_workers=d.num_workers, seed=t.seed,
                            random_flip=d.random_flip, verify_sha256=d.verify_sha256, pin_memory=pin_memory,
                            images=cfg.repa.enabled)
    return LatentLoader(d.path, t.global_batch_size // (env.world_size * t.grad_accum), rank=env.rank,
                        world_size=env.world_size, num_workers=d.num_workers, seed=t.seed, mode=d.mode,
                        shuffle_buffer=d.shuffle_buffer, on_error=d.on_error, verify_sha256=d.verify_sha256,
                        random_flip=d.random_flip, pin_memory=pin_memory, images=cfg.repa.enabled)


def infinite(loader: LatentLoader):
    """Epoch mode ends each pass; training just starts the next one (the loader tracks epochs)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the data loader produced no batch for this rank; check data.path and the batch size")


@dataclass
class Trainer:
    """Everything one training run holds; `step`, the skipped-step count and the two generators
    are what a checkpoint stores besides the engine (see `trainer_state`)."""
    cfg: Config
    env: DistEnv
    device: torch.device
    loader: LatentLoader | GlobalLoader
    objective: Objective
    engine: Engine
    gen_t: torch.Generator  # per-rank timestep stream
    gen_noise: torch.Generator  # per-rank noise stream
    ckpt: CheckpointManager
    config_yaml: str
    flops_per_step: float
    peak_flops: Optional[float]  # this rank's device peak at the run's precision; None = no `mfu`
    stats: StepStats  # the log window's sums and the skipped-step counters, on the device
    batches: Optional[Iterator] = None  # set by `resume`, after the loader position is restored
    step: int = 0  # optimizer steps done (= the 0-based index of the step in progress)

    def trainer_state(self) -> dict:
        return {"step": self.step, "skipped_steps": int(self.stats.skipped_total), "rng": rng_state(),
                "gen_t": self.gen_t.get_state(), "gen_noise": self.gen_noise.get_state(),
                "loader": self.loader.state_dict()}


def setup(cfg: Config, env: DistEnv) -> Trainer:
    """Data, model, objective and engine, with the seeds that make every rank start identical."""
    validate(cfg, world_size=env.world_size)
    prepare_checkpoint_dir(cfg, env)  # usable, room for a checkpoint, no one else's data at stake
    device = local_device(env)
    t = cfg.train
    local_batch = t.global_batch_size // (env.world_size * t.grad_accum)
    loader = build_loader(cfg, env, pin_memory=device.type == "cuda")  # page-locked: non_blocking copies overlap
    objective, engine = build_training(cfg, env, device, loader.latent_shape, loader.num_classes)
    gen_t, gen_noise = rank_streams(t.seed, env.rank)

    config_yaml = to_yaml(cfg)
    ckpt = CheckpointManager(cfg.checkpoint.dir, cfg.checkpoint.keep, env, cfg.checkpoint.async_save)
    trainer = Trainer(cfg, env, device, loader, objective, engine, gen_t, gen_noise, ckpt, config_yaml,
                      flops_per_step=dit_train_flops(objective.dit, local_batch * t.grad_accum),
                      peak_flops=peak_flops(device, t.precision, t.peak_tflops),
                      stats=StepStats(device, NUM_LOG_CLUSTERS))
    faults.install(trainer)  # robustness tests only: a no-op unless their variables are set
    return trainer


def resume(tr: Trainer) -> None:
    """Restore engine, counters, RNG streams and the loader position from `checkpoint.resume`
    (any engine, any world size), then record the run's config."""
    resume_from = tr.ckpt.resolve(tr.cfg.checkpoint.resume)
    if resume_from:  # before anything is written: a checkpoint that does not fit fails cleanly
        state = tr.ckpt.load(resume_from, tr.engine, run_fingerprint(tr.cfg), tr.cfg.data.mode)
        tr.step = state["step"]
        tr.stats.skipped_total.fill_(state["skipped_steps"])
        if "rng" in state:  # same world size: continue every stream exactly
            set_rng_state(state["rng"])
            tr.gen_t.set_state(state["gen_t"])
            tr.gen_noise.set_state(state["gen_noise"])
        else:  # another world size: per-rank streams cannot carry over
            tr.gen_t, tr.gen_noise = rank_streams(tr.cfg.train.seed, tr.env.rank, tr.step)
        tr.loader.load_state_dict(state["loader"])
        if tr.env.is_main:
            print(f"resumed from {resume_from} at step {tr.step}", flush=True)
    if tr.env.is_main:
        config_path = os.path.join(tr.cfg.checkpoint.dir, "config.yaml")
        # The whole config lives in the run folder; the console gets one line pointing at it.
        print(f"resolved config ({tr.env.world_size} rank(s), engine={tr.engine.name}): {config_path}; "
              f"log: {os.path.join(tr.cfg.checkpoint.dir, LOG_NAME)}", flush=True)
    tr.ckpt.record_config(tr.config_yaml, run_fingerprint(tr.cfg), tr.cfg.checkpoint.overwrite)
    if tr.env.is_main:
        start_run_log_file()  # the folder is this run's now: train.log may be written there
    tr.batches = infinite(tr.loader)


def train_step(tr: Trainer) -> None:
    """One optimizer step over `train.grad_accum` micro-batches. A non-finite step is skipped on
    the device (no parameter, moment or EMA change) and counted there (`tr.stats`);
    `check_nonfinite` acts on the counts when a log line or a checkpoint is due."""
    t, device, engine = tr.cfg.train, tr.device, tr.engine
    engine.set_lr_factor(lr_factor(tr.step, t.warmup_steps))
    for micro in range(t.grad_accum):
        x, y, timesteps, noise, drop, images = training_inputs(tr.objective, next(tr.batches), tr.gen_t,
                                                               tr.gen_noise, t.seed, device)
        with engine.accumulate(sync=micro == t.grad_accum - 1):
            extra = () if images is None else (images,)  # REPA's clean images, when the loader yields them
            loss, per_sample = engine.module(x, timesteps, y, noise, drop, *extra)
            engine.backward(loss)
        tr.stats.add_micro_batch(loss, per_sample, tr.objective.timestep_clusters(timesteps, NUM_LOG_CLUSTERS))
    tr.ckpt.wait_for_staging()  # a background save may still be copying what the step changes
    result = engine.step()
    with tr.stats.timing_ema():
        engine.update_ema(t.ema_decay, result.applied)
    tr.stats.add_step(result.grad_norm, result.applied)
    tr.step += 1


def check_nonfinite(tr: Trainer, longest_bad_run: int) -> None:
    """Host read: stop the run when `train.max_consecutive_nonfinite` steps in a row were skipped.
    Called at log and checkpoint steps, so the abort may come up to `train.log_every` steps after
    the limit was reached, but always before a checkpoint (skipped steps change nothing anyway)."""
    t = tr.cfg.train
    if longest_bad_run >= t.max_consecutive_nonfinite:
        raise UserError(
            f"{longest_bad_run} consecutive non-finite steps (train.max_consecutive_nonfinite="
            f"{t.max_consecutive_nonfinite}); stopping without checkpointing the bad state. Lower "
            f"train.lr, set train.grad_clip, or check the data (data errors so far: {tr.loader.data_errors})"
        )


def window_metrics(tr: Trainer) -> dict:
    """Collective: the metrics of the steps since the last log line, averaged over ranks (one
    host read for all of them). Stops the run if too many non-finite steps came in a row."""
    t = tr.cfg.train
    w = tr.stats.read(tr.loader.data_errors, tr.env.world_size)
    if w.skipped and tr.env.is_main:
        log.warning("step %d: %d non-finite step(s) skipped since the last log line", tr.step, w.skipped)
    check_nonfinite(tr, w.longest_bad_run)
    return {
        "loss": w.loss,
        "grad_norm": w.grad_norm,  # applied steps only
        "lr": t.lr * lr_factor(tr.step - 1, t.warmup_steps),
        "img_per_s": t.global_batch_size / w.seconds_per_step,
        "tflops_per_rank": tr.flops_per_step / w.seconds_per_step / 1e12,
        **mfu(tr.flops_per_step, w.seconds_per_step, tr.peak_flops),
        "ema_frac": w.ema_fraction,
        "skipped_steps": w.skipped_total,
        "data_errors": w.data_errors,
        **tr.engine.memory_stats(),
        **w.cluster_losses,
    }


def maybe_checkpoint(tr: Trainer, preempted: bool) -> None:
    """Collective: save every `checkpoint.every` steps, at the last step and on preemption,
    unless the steps since the last log line hit the non-finite limit. The last save is complete
    when this returns, also when writes run in the background (`checkpoint.async`)."""
    last = tr.step == tr.cfg.train.max_steps or preempted
    if tr.step % tr.cfg.checkpoint.every == 0 or last:
        check_nonfinite(tr, int(tr.stats.longest_bad_run))
        tr.ckpt.save(tr.step, tr.engine, tr.trainer_state(), tr.config_yaml, run_fingerprint(tr.cfg))
    if last:
        tr.ckpt.finish()  # the run exits next: wait for a write in flight and commit it


def run(cfg: Config, env: DistEnv) -> int:
    tr = setup(cfg, env)
    resume(tr)
    t = cfg.train
    logger = MetricsLogger(cfg.checkpoint.dir, env.is_main, t.max_steps, tr.step, log_cfg=cfg.log,
                           config=dataclasses.asdict(cfg))
    monitor = InLoopMonitor(cfg, env, tr.device, data_identity(cfg.data.path))
    preempt = PreemptionFlag()
    compile_watch = CompileWatch(compile_wanted(cfg.model.compile, tr.device))  # its cost shows in the next log line
    while tr.step < t.max_steps:
        with tr.stats.timing_step():
            train_step(tr)
        logger.advance()
        if tr.step % t.log_every == 0 or tr.step == t.max_steps:
            logger.log(tr.step, {**window_metrics(tr), **compile_watch.report()})
            tr.stats.new_window()
        in_loop = monitor.maybe_run(tr.step, tr.engine)  # sample grids / FID of the EMA, when due
        if in_loop:
            logger.log(tr.step, in_loop)
        # A collective with a host read: only every `train.preempt_check_every` steps.
        preempted = tr.step % t.preempt_check_every == 0 and preempt.any_rank(tr.device)
        maybe_checkpoint(tr, preempted)
        if preempted:
            done = tr.step == t.max_steps  # nothing left to do: a requeue would only exit again
            if env.is_main:
                print(f"preemption signal received: checkpointed step {tr.step}, " +
                      ("the run is complete, exiting with 0" if done else
                       f"exiting with {REQUEUE_EXIT_CODE} for requeue"), flush=True)
            logger.close()
            return 0 if done else REQUEUE_EXIT_CODE
    logger.close()
    return 0


def check_inputs(args: argparse.Namespace, world_size: int | None = None) -> Config:
    """Everything checkable before the model is built or a process group starts: the config
    (with the batch split when the world size is known), the data (manifest, shard names and
    files, the first sample), the checkpoint folder and the resume path. Every rank runs it (the
    answers are the same), so each exits 2 alone; launch/check_inputs.py runs it at submit time."""
    overrides = config_overrides(args)
    if not os.path.exists(args.config):
        raise ConfigError(f"--config {args.config}: config file not found (checked from {os.getcwd()}); "
                          "pass a YAML file from configs/")
    cfg = validate(load_config(args.config, overrides), world_size=world_size)
    if world_size and world_size > 1 and cfg.parallel.engine == "single":
        raise ConfigError(f"parallel.engine=single cannot run {world_size} processes; "
                          "set parallel.engine=ddp, fsdp or deepspeed")
    manifest = check_data_path(cfg.data.path)
    check_model_fits_data(cfg, manifest)
    check_repa_inputs(cfg, manifest)
    check_reachable(cfg.checkpoint.dir)  # creating it and the test write wait for prepare_checkpoint_dir
    e = cfg.eval
    if e.every and e.ref and not os.path.exists(e.ref):
        raise ConfigError(f"eval.ref={e.ref}: reference not found; pass an ADM .npz, image .npz or folder, "
                          "or leave eval.ref unset to use the training shards")
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "none") and not os.path.isdir(resume):
        raise ConfigError(f"checkpoint.resume={resume}: not a checkpoint directory "
                          "(use auto, none or a run's step_* directory)")
    return cfg


def check_model_fits_data(cfg: Config, manifest) -> None:
    """The model's input size / channels / classes, where given, against the data's manifest."""
    m, (channels, height) = cfg.model, manifest.latent_shape[:2]
    for key, mine, data in (("model.in_channels", m.in_channels, channels), ("model.input_size", m.input_size, height)):
        if mine is not None and mine != data:
            raise ConfigError(f"{key}={mine} does not match the data's latent shape {list(manifest.latent_shape)} "
                              f"(from {cfg.data.path}/dataset.json); leave it unset to take it from the data")
    if m.num_classes is not None and m.num_classes < manifest.num_classes:
        raise ConfigError(f"model.num_classes={m.num_classes}: the data has {manifest.num_classes} classes "
                          f"(from {cfg.data.path}/dataset.json); leave it unset to take it from the data")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    configure_threads()  # before any tensor work: see dtr_scale/threads.py
    checked: list[Config] = []
    code = run_cli(lambda: checked.append(check_inputs(args, read_dist_env().world_size)) or 0)
    if code:
        return code
    env = init_distributed()
    remember_process_group()
    setup_run_logging(checked[0].checkpoint.dir, env.is_main)  # train.log; library chatter off the console
    try:
        # A user error after start-up (bad data met at step N, a refused checkpoint, a non-finite
        # run): one line from rank 0 and exit 2 on every rank; run_cli does not return from that
        # inside a group.
        code = run_cli(run, checked[0], env)
        ignore_preemption_signals()  # checkpointed: a late signal must not change the exit code
    except BaseException:
        log.exception("rank %d failed", env.rank)
        # Exit hard: a clean destroy_process_group could wait on peers that will never arrive.
        sys.stderr.flush()
        os._exit(1)
    shutdown()
    close_run_logging()  # a later run in this process (tests, scripts) opens its own train.log
    return code


if __name__ == "__main__":
    exit_now(main())
