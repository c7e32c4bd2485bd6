"""Behaviour pinned bit for bit: training, export and sampling give what the code before the
objective/randomness redesign gave (tests/golden/pre_redesign.json, written by
tests/golden/make_golden.py on that code; tests/golden/pre_redesign.*.json, the same behaviour
recorded on other kinds of CPU, each saying how in its `provenance`).

Pinned: per-step losses, gradient norms and per-cluster losses of DDPM (constant, Min-SNR, P2,
ANT-UW, data.mode=global) and flow runs (Linear/velocity, GVP/noise, logit-normal times, global);
every tensor of each run's last checkpoint (a 20-step DDPM and a 10-step flow trajectory: weights,
EMA, optimizer moments, ANT-UW's log-variances); the in-loop sample grids; the exported EMA weights
and metadata; the sampler CLI's images for DDPM, DDIM (η = 0 and 0.5), flow ODE and SDE (Euler,
Heun with a guidance interval), and its run record; and the checkpoint layout a resume reads
(fingerprint, trainer-state keys, tensor names and shapes), so checkpoints written before the
redesign still resume.
"""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
import make_golden  # noqa: E402


def differences(saved, now, path=""):
    """Dotted paths where two JSON-like records differ (the first few are reported)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now)):
            if key not in saved or key not in now:
                yield f"{path}/{key}: {'missing now' if key not in now else 'new'}"
            else:
                yield from differences(saved[key], now[key], f"{path}/{key}")
    elif isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        for i, (a, b) in enumerate(zip(saved, now)):
            yield from differences(a, b, f"{path}/{i}")
    elif saved != now:
        yield f"{path}: recorded {saved!r}, now {now!r}"


def test_differences_finds_a_changed_bit():
    a = {"runs": {"x": {"metrics": [{"loss": 1.0}], "state": {"/model/w": {"sha256": "ab"}}}}}
    b = json.loads(json.dumps(a))
    assert list(differences(a, b)) == []
    b["runs"]["x"]["metrics"][0]["loss"] = 1.0000000000000002
    b["runs"]["x"]["state"]["/model/w"]["sha256"] = "ac"
    assert len(list(differences(a, b))) == 2


def test_a_record_applies_only_to_the_machine_it_names():
    records = make_golden.records()
    assert "pre_redesign.json" in records and len(records) >= 2
    for name, record in records.items():
        named = record["machine"]
        if name == "pre_redesign.json":  # made before the CPU's details were recorded
            assert "cpu_flags" not in named and not make_golden.applies(record, {**named, "cpu_flags": []})
            continue
        assert record["provenance"] and make_golden.applies(record, dict(named))
        other_flags = {**named, "cpu_flags": [f for f in named["cpu_flags"] if not f.startswith("amx")] + ["x"]}
        assert not make_golden.applies(record, other_flags)
        assert not make_golden.applies(record, {**named, "threads": named["threads"] + 1})


@pytest.mark.slow
def test_training_export_and_sampling_are_bitwise_as_before_the_redesign(digits_shards, tmp_path):
    mine = make_golden.machine()
    records = {name: record for name, record in make_golden.records().items() if make_golden.applies(record, mine)}
    if not records:
        pytest.skip(f"no record is for this kind of machine ({mine}); see tests/golden/make_golden.py")
    now = make_golden.record_all(digits_shards, str(tmp_path))
    found = {name: list(differences(behaviour(record), behaviour(now))) for name, record in records.items()}
    closest = min(found, key=lambda name: len(found[name]))
    assert not found[closest], (f"{len(found[closest])} difference(s) from the recorded behaviour ({closest}, the "
                                f"closest of {sorted(found)}):\n" + "\n".join(found[closest][:40]))


def behaviour(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in make_golden.NOT_COMPARED}
