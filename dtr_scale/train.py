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
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from . import faults
from .checkpoint import CheckpointManager, atomic_write_text, rng_state, set_rng_state
from .checkpoint_meta import fingerprint as run_fingerprint
from .config import Config, ConfigError, load_config, to_yaml, validate
from .data import GlobalLoader, LatentLoader, check_data_path
from .export import data_identity
from .in_loop import InLoopMonitor
from .metrics import MetricsLogger
from .models import dit_train_flops
from .objective import build_objective, dit_from_config
from .parallel.engine import Engine
from .parallel.factory import build_engine
from .parallel.meta_init import build_objective_for_engine
from .parallel.optim import lr_factor
from .parallel.parallelize import CompileWatch, compile_wanted
from .parallel.process_group import DistEnv, init_distributed, local_device, shutdown
from .preemption import REQUEUE_EXIT_CODE, PreemptionFlag
from .run_log import LOG_NAME, close_run_logging, setup_run_logging
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


def build_model(cfg: Config, loader: LatentLoader):
    """The DiT, with shape/class defaults filled from the dataset manifest."""
    m = cfg.model
    channels, height, width = loader.latent_shape
    m.in_channels = m.in_channels or channels
    m.input_size = m.input_size or height
    m.num_classes = m.num_classes or loader.num_classes
    if (m.in_channels, m.input_size) != (channels, height) or height != width:
        raise ConfigError(
            f"model.input_size/in_channels = {m.input_size}/{m.in_channels} do not match the data's "
            f"latent shape {loader.latent_shape} (from {cfg.data.path}/dataset.json)"
        )
    return dit_from_config(cfg)


def build_loader(cfg: Config, env: DistEnv, pin_memory: bool = False) -> LatentLoader | GlobalLoader:
    """This rank's micro-batches: streamed (epoch | resampled) or by global position (global)."""
    t, d = cfg.train, cfg.data
    if d.mode == "global":
        return GlobalLoader(d.path, t.global_batch_size, rank=env.rank, world_size=env.world_size,
                            grad_accum=t.grad_accum, num_workers=d.num_workers, seed=t.seed,
                            random_flip=d.random_flip, verify_sha256=d.verify_sha256, pin_memory=pin_memory)
    return LatentLoader(d.path, t.global_batch_size // (env.world_size * t.grad_accum), rank=env.rank,
                        world_size=env.world_size, num_workers=d.num_workers, seed=t.seed, mode=d.mode,
                        shuffle_buffer=d.shuffle_buffer, on_error=d.on_error, verify_sha256=d.verify_sha256,
                        random_flip=d.random_flip, pin_memory=pin_memory)


