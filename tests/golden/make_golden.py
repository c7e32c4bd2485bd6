"""Record what training, export and sampling produce for fixed seeds, so a refactor can prove
that it changed no behaviour bit for bit.

    python tests/golden/make_golden.py DIGITS_SHARDS_DIR [OUT.json [KEEP_CHECKPOINT_DIR]]

Everything goes through the public entry points (`train.main`, `export.export`, `sample.main`),
so the record does not depend on how the code inside is arranged. Each tensor is kept as the
sha256 of its bytes plus its first values (to see how far a mismatch is). The digits shards are
the test suite's (`python -m dtr_scale.prep --source digits --vae none --shard-size 200`).

Float results are bitwise only for one kind of CPU and thread count, and torch's own name for the
CPU's vector unit ("AVX512") does not tell two kinds apart: two machines that both said AVX512
rounded differently in the last bit. So a record names its machine with the CPU's model, cache size
and vector-instruction flags, there is one record per kind of machine (`pre_redesign*.json`), and
the test compares with the records whose machine fields all equal this machine's; it skips (saying
why) when none does. `pre_redesign.json`, the first record, was made before those fields existed:
it cannot be matched to its machine any more and applies to none; it stays as the origin of the
others. On a kind of machine with no record, run this script at a commit whose test passed on a
kind that has one, and say so in the new record's `provenance`.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import sys
import tempfile

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))
from launch_helpers import flatten  # noqa: E402  (the checkpoint tests' walk over nested state)

TINY_CONFIG = os.path.join(REPO, "configs", "digits-tiny.yaml")
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pre_redesign.json")
RECORDS = sorted(glob.glob(os.path.join(os.path.dirname(GOLDEN), "pre_redesign*.json")))
NOT_COMPARED = ("machine", "provenance")  # what a record says about itself, not behaviour

# Training runs: name -> (steps, overrides). The two long ones also write an in-loop sample grid
# and are exported and sampled from.
RUNS = {
    "ddpm_constant": (20, ["train.sample_every=20"]),
    "ddpm_min_snr": (3, ["diffusion.loss_weighting=min_snr"]),
    "ddpm_p2": (3, ["diffusion.loss_weighting=p2", "diffusion.p2_gamma=0.5"]),
    "ddpm_ant_uw": (3, ["diffusion.loss_weighting=ant_uw", "diffusion.schedule=cosine"]),
    "ddpm_global": (3, ["data.mode=global"]),
    "flow": (10, ["diffusion.objective=flow", "train.sample_every=10"]),
    "flow_global_logit": (3, ["diffusion.objective=flow", "data.mode=global",
                              "diffusion.flow.time_sampling=logit_normal"]),
    "flow_gvp_noise": (3, ["diffusion.objective=flow", "diffusion.flow.path=GVP",
                           "diffusion.flow.prediction=noise", "diffusion.flow.loss_weight=velocity"]),
}
# Sampler runs over the exported weights: name -> (run, options).
SAMPLES = {
    "ddpm": ("ddpm_constant", ["sampler=ddpm", "steps=10"]),
    "ddim": ("ddpm_constant", ["sampler=ddim", "steps=ddim10"]),
    "ddim_eta": ("ddpm_constant", ["sampler=ddim", "steps=ddim10", "eta=0.5", "labels=balanced"]),
    "flow_ode": ("flow", ["flow_sampler=ode", "ode_method=euler", "num_steps=10"]),
    "flow_sde": ("flow", ["flow_sampler=sde", "sde_method=Euler", "num_steps=10"]),
    "flow_sde_heun_interval": ("flow", ["flow_sampler=sde", "sde_method=Heun", "num_steps=10",
                                        "guidance_low=0.2", "guidance_high=0.8", "last_step=Tweedie"]),
}
COMMON_SAMPLE = ["num_samples=6", "seed=3", "batch_size=4", "progress=false", "device=cpu", "compile=false",
                 "shard_size=4"]
METRIC_KEYS = ("loss", "grad_norm", "lr", "skipped_steps")  # deterministic ones (not timings)


def machine() -> dict:
    from dtr_scale.threads import choose_threads  # the count every CLI sets (OMP_NUM_THREADS wins)

    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": choose_threads().threads, **cpu_details()}


def cpu_details() -> dict:
    """Model name, cache size and vector-instruction flags from /proc/cpuinfo (Linux), or {}."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line.split(":", 1) for line in f if ":" in line]
    except OSError:
        return {}
    first = {}
    for key, value in lines:
        first.setdefault(key.strip(), value.strip())
    vector = sorted(flag for flag in first.get("flags", "").split()
                    if flag.startswith(("avx", "amx", "fma", "f16c", "sse")))
    return {"cpu_model": first.get("model name"), "cpu_cache": first.get("cache size"), "cpu_flags": vector}


