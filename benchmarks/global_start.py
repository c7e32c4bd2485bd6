"""data.mode=global start-up per rank (process start -> first batch) vs dataset size: the sample
index prep writes vs today's header scan, side by side in one run, with the files each rank opens.

    PYTHONPATH=. python benchmarks/global_start.py [--sizes 10000 100000 1281000] [--work DIR]

Each measurement is a fresh `python` process (so interpreter and torch import count), playing
one rank (rank r of world size W, 32 samples per rank per step) of a dataset of N tiny samples
(latent (1, 1, 1): 4 KiB of tar per sample, as many tar members and headers as a real one) in
shards of 1000. Shard 0 is written by prep's shard writer; the others are byte copies of it
(separate files; the sample keys repeat across shards, which the loader does not read, and the
headers to scan are the same). Variants:

  index       prep-written dataset: memory-maps index.npy (the new path)
  scan        every start reads every shard's headers (what data.mode=global did before the
              index: the same header scanner, emulated here, no index kept)
  kept_first  dataset written before the index: the first start builds and keeps it (once)
  kept_later  the same dataset, a later start: reads the kept index

Files opened are counted inside each process with an audit hook (every Python-level open:
builtins.open, os.open, numpy's memmap, tarfile). Stat calls (verify_shards stats each shard
once) are not counted. The page cache holds the shards (just written): a cold cache or a shared
filesystem makes the scan slower still, and the index path barely changes (it reads one file).
Writes benchmarks/results/global_start.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS_DIR, machine_info
from dtr_scale.data.manifest import FORMAT_NAME, FORMAT_VERSION, write_manifest
from dtr_scale.data.sample_index import write_prep_index
from dtr_scale.data.shard_format import encode_sample, sample_key
from dtr_scale.data.shard_writer import shard_name, write_tar_shard

REPO = Path(__file__).resolve().parent.parent
LOCAL_BATCH = 32

CHILD = r"""
import json, os, sys, time
t0 = float(sys.argv[1])
folder, variant, rank, world = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
opened = []
sys.addaudithook(lambda ev, a: opened.append(os.fsdecode(a[0])) if ev in ("open", "os.open")
                 and isinstance(a[0], (str, bytes, os.PathLike)) else None)
import torch
from dtr_scale.data import GlobalLoader, global_loader
from dtr_scale.data.sample_index import SampleIndex, join_rows, scan_shard_rows
t_import = time.time()
if variant == "scan":
    class Unchecked(SampleIndex):
        def check_shard(self, k):  # today's loader had no hashes to check
            pass
    global_loader.cached_index = lambda m, rank=0: Unchecked(join_rows(scan_shard_rows(m)), m, [], "<scan>", "")
n_before = len(opened)
loader = GlobalLoader(folder, LOCAL_BATCH * world, rank=rank, world_size=world, seed=0)
batch = next(iter(loader))
t_end = time.time()
mine = [os.path.abspath(p) for p in opened[n_before:]]
print(json.dumps({"start_to_first_batch_s": t_end - t0, "import_s": t_import - t0, "loader_s": t_end - t_import,
                  "files_opened_by_loader": len(mine),
                  "shards_opened": len({p for p in mine if p.endswith(".tar")}),
                  "index_files_opened": len({p for p in mine if p.endswith((".npy", ".json")) and folder in p}),
                  "files_opened_in_process": len(opened), "batch": list(batch.x.shape)}))