def infinite(loader: LatentLoader):
    """Epoch mode ends each pass; training just starts the next one (the loader tracks epochs)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the data loader produced no batch for this rank; check data.path and the batch size")


def new_window(device: torch.device) -> dict:
    """Sums between two log lines. Loss, gradient-norm and skip statistics stay on the device
    until the log step, so the hot loop adds no host synchronisation of its own."""
    zero = lambda dtype: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
    return {"loss": zero(torch.float64), "n": 0,
            "clusters": torch.zeros(2, NUM_LOG_CLUSTERS, dtype=torch.float64, device=device),
            "time": 0.0, "steps": 0, "applied": zero(torch.int64), "grad_norm": zero(torch.float64),
            "ema_time": 0.0}


def add_cluster_sums(clusters: torch.Tensor, per_sample: torch.Tensor, t: torch.Tensor, objective) -> None:
    """Add [sum of losses, count] per timestep cluster into the (2, K) float64 `clusters`
    (the objective bins its own time: DDPM steps or flow t, bin 0 the least noisy)."""
    k = objective.timestep_clusters(t, NUM_LOG_CLUSTERS).to(clusters.device)
    clusters[0].index_add_(0, k, per_sample.detach().to(torch.float64))
    clusters[1].index_add_(0, k, torch.ones_like(k, dtype=torch.float64))


@dataclass
class Trainer:
    """Everything one training run holds; `step`, the counters and the two generators are what
    a checkpoint stores besides the engine (see `trainer_state`)."""
    cfg: Config
    env: DistEnv
    device: torch.device
    loader: LatentLoader | GlobalLoader
    objective: torch.nn.Module
    engine: Engine
    gen_t: torch.Generator  # per-rank timestep stream
    gen_noise: torch.Generator  # per-rank noise stream
    ckpt: CheckpointManager
    config_yaml: str
    flops_per_step: float
    batches: Optional[Iterator] = None  # set by `resume`, after the loader position is restored
    step: int = 0  # optimizer steps done (= the 0-based index of the step in progress)
    # Skipped-step counters live on the device (0-d int64, set in `setup`) and are read only
    # when a log line or a checkpoint is due.
    skipped_total: Optional[torch.Tensor] = None
    consecutive_bad: Optional[torch.Tensor] = None
    longest_bad_run: Optional[torch.Tensor] = None  # most consecutive skipped steps since start/resume

    def trainer_state(self) -> dict:
        return {"step": self.step, "skipped_steps": int(self.skipped_total), "rng": rng_state(),
                "gen_t": self.gen_t.get_state(), "gen_noise": self.gen_noise.get_state(),
                "loader": self.loader.state_dict()}


def rank_streams(seed: int, rank: int, step: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """Per-rank generators for timesteps and noise (returned), and the global stream that label
    dropout draws from (seeded). Exact resume restores their states; a resume on another world
    size reseeds them deterministically from the step instead."""
    base = seed + 1_000_003 * step
    torch.manual_seed(base * 31 + rank)
    return (torch.Generator().manual_seed(base * 7919 + rank),
            torch.Generator().manual_seed(base * 104729 + rank))


def setup(cfg: Config, env: DistEnv) -> Trainer:
    """Data, model, objective and engine, with the seeds that make every rank start identical."""
    validate(cfg, world_size=env.world_size)
    device = local_device(env)
    t = cfg.train
    local_batch = t.global_batch_size // (env.world_size * t.grad_accum)
    loader = build_loader(cfg, env, pin_memory=device.type == "cuda")  # page-locked: non_blocking copies overlap
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    # Whole on this device, or (parallel.meta_init) deferred for the engine to build sharded.
    objective = build_objective_for_engine(cfg, lambda: build_objective(cfg, build_model(cfg, loader)),
                                           env.world_size, device)
    dit = objective.dit
    engine = build_engine(objective, cfg, env, device)
    gen_t, gen_noise = rank_streams(t.seed, env.rank)

    config_yaml = to_yaml(cfg)
    ckpt = CheckpointManager(cfg.checkpoint.dir, cfg.checkpoint.keep, env)
    trainer = Trainer(cfg, env, device, loader, objective, engine, gen_t, gen_noise, ckpt, config_yaml,
                      flops_per_step=dit_train_flops(dit, local_batch * t.grad_accum),
                      skipped_total=torch.zeros((), dtype=torch.int64, device=device),
                      consecutive_bad=torch.zeros((), dtype=torch.int64, device=device),
                      longest_bad_run=torch.zeros((), dtype=torch.int64, device=device))
    faults.install(trainer)  # robustness tests only: a no-op unless their variables are set
    return trainer


def resume(tr: Trainer) -> None:
    """Restore engine, counters, RNG streams and the loader position from `checkpoint.resume`
    (any engine, any world size), then record the run's config."""
    resume_from = tr.ckpt.resolve(tr.cfg.checkpoint.resume)
    if resume_from:  # before anything is written: a checkpoint that does not fit fails cleanly
        state = tr.ckpt.load(resume_from, tr.engine, run_fingerprint(tr.cfg), tr.cfg.data.mode)
        tr.step = state["step"]
        tr.skipped_total.fill_(state["skipped_steps"])
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
        atomic_write_text(config_path, tr.config_yaml)
        # The whole config lives in the run folder; the console gets one line pointing at it.
        print(f"resolved config ({tr.env.world_size} rank(s), engine={tr.engine.name}): {config_path}; "
              f"log: {os.path.join(tr.cfg.checkpoint.dir, LOG_NAME)}", flush=True)
    tr.batches = infinite(tr.loader)


