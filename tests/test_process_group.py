"""Reading the launcher environment: torchrun, the deepspeed launcher, srun."""
import pytest

from dtr_scale.parallel.process_group import first_slurm_host, read_dist_env


@pytest.mark.parametrize("nodelist,first", [("gpu[003-005,9],cpu1", "gpu003"), ("n1,n2", "n1"), ("a", "a"),
                                            ("node[01-02]", "node01")])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_torchrun_env():
    env = read_dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                         "MASTER_ADDR": "h1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher) == (3, 8, 1, "h1", 1234, "torchrun")


def test_srun_env_uses_step_tasks():
    env = read_dist_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0",
                         "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_JOB_ID": "77"})
    assert (env.rank, env.world_size, env.master_addr, env.master_port, env.launcher) == (1, 2, "node01", 20077, "slurm")


def test_batch_shell_is_single_process():
    # the batch shell of a 2-task job: SLURM_NTASKS=2 but no srun step
    assert read_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-2]"}).world_size == 1


def test_torchrun_inside_srun_wins():
    env = read_dist_env({"RANK": "5", "WORLD_SIZE": "16", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"})
    assert (env.rank, env.world_size) == (5, 16)