""".replace("LOCAL_BATCH", str(LOCAL_BATCH))


def make_dataset(root: Path, num_samples: int, shard_size: int) -> tuple[Path, Path, float]:
    """(prep-style folder, the same shards without the index, seconds to make them)."""
    t0 = time.perf_counter()
    new, old = root / "with_index", root / "without_index"
    arr = np.zeros((2, 1, 1, 1), np.float16)
    record = write_tar_shard(new, 0, (encode_sample(sample_key(0, j), "latent.npy", arr, j % 10)
                                      for j in range(shard_size)))
    shards = num_samples // shard_size
    for k in range(1, shards):
        shutil.copyfile(new / shard_name(0), new / shard_name(k))
    records = [dict(record, name=shard_name(k)) for k in range(shards)]
    doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "field": "latent.npy", "latent_shape": [1, 1, 1],
           "latent_dtype": "float16", "scale_factor": 1.0, "shift_factor": 0.0, "num_classes": 10,
           "num_samples": shards * shard_size, "resolution": 0, "source": "benchmark", "vae": {"name": "none"},
           "shards": [{k: r[k] for k in ("name", "count", "bytes", "sha256")} for r in records]}
    write_manifest(old, doc)  # what prep wrote before the index: same shards (hard links)
    for k in range(shards):
        os.link(new / shard_name(k), old / shard_name(k))
    write_manifest(new, write_prep_index(new, doc, records))
    return new, old, time.perf_counter() - t0


def one_rank(folder: Path, variant: str, rank: int, world: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("DTR_SCALE_INDEX_CACHE", None)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, repr(t0), str(folder), variant, str(rank), str(world)],
                         env=env, capture_output=True, text=True, timeout=1800, check=False)
    if out.returncode:
        raise RuntimeError(f"{variant} rank {rank}/{world} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), variant=variant, rank=rank, world_size=world)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_281_000])
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--work", default=None, help="folder for the synthetic datasets (default: a temp dir)")
    p.add_argument("--out", default=str(RESULTS_DIR / "global_start.json"))
    args = p.parse_args()
    rows, made = [], []
    machine = machine_info()  # the load average before the run; the one after is added at the end
    warm = Path(tempfile.mkdtemp(prefix="global_start_warm_", dir=args.work))
    try:  # one discarded start: the first interpreter + torch import of a run reads cold files
        one_rank(make_dataset(warm, args.shard_size, args.shard_size)[0], "index", 0, 8)
    finally:
        shutil.rmtree(warm)
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="global_start_", dir=args.work))
        try:
            new, old, seconds = make_dataset(work, n, args.shard_size)
            made.append({"num_samples": n, "shards": n // args.shard_size, "seconds_to_make": round(seconds, 1),
                         "bytes": sum(f.stat().st_size for f in new.iterdir() if f.is_file())})
            print(f"N={n}: made {n // args.shard_size} shards in {seconds:.1f} s", flush=True)
            runs = [(new, "index", r, w) for w in (8, 512) for r in (0, w - 1)]
            runs += [(old, "scan", 0, 512)] + ([(old, "scan", 7, 8)] if n < max(args.sizes) else [])
            runs += [(old, "kept_first", 0, 512), (old, "kept_later", 511, 512), (old, "kept_later", 0, 8)]
            for folder, variant, r, w in runs:
                row = dict(one_rank(folder, variant, r, w), num_samples=n)
                rows.append(row)
                print(f"  {variant:10s} rank {r:3d}/{w:3d}: start->first batch {row['start_to_first_batch_s']:7.2f} s "
                      f"(loader {row['loader_s']:7.2f} s), files opened by the loader "
                      f"{row['files_opened_by_loader']:5d}, shards {row['shards_opened']:5d}", flush=True)
        finally:
            shutil.rmtree(work)

    def median_of(n, variant, key="start_to_first_batch_s"):
        vals = [r[key] for r in rows if r["num_samples"] == n and r["variant"] == variant]
        return float(np.median(vals))

    summary = [{"num_samples": n, **{f"{v}_s": round(median_of(n, v), 3) for v in ("index", "scan", "kept_first",
                                                                                   "kept_later")},
                "index_loader_s": round(median_of(n, "index", "loader_s"), 3),
                "scan_loader_s": round(median_of(n, "scan", "loader_s"), 3),
                "scan_over_index_start": round(median_of(n, "scan") / median_of(n, "index"), 2),
                "scan_over_index_loader": round(median_of(n, "scan", "loader_s") / median_of(n, "index", "loader_s"), 1),
                "index_shards_opened_max": max(r["shards_opened"] for r in rows
                                               if r["num_samples"] == n and r["variant"] == "index"),
                "scan_shards_opened": max(r["shards_opened"] for r in rows
                                          if r["num_samples"] == n and r["variant"] == "scan")}
               for n in args.sizes]
    result = {"benchmark": "global_start", "machine": machine,
              "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
              "local_batch": LOCAL_BATCH, "shard_size": args.shard_size, "datasets": made,
              "summary": summary, "runs": rows, "command": " ".join(["python", *sys.argv])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for s in summary:
        print(json.dumps(s))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