def records() -> dict[str, dict]:
    """Every saved record, by file name."""
    out = {}
    for path in RECORDS:
        with open(path) as f:
            out[os.path.basename(path)] = json.load(f)
    return out


def applies(record: dict, mine: dict) -> bool:
    """A record applies to a machine when it names the CPU's details and every machine field it
    names has this machine's value."""
    named = record["machine"]
    return "cpu_flags" in named and all(mine.get(key) == value for key, value in named.items())


def tensor_record(t: torch.Tensor, head: bool = True) -> dict | str:
    """sha256 of the bytes, with shape, dtype and first values; just the sha256 if not `head`."""
    t = t.detach().cpu().contiguous()
    flat = t.reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() and t.dtype != torch.bool else flat.to(torch.uint8)
    digest = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    if not head:
        return digest
    first = flat[:2]
    return {"shape": list(t.shape), "dtype": str(t.dtype), "sha256": digest,
            "head": [float(v) for v in first.to(torch.float64)] if t.is_floating_point() else first.tolist()}


def checkpoint_tensors(step_dir: str, scratch: str) -> dict:
    """sha256 record of every tensor of a checkpoint's canonical state (model, EMA, optimizer)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = os.path.join(scratch, os.path.basename(step_dir) + "_state.pt")
    dcp_to_torch_save(os.path.join(step_dir, "state"), target)
    state = torch.load(target, map_location="cpu", weights_only=True)
    os.remove(target)
    # First values for the weights (to see how far a mismatch goes), hashes for the rest. The
    # optimizer's group hyper-parameters are left out: they were plain floats (not tensors, so not
    # recorded) before checkpoints stopped pickling anything, and float64 tensors since; their
    # values come from the config, and the trajectory they drive is pinned by the weights.
    return {path: tensor_record(t, head=path.startswith("/model/")) for path, t in sorted(flatten(state))
            if not path.startswith("/optim/param_groups/")}


def checkpoint_schema(step_dir: str) -> dict:
    """What a later version must still read: meta.json's keys and fingerprint, the trainer
    state's keys, and the DCP index's tensor names and shapes."""
    from torch.distributed.checkpoint import FileSystemReader

    with open(os.path.join(step_dir, "meta.json")) as f:
        meta = json.load(f)
    trainer = torch.load(os.path.join(step_dir, "trainer_rank00000.pt"), map_location="cpu", weights_only=False)
    index = FileSystemReader(os.path.join(step_dir, "state")).read_metadata()
    # The optimizer groups' entries are left out for the reason given in checkpoint_tensors.
    shapes = {k: list(getattr(v, "size", [])) for k, v in sorted(index.state_dict_metadata.items())
              if not k.startswith("optim.param_groups.")}
    return {"meta_keys": sorted(meta), "fingerprint": meta.get("fingerprint"), "trainer_keys": sorted(trainer),
            "loader_state": trainer["loader"], "index": shapes}


def train_run(name: str, data: str, root: str) -> tuple[dict, str]:
    from dtr_scale.train import main as train_main

    steps, extra = RUNS[name]
    run_dir = os.path.join(root, name)
    argv = ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}",
            "train.global_batch_size=8", "train.log_every=1", "data.num_workers=0", "eval.sampling_steps=3",
            f"train.max_steps={steps}", f"checkpoint.every={steps}", "train.seed=7", *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_main(argv)
    if code != 0:
        raise RuntimeError(f"training run {name} exited {code}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    kept = [{k: v for k, v in m.items() if k in METRIC_KEYS or k.startswith("loss_t") or k == "step"}
            for m in lines]
    # Lines with none of the pinned numbers (the in-loop grid's file name, logged since W&B
    # shows the grids) are not behaviour.
    record = {"metrics": [m for m in kept if set(m) != {"step"}],
              "state": checkpoint_tensors(os.path.join(run_dir, f"step_{steps:09d}"), root)}
    grid = os.path.join(run_dir, "samples", f"step_{steps:09d}.png")
    if os.path.isfile(grid):
        with open(grid, "rb") as f:
            record["grid_png_sha256"] = hashlib.sha256(f.read()).hexdigest()
    return record, run_dir


def _portable(meta: dict) -> dict:
    """Export metadata without this machine's absolute paths."""
    meta = json.loads(json.dumps(meta, default=str))
    meta.pop("checkpoint", None)
    if isinstance(meta.get("data"), dict):
        meta["data"].pop("path", None)
    return meta


