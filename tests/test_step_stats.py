"""The loop's bookkeeping (metrics.StepStats): window sums, per-cluster losses and the skip
counters, read in one go at a log line."""
import math

import torch

from dtr_scale.metrics import StepStats


def test_window_sums_clusters_and_skip_counters():
    stats = StepStats(torch.device("cpu"), num_clusters=4)
    stats.add_micro_batch(torch.tensor(1.0), torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 3]))
    stats.add_micro_batch(torch.tensor(2.0), torch.tensor([7.0]), torch.tensor([3]))
    no, yes = torch.tensor(False), torch.tensor(True)
    for applied, norm in [(yes, 2.0), (no, math.inf), (no, math.nan), (yes, 4.0)]:
        with stats.timing_step():
            stats.add_step(torch.tensor(norm), applied)
    w = stats.read(data_errors=3, world_size=1)
    assert w.loss == 1.5  # mean over micro-batches
    assert w.grad_norm == 3.0  # applied steps only: the non-finite norms are left out
    assert (w.skipped, w.skipped_total, w.longest_bad_run) == (2, 2, 2)
    assert w.cluster_losses == {"loss_t0": 2.0, "loss_t3": 6.0}  # clusters without samples are absent
    assert w.data_errors == 3.0 and w.seconds_per_step > 0

    stats.new_window()  # a new window; the run's counters carry on
    with stats.timing_step():
        stats.add_micro_batch(torch.tensor(0.5), torch.tensor([0.5]), torch.tensor([1]))
        stats.add_step(torch.tensor(math.nan), no)
    w = stats.read(data_errors=3, world_size=1)
    assert (w.loss, w.skipped, w.skipped_total, w.longest_bad_run) == (0.5, 1, 3, 2)
    assert w.grad_norm == 0.0  # no applied step in this window