def train_step(tr: Trainer, window: dict) -> None:
    """One optimizer step over `train.grad_accum` micro-batches. A non-finite step is skipped on
    the device (no parameter, moment or EMA change) and counted there; `check_nonfinite` acts on
    the counts when a log line or a checkpoint is due."""
    t, device = tr.cfg.train, tr.device
    tr.engine.set_lr_factor(lr_factor(tr.step, t.warmup_steps))
    for micro in range(t.grad_accum):
        x, y, timesteps, noise, drop = tr.objective.draw_inputs(next(tr.batches), tr.gen_t, tr.gen_noise, device)
        with tr.engine.accumulate(sync=micro == t.grad_accum - 1):
            loss, per_sample = tr.engine.module(x, timesteps, y, noise, drop)
            tr.engine.backward(loss)
        window["loss"] += loss.detach().to(torch.float64)
        window["n"] += 1
        add_cluster_sums(window["clusters"], per_sample, timesteps, tr.objective)
    result = tr.engine.step()
    ema_tic = time.perf_counter()
    tr.engine.update_ema(t.ema_decay, result.applied)
    window["ema_time"] += time.perf_counter() - ema_tic
    applied = result.applied.to(device)
    window["grad_norm"] += torch.where(applied, result.grad_norm.to(device, torch.float64), 0.0)
    window["applied"] += applied
    tr.skipped_total += ~applied
    tr.consecutive_bad.mul_(~applied).add_(~applied)  # +1 when skipped, 0 when applied
    torch.maximum(tr.longest_bad_run, tr.consecutive_bad, out=tr.longest_bad_run)
    tr.step += 1


def check_nonfinite(tr: Trainer, longest_bad_run: int) -> None:
    """Host read: stop the run when `train.max_consecutive_nonfinite` steps in a row were skipped.
    Called at log and checkpoint steps, so the abort may come up to `train.log_every` steps after
    the limit was reached, but always before a checkpoint (skipped steps change nothing anyway)."""
    t = tr.cfg.train
    if longest_bad_run >= t.max_consecutive_nonfinite:
        raise RuntimeError(
            f"{longest_bad_run} consecutive non-finite steps (train.max_consecutive_nonfinite="
            f"{t.max_consecutive_nonfinite}); stopping without checkpointing the bad state. Lower "
            f"train.lr, set train.grad_clip, or check the data (data errors so far: {tr.loader.data_errors})"
        )


def window_metrics(tr: Trainer, window: dict) -> dict:
    """Collective: the metrics of the steps since the last log line, averaged over ranks (one
    host read for all of them). Stops the run if too many non-finite steps came in a row."""
    t = tr.cfg.train
    stats = torch.cat([(window["loss"] / max(window["n"], 1)).reshape(1),
                       torch.tensor([float(tr.loader.data_errors)], dtype=torch.float64, device=tr.device),
                       window["clusters"].flatten()])
    if dist.is_initialized():
        dist.all_reduce(stats)
    # Norm and skip counts are identical on every rank (the engines agree on the step).
    local = torch.stack([window["grad_norm"], window["applied"], tr.skipped_total,
                         tr.longest_bad_run]).to(torch.float64)
    stats, local = torch.cat([stats, local]).cpu().split([stats.numel(), local.numel()])
    grad_norm_sum, applied, skipped_total, longest_bad_run = local.tolist()
    skipped = window["steps"] - int(applied)
    if skipped and tr.env.is_main:
        log.warning("step %d: %d non-finite step(s) skipped since the last log line", tr.step, skipped)
    check_nonfinite(tr, int(longest_bad_run))
    sums, counts = stats[2:].view(2, NUM_LOG_CLUSTERS)
    secs = window["time"] / window["steps"]
    metrics = {
        "loss": stats[0].item() / tr.env.world_size,
        "grad_norm": grad_norm_sum / max(applied, 1),  # applied steps only
        "lr": t.lr * lr_factor(tr.step - 1, t.warmup_steps),
        "img_per_s": t.global_batch_size / secs,
        "tflops_per_rank": tr.flops_per_step / secs / 1e12,
        "ema_frac": window["ema_time"] / window["time"],
        "skipped_steps": int(skipped_total),
        "data_errors": stats[1].item(),
        **tr.engine.memory_stats(),
    }
    for k in range(NUM_LOG_CLUSTERS):
        if counts[k] > 0:
            metrics[f"loss_t{k}"] = (sums[k] / counts[k]).item()
    return metrics