def export_run(run_dir: str, out: str) -> tuple[dict, str]:
    from safetensors import safe_open

    from dtr_scale.export import export

    pt, st = export(run_dir, out)
    payload = torch.load(pt, map_location="cpu", weights_only=True)
    with safe_open(st, "pt") as f:
        st_meta = {k: json.loads(v) for k, v in f.metadata().items()}
    return {"meta": _portable(payload["dtr_scale"]), "safetensors_meta": _portable(st_meta),
            "ema": {k: tensor_record(v, head=False) for k, v in sorted(payload["ema"].items())}}, pt


def sample_run(weights: str, options: list[str], out: str) -> dict:
    from dtr_scale.sample import main as sample_main

    with contextlib.redirect_stdout(io.StringIO()):
        code = sample_main(["--weights", weights, "--out", out, *COMMON_SAMPLE, *options])
    if code != 0:
        raise RuntimeError(f"sampling {options} exited {code}")
    with np.load(os.path.join(out, "samples.npz")) as z:
        images, labels = z["arr_0"], z["arr_1"]
    with open(os.path.join(out, "sample_config.json")) as f:
        run_config = json.load(f)
    run_config.pop("weights", None)  # names the weights file's path
    return {"images": tensor_record(torch.from_numpy(images)), "labels": labels.tolist(), "run_config": run_config}


def record_all(data: str, scratch: str, keep_checkpoint: str | None = None) -> dict:
    """The whole record. `keep_checkpoint`: copy the ddpm_ant_uw run's checkpoint there."""
    out = {"machine": machine(), "runs": {}, "exports": {}, "samples": {}}
    run_dirs = {}
    for name in RUNS:
        out["runs"][name], run_dirs[name] = train_run(name, data, scratch)
    steps = RUNS["ddpm_ant_uw"][0]
    out["schema"] = checkpoint_schema(os.path.join(run_dirs["ddpm_ant_uw"], f"step_{steps:09d}"))
    weights = {}
    for name in ("ddpm_constant", "flow"):
        out["exports"][name], weights[name] = export_run(run_dirs[name], os.path.join(scratch, f"{name}.pt"))
    for name, (run, options) in SAMPLES.items():
        out["samples"][name] = sample_run(weights[run], options, os.path.join(scratch, f"samples_{name}"))
    if keep_checkpoint:
        import shutil

        shutil.copytree(run_dirs["ddpm_ant_uw"], keep_checkpoint)
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))  # what tests/conftest.py sets
    data = args[0]
    target = args[1] if len(args) > 1 else GOLDEN
    keep = args[2] if len(args) > 2 else None
    with tempfile.TemporaryDirectory() as scratch:
        record = record_all(data, scratch, keep)
    with open(target, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {target} ({os.path.getsize(target)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
