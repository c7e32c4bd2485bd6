"""A checkpoint folder cannot run code: for each pickled file kind (the DCP index `.metadata`,
`trainer_rank*.pt`, a non-tensor entry of the DCP state) a planted payload that would create a
marker file is refused by export, `sample --weights DIR` and `train --resume` with one line
naming the file, a non-zero exit, and no marker. A control load with plain unpickling shows each
payload does run when nothing guards it."""
import os
import pickle
import shutil

import pytest
import torch

from dtr_scale import export, sample
from dtr_scale import train as train_cli
from launch_helpers import TINY_CONFIG, train

pytestmark = pytest.mark.timeout(600)
STEP = "step_000000002"


class Payload:
    """Unpickling this runs `open(marker, "w")`: the shape of a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def clean_run(digits_shards, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("safe") / "run")
    train(digits_shards, run_dir, "train.max_steps=2", "checkpoint.every=2", nproc=1)
    return run_dir


def plant_metadata(step_dir, marker):
    """The real index with the payload tucked into its planner data."""
    from dtr_scale.safe_checkpoint_io import read_dcp_metadata

    index = read_dcp_metadata(os.path.join(step_dir, "state"))
    index.planner_data["extra"] = Payload(marker)
    with open(os.path.join(step_dir, "state", ".metadata"), "wb") as f:
        pickle.dump(index, f)
    return os.path.join(step_dir, "state", ".metadata")


def plant_trainer(step_dir, marker):
    from dtr_scale.safe_checkpoint_io import load_trainer_file

    path = os.path.join(step_dir, "trainer_rank00000.pt")
    state = load_trainer_file(path)
    state["loader"]["extra"] = Payload(marker)
    torch.save(state, path)
    return path


def plant_optimizer_entry(step_dir, marker):
    """The whole DCP state rewritten with one optimizer hyper-parameter replaced by the payload:
    DCP pickles a non-tensor entry into the shard file."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    state_dir = os.path.join(step_dir, "state")
    flat = os.path.join(step_dir, "flat.pt")
    dcp_to_torch_save(state_dir, flat)
    state = torch.load(flat, weights_only=True)  # this version's state is tensors only
    os.remove(flat)
    state["optim"]["param_groups"][0]["lr"] = Payload(marker)
    shutil.rmtree(state_dir)
    dcp.save(state, checkpoint_id=state_dir, no_dist=True)
    return os.path.join(state_dir, "__0_0.distcp")


def unguarded_load(kind, step_dir):
    """How these files were read before: plain pickle / torch.load / DCP's default planner."""
    if kind == "metadata":
        with open(os.path.join(step_dir, "state", ".metadata"), "rb") as f:
            pickle.load(f)
    elif kind == "trainer":
        torch.load(os.path.join(step_dir, "trainer_rank00000.pt"), weights_only=False)
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

        dcp.load({}, checkpoint_id=os.path.join(step_dir, "state"), planner=_EmptyStateDictLoadPlanner(),
                 no_dist=True)


PLANTERS = {"metadata": plant_metadata, "trainer": plant_trainer, "optimizer": plant_optimizer_entry}


def refusal_lines(text, planted):
    lines = [line for line in text.splitlines() if "not a dtr-scale checkpoint file" in line]
    assert len(lines) == 1, text[-3000:]
    assert planted in lines[0] and "unexpected" in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("kind", sorted(PLANTERS))
def test_planted_payload_never_runs(kind, clean_run, digits_shards, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    shutil.copytree(clean_run, run_dir)
    step_dir = os.path.join(run_dir, STEP)
    marker = tmp_path / "marker"
    planted = PLANTERS[kind](step_dir, marker)

    # control: the payload is live (so that "no marker" below means something)
    control = str(tmp_path / "control")
    shutil.copytree(step_dir, control)
    unguarded_load(kind, control)
    assert marker.exists()
    marker.unlink()
    capsys.readouterr()

    assert export.main(["--checkpoint", run_dir, "--out", str(tmp_path / "w.pt")]) == 2
    refusal_lines(capsys.readouterr().err, planted)
    assert not marker.exists() and not (tmp_path / "w.pt").exists()

    assert sample.main(["--weights", step_dir, "--out", str(tmp_path / "samples"), "num_samples=4",
                        "progress=false", "device=cpu"]) == 2
    refusal_lines(capsys.readouterr().err, planted)
    assert not marker.exists()

    code = train_cli.main(["--config", TINY_CONFIG, f"data.path={digits_shards}", f"checkpoint.dir={run_dir}",
                           "train.global_batch_size=8", "data.num_workers=0", "train.max_steps=3",
                           "--resume", "auto"])
    assert code == 2
    refusal_lines(capsys.readouterr().err, planted)
    assert not marker.exists()
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("step_")) == [STEP]  # nothing trained on


def test_checkpoint_holds_no_pickled_objects(clean_run):
    """This version's files need no unpickling beyond tensors and plain types: the index holds only
    DCP's own classes, the state no non-tensor entry, the trainer file loads weights-only."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from dtr_scale.safe_checkpoint_io import read_dcp_metadata

    step_dir = os.path.join(clean_run, STEP)
    index = read_dcp_metadata(os.path.join(step_dir, "state"))
    assert not [k for k, v in index.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
    state = torch.load(os.path.join(step_dir, "trainer_rank00000.pt"), weights_only=True)
    assert isinstance(state["rng"]["numpy"][1], torch.Tensor)


def test_earlier_layout_loads_through_the_safe_path(clean_run, tmp_path):
    """A checkpoint of the previous version (numpy RNG array in the trainer file, optimizer
    hyper-parameters as pickled floats in the DCP state) still loads, weights-only."""
    import numpy as np
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from dtr_scale.checkpoint import set_rng_state
    from dtr_scale.parallel.training_state import apply_groups
    from dtr_scale.safe_checkpoint_io import dcp_load, load_trainer_file

    step_dir = str(tmp_path / STEP)
    shutil.copytree(os.path.join(clean_run, STEP), step_dir)
    trainer_file = os.path.join(step_dir, "trainer_rank00000.pt")
    state = load_trainer_file(trainer_file)
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    state["rng"]["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)  # as before
    torch.save(state, trainer_file)
    flat = str(tmp_path / "flat.pt")
    dcp_to_torch_save(os.path.join(step_dir, "state"), flat)
    full = torch.load(flat, weights_only=True)
    saved_groups = full["optim"]["param_groups"]  # float64 tensors in this version
    full["optim"]["param_groups"] = [{"params": ["a"], **{k: v.tolist() for k, v in g.items()}} for g in saved_groups]
    shutil.rmtree(os.path.join(step_dir, "state"))
    dcp.save(full, checkpoint_id=os.path.join(step_dir, "state"), no_dist=True)  # floats: pickled entries

    old = load_trainer_file(trainer_file)
    assert isinstance(old["rng"]["numpy"][1], np.ndarray)
    set_rng_state(old["rng"])
    assert np.array_equal(np.random.get_state()[1], keys.numpy().astype(np.uint32))
    template = {"optim": {"param_groups": [{k: torch.zeros_like(v) for k, v in g.items()} for g in saved_groups]}}
    dcp_load(template, os.path.join(step_dir, "state"), no_dist=True)
    groups = [{} for _ in saved_groups]
    apply_groups(groups, template["optim"]["param_groups"])
    assert groups[0]["lr"] == saved_groups[0]["lr"].item()
    assert groups[1]["weight_decay"] == saved_groups[1]["weight_decay"].item()
    assert groups[0]["betas"] == tuple(saved_groups[0]["betas"].tolist())
