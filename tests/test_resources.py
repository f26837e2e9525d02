"""Per-node resource checks: a trial whose worker fits on no node is refused up front,
instead of Ray Train waiting for it forever."""

from __future__ import annotations

from typing import Any

import pytest

from raygan.config import SearchConfig
from raygan.errors import ConfigError
from raygan.search import placement_shortfall, worker_slots

SPACE = {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}
CPU_HEAD = {"CPU": 8.0, "memory": 3e10}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0, "memory": 3e10}


def search(**fields: Any) -> SearchConfig:
    return SearchConfig.model_validate({"space": SPACE, **fields})


def test_a_worker_larger_than_every_node_is_refused_naming_the_largest_node():
    # 16 CPUs in total, but no single node has 12
    shortfall = placement_shortfall(search(cpus_per_worker=12), [CPU_HEAD, CPU_HEAD])
    assert "no node fits one worker (cpus_per_worker 12, gpus_per_worker 0)" in shortfall
    assert "the largest node has 8 CPUs and 0 GPUs" in shortfall


def test_the_largest_node_is_the_one_with_most_gpus_when_workers_need_gpus():
    cfg = search(cpus_per_worker=10, gpus_per_worker=1)
    shortfall = placement_shortfall(cfg, [{"CPU": 64.0}, GPU_NODE, GPU_NODE])
    assert "the largest node has 8 CPUs and 1 GPUs" in shortfall


def test_workers_that_fit_one_per_node_need_enough_such_nodes():
    cfg = search(workers=2, cpus_per_worker=6)
    assert placement_shortfall(cfg, [CPU_HEAD, CPU_HEAD]) is None
    # 13 CPUs in total cover 2 x 6, but the 5-CPU node holds no 6-CPU worker
    shortfall = placement_shortfall(cfg, [CPU_HEAD, {"CPU": 5.0}])
    assert "a trial needs 2 workers" in shortfall and "the nodes fit only 1" in shortfall


def test_cluster_totals_still_come_first():
    shortfall = placement_shortfall(search(workers=2, gpus_per_worker=1), [GPU_NODE])
    assert shortfall.startswith("a trial needs 2 GPUs") and "the cluster has 1" in shortfall


def test_no_alive_nodes_is_a_shortfall_not_a_crash():
    assert "the cluster has 0" in placement_shortfall(search(), [])


@pytest.mark.parametrize(
    "nodes, cpus, gpus, slots",
    [
        ([CPU_HEAD], 1, 0, 8),
        ([CPU_HEAD, GPU_NODE], 2, 0, 8),
        ([CPU_HEAD, GPU_NODE, GPU_NODE], 2, 1, 2),  # GPUs bound it; the head has none
        ([{"CPU": 1.0}], 0.1, 0, 10),  # no float flooring to 9
        ([{"CPU": 4.0, "GPU": 1.0}], 1, 0.5, 2),
    ],
)
def test_worker_slots_count_whole_workers_per_node(nodes, cpus, gpus, slots):
    assert worker_slots(nodes, cpus, gpus) == slots


def test_ddp_workers_need_whole_gpus():
    with pytest.raises(ValueError, match=r"gpus_per_worker \(0.5\) must be a whole number"):
        search(workers=2, gpus_per_worker=0.5)
    search(workers=2, gpus_per_worker=2)
    search(workers=1, gpus_per_worker=0.5)  # one worker may share a GPU with other trials


def test_fractional_gpus_for_ddp_are_a_config_error_from_yaml(tmp_path):
    from raygan.config import load_config

    file = tmp_path / "s.yaml"
    file.write_text("space: {lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}}\nworkers: 2\n")
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        load_config(SearchConfig, file, ["gpus_per_worker=0.25"])
