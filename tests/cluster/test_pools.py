"""Actor pool sizing: pools never take the CPUs that read and write tasks need; every actor gets blocks."""

from __future__ import annotations

import pytest

from shardflow.cluster.pools import MIN_BLOCK_ROWS, Pool, block_rows, plan_pools
from shardflow.config import Resources
from shardflow.errors import ConfigError


def test_autoscaled_pools_share_what_is_left_after_the_tasks() -> None:
    stages = [("stages.0", Resources()), ("stages.1", Resources())]
    assert plan_pools(stages, 2) == [Pool(0.5, 1, 1), Pool(0.5, 1, 1)]
    assert plan_pools(stages, 16) == [Pool(1.0, 1, 7), Pool(1.0, 1, 7)]
    assert plan_pools(stages[:1], 1) == [Pool(0.5, 1, 1)]


def test_a_fixed_pool_takes_what_it_asks_and_the_rest_is_shared() -> None:
    gpu = Resources(num_cpus=2, num_gpus=1, concurrency=4)
    assert plan_pools([("stages.0", Resources()), ("stages.1", gpu)], 16, 4) == [Pool(1.0, 1, 7), Pool(2, 4, 4, 1)]


def test_gpu_stages_get_one_actor_per_gpu_or_fall_back_to_cpu_actors() -> None:
    gpu = Resources(num_gpus=1)
    assert plan_pools([("stages.0", gpu)], 64, 8) == [Pool(1.0, 8, 8, 1)]
    assert plan_pools([("stages.0", Resources(num_gpus=2))], 64, 8) == [Pool(1.0, 4, 4, 2)]
    assert plan_pools([("stages.0", Resources(num_gpus=0.5))], 64, 2) == [Pool(1.0, 4, 4, 0.5)]
    assert plan_pools([("stages.0", gpu)], 2, 0) == [Pool(1.0, 1, 1, 0.0)]  # no GPU: an autoscaled CPU pool


@pytest.mark.parametrize(
    "stages",
    [[("stages.0", Resources(concurrency=2))], [("stages.0", Resources(concurrency=1)), ("stages.1", Resources())]],
)
def test_pools_that_leave_nothing_to_read_and_write_are_refused(stages) -> None:
    with pytest.raises(ConfigError, match=r"stages\.0\.resources.*would hang"):
        plan_pools(stages, 2)


def test_a_fixed_pool_is_never_larger_than_the_nodes_can_hold() -> None:
    from shardflow.cluster.pools import actors_that_fit

    nodes = [
        {"Alive": True, "Resources": {"CPU": 2.0}},
        {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 2.0}},  # two GPUs but one CPU: one actor
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 4.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}},
    ]
    assert actors_that_fit(Resources(num_cpus=1, num_gpus=1), nodes) == 5
    assert actors_that_fit(Resources(num_cpus=0.5, num_gpus=1), nodes) == 6
    assert actors_that_fit(Resources(num_cpus=3, num_gpus=0), nodes) == 2


def test_blocks_give_every_actor_of_a_pool_four_and_never_outgrow_a_batch() -> None:
    assert block_rows(2_640, actors=8, batch_size=1000) == 83  # a one-file corpus: 32 blocks for 8 GPUs
    assert block_rows(1_000_000, actors=8, batch_size=1000) == 1000  # a big run: whole batches
    assert block_rows(60, actors=4, batch_size=1000) == MIN_BLOCK_ROWS  # 4 blocks of 16, 16, 16 and 12
    assert block_rows(2_640, actors=1, batch_size=1000) is None  # one actor: nobody else to feed
    assert block_rows(0, actors=8, batch_size=1000) is None  # no estimate (a benchmark's own dataset)