def maybe_checkpoint(tr: Trainer, preempted: bool) -> None:
    """Collective: save every `checkpoint.every` steps, at the last step and on preemption,
    unless the steps since the last log line hit the non-finite limit."""
    if tr.step % tr.cfg.checkpoint.every == 0 or tr.step == tr.cfg.train.max_steps or preempted:
        check_nonfinite(tr, int(tr.longest_bad_run))
        path = tr.ckpt.save(tr.step, tr.engine, tr.trainer_state(), tr.config_yaml, run_fingerprint(tr.cfg))
        if tr.env.is_main:
            log.info("checkpoint %s", path)


def run(cfg: Config, env: DistEnv) -> int:
    tr = setup(cfg, env)
    resume(tr)
    t = cfg.train
    logger = MetricsLogger(cfg.checkpoint.dir, env.is_main, t.max_steps, tr.step, log_cfg=cfg.log,
                           config=dataclasses.asdict(cfg))
    monitor = InLoopMonitor(cfg, env, tr.device, data_identity(cfg.data.path))
    preempt = PreemptionFlag()
    compile_watch = CompileWatch(compile_wanted(cfg.model.compile, tr.device))  # its cost shows in the next log line
    window = new_window(tr.device)
    while tr.step < t.max_steps:
        tic = time.perf_counter()
        train_step(tr, window)
        window["time"] += time.perf_counter() - tic
        window["steps"] += 1
        logger.advance()
        if tr.step % t.log_every == 0 or tr.step == t.max_steps:
            logger.log(tr.step, {**window_metrics(tr, window), **compile_watch.report()})
            window = new_window(tr.device)
        in_loop = monitor.maybe_run(tr.step, tr.engine)  # sample grids / FID of the EMA, when due
        if in_loop:
            logger.log(tr.step, in_loop)
        # A collective with a host read: only every `train.preempt_check_every` steps.
        preempted = tr.step % t.preempt_check_every == 0 and preempt.any_rank(tr.device)
        maybe_checkpoint(tr, preempted)
        if preempted:
            if env.is_main:
                print(f"preemption signal received: checkpointed step {tr.step}, exiting with "
                      f"{REQUEUE_EXIT_CODE} for requeue", flush=True)
            logger.close()
            return REQUEUE_EXIT_CODE
    logger.close()
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    configure_threads()  # before any tensor work: see dtr_scale/threads.py
    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
        check_data_path(cfg.data.path)  # before any process group, so a typo fails fast
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = init_distributed()
    setup_run_logging(cfg.checkpoint.dir, env.is_main)  # train.log; library chatter off the console
    try:
        code = run(cfg, env)
    except BaseException:
        log.exception("rank %d failed", env.rank)
        # Exit hard: a clean destroy_process_group could wait on peers that will never arrive.
        sys.stderr.flush()
        os._exit(1)
    shutdown()
    close_run_logging()  # a later run in this process (tests, scripts) opens its own train.log
    return code


if __name__ == "__main__":
    sys.exit(main())
