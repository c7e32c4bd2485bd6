"""The distributed sampling job behind `python -m dtr_scale.sample` (one process or many).

Every rank loads the weights, makes its shards (j % world_size == rank) that are not on disk
yet, and meets the others once (an all-reduce of counts, which is also the barrier). Then rank 0
alone streams the shards into `samples.npz`, writes the sampling protocol beside it
(`samples.protocol.json`, dtr_scale/protocol.py: options, measured NFE, weights' sha256 and step,
code version) while the other ranks exit.
"""
from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist

from dtr_scale.atomic import atomic_write_json
from dtr_scale.errors import UserError
from dtr_scale.objective import objective_class
from dtr_scale.parallel.parallelize import apply_compile, compile_wanted
from dtr_scale.parallel.process_group import init_distributed, local_device, shutdown
from dtr_scale.protocol import nfe_per_sample, read_sample_protocol, write_sample_protocol

from .assemble import assemble_samples
from .decode import make_decoder
from .generate import generate
from .grid import save_pngs
from .options import SampleOptions
from .protocol import sample_protocol
from .shards import ShardPlan, remove_stale_temp, shard_path, write_shard
from .weights import load_sampling_model, weights_identity

RUN_CONFIG = "sample_config.json"
SAMPLES_NAME = "samples.npz"


def check_run_config(out_dir: str, wanted: dict) -> bool:
    """Refuse to mix shards of two different runs in one folder; True if the file must be written."""
    path = os.path.join(out_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        return True
    with open(path) as f:
        found = json.load(f)
    diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    if diff:
        details = "; ".join(f"{k}: {found.get(k)!r} on disk, {wanted.get(k)!r} now" for k in diff)
        raise UserError(f"{out_dir} already holds samples of a different run ({details}). Use a new "
                         f"--out directory, or repeat the original options to resume that run")
    return False


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return t.tolist()


def run_sampling(weights: str, out_dir: str, opts: SampleOptions) -> dict:
    """Run (or resume) a sampling job; returns a summary (rank 0's has `samples` once complete)."""
    opts.validate()
    env = init_distributed()
    try:
        device = torch.device(opts.device) if opts.device else local_device(env)
        model, meta = load_sampling_model(weights, model=opts.model, objective=opts.objective)
        opts.check_objective(meta["objective"])
        model.to(device)
        if compile_wanted(opts.compile, device):
            apply_compile(model)  # one graph for the doubled CFG batch and the last short batch
        diffusion = objective_class(meta["objective"]).sampler_from_options(opts, meta, model)
        decoder = make_decoder(opts.vae, meta, device=device, precision=opts.precision)
        plan = ShardPlan(opts.num_samples, opts.shard_size)
        # The resolved VAE, so that vae=none and "from metadata" count as the same run.
        wanted = {**opts.fingerprint(meta["objective"]), "vae": decoder.name, "weights": weights_identity(meta)}
        # Every rank checks (same file, same answer) so that a mismatch fails all ranks alike
        # instead of leaving the others waiting in a collective.
        must_write = check_run_config(out_dir, wanted)
        os.makedirs(out_dir, exist_ok=True)
        if env.is_main and must_write:
            atomic_write_json(os.path.join(out_dir, RUN_CONFIG), wanted)

        todo = [j for j in plan.shards_of_rank(env.rank, env.world_size)
                if not os.path.isfile(shard_path(out_dir, j))]
        if opts.max_shards_this_run:
            todo = todo[: opts.max_shards_this_run]
        summary = _make_shards(model, diffusion, decoder, plan, todo, out_dir, opts, env, device)
        new_images, seconds, batches, calls = _sum_over_ranks(
            [summary["new_images"], summary["seconds"], summary["batches"], summary["denoiser_calls"]], device)
        summary.update(new_images_all_ranks=int(new_images), rank_seconds=seconds, world_size=env.world_size)
        if not env.is_main:
            return summary  # the others are done: rank 0 assembles alone
        done = sum(os.path.isfile(shard_path(out_dir, j)) for j in range(plan.num_shards))
        summary.update(shards_done=done, shards_total=plan.num_shards)
        if done < plan.num_shards:
            print(f"sample: {done}/{plan.num_shards} shards done in {out_dir} "
                  f"({int(new_images)} new images this run); rerun the same command to finish", flush=True)
            return summary
        final = os.path.join(out_dir, SAMPLES_NAME)
        if new_images or not os.path.isfile(final):
            assemble_samples(out_dir, plan, SAMPLES_NAME)
        summary["samples"] = final
        # Every shard made by earlier runs: their measured NFE, from the sidecar they wrote.
        nfe = nfe_per_sample({"batches": batches, "denoiser_calls": calls}) if batches else \
            read_sample_protocol(final).get("nfe")
        summary["protocol"] = write_sample_protocol(
            final, sample_protocol(opts, meta, weights, model, decoder.name, nfe))
        rate = new_images / max(summary["seconds"], 1e-9)
        print(f"sample: {plan.num_samples} images in {final} (arr_0 NHWC uint8, arr_1 labels); "
              f"{int(new_images)} new this run on {env.world_size} rank(s) in {summary['seconds']:.1f} s "
              f"({rate:.2f} images/s overall)", flush=True)
        return summary
    finally:
        shutdown()


def _make_shards(model, diffusion, decoder, plan, todo, out_dir, opts, env, device) -> dict:
    total = sum(len(plan.indices(j)) for j in todo)
    bar = None
    if env.is_main and opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="img", desc=f"sampling (rank 0 of {env.world_size})", dynamic_ncols=True)
    start = time.perf_counter()
    counts = {"batches": 0, "denoiser_calls": 0}
    try:
        for j in todo:
            remove_stale_temp(out_dir, j)
            indices = plan.indices(j)
            images, labels = generate(
                model, diffusion, indices, seed=opts.seed, labels=opts.labels, cfg_scale=opts.cfg_scale,
                cfg_channels=opts.cfg_channels, sampler=opts.sampler, eta=opts.eta, precision=opts.precision,
                batch_size=opts.batch_size, decoder=decoder, device=device,
                guidance_interval=opts.guidance_interval(),
                on_batch=bar.update if bar is not None else None, counts=counts)
            if opts.png:  # before the shard: a finished shard implies its PNGs exist
                save_pngs(images, indices, os.path.join(out_dir, "png"))
            write_shard(shard_path(out_dir, j), images, labels, indices)
    finally:
        if bar is not None:
            bar.close()
    return {"rank": env.rank, "new_shards": len(todo), "new_images": total,
            "seconds": time.perf_counter() - start, **counts}
