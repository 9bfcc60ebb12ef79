"""Which GPU an actor uses, and what the driver hands on to every actor's environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dpo_ray.workers.device import device_spec, local_gpu, passed_on, rank_env


@pytest.mark.parametrize(
    "environ, ray_gpu_ids, expected",
    [
        ({}, [5], 0),  # Ray set CUDA_VISIBLE_DEVICES to the actor's GPU: it is device 0
        ({"CUDA_VISIBLE_DEVICES": "5"}, [5], 0),
        ({"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}, [5], 5),  # every GPU visible: its own by Ray's id
        ({"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "2,5,7"}, [5], 1),
        ({"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "2, 5"}, ["5"], 1),
    ],
)
def test_each_rank_takes_its_own_gpu_whatever_ray_does_with_cuda_visible_devices(environ, ray_gpu_ids, expected):
    assert local_gpu(environ, ray_gpu_ids) == expected


def test_network_and_collective_settings_reach_every_actor(monkeypatch):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth1")
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    monkeypatch.setenv("HOME_SECRET", "not passed on")
    env = rank_env(device_spec(0), 2)
    assert env["NCCL_SOCKET_IFNAME"] == "ib0" and env["GLOO_SOCKET_IFNAME"] == "eth1"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and "HOME_SECRET" not in env
    assert env["OMP_NUM_THREADS"] == "2" and env["DS_ACCELERATOR"] == "cpu"
    environ = {"NCCL_DEBUG": "INFO", "PATH": "/bin", "PYTHONPATH": "/lib/a:/launch"}
    assert passed_on(environ, "/launch") == {"NCCL_DEBUG": "INFO", "PYTHONPATH": "/launch:/lib/a"}


def test_an_engine_sees_only_its_own_gpus_even_when_ray_leaves_every_gpu_visible():
    from dpo_ray.workers.device import own_gpus_only

    assert own_gpus_only({}, [3, 4]) == {}  # Ray already set CUDA_VISIBLE_DEVICES to them
    noset = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
    assert own_gpus_only(noset, [3, 4]) == {"CUDA_VISIBLE_DEVICES": "3,4"}
    assert own_gpus_only({**noset, "CUDA_VISIBLE_DEVICES": "2,3,4,5"}, ["3", "4"]) == {"CUDA_VISIBLE_DEVICES": "3,4"}
    assert own_gpus_only(noset, []) == {}


def test_a_gpu_rank_on_cpu_torch_stops_before_loading_and_says_how_to_rebuild():
    """This machine's torch is the CPU build: a rank asked for a GPU names its node and the fix, rather than dying in
    torch.cuda.set_device; a CPU rank is untouched."""
    import socket

    from dpo_ray.workers.device import use_local_gpu

    with pytest.raises(RuntimeError, match=f"node {socket.gethostname()}: torch .* is a CPU build.*scripts/setup.sh"):
        use_local_gpu(device_spec(1))
    assert use_local_gpu(device_spec(0)) == 0


@pytest.mark.parametrize("set_before, expected", [(None, "3000"), ("77", "77")])
def test_torchs_openmp_spins_3000_times_unless_the_user_says_otherwise(set_before, expected):
    # libgomp prints the settings it read when it loads (OMP_DISPLAY_ENV): what torch's OpenMP runs with, not our env
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | {"OMP_DISPLAY_ENV": "VERBOSE"}
    if set_before is not None:
        env["GOMP_SPINCOUNT"] = set_before
    shown = subprocess.run(
        [sys.executable, "-c", "import dpo_ray, torch; torch.ones(64, 64).sum()"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert f"GOMP_SPINCOUNT = '{expected}'" in shown


def test_a_rank_gets_the_drivers_spin_count(monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")
    assert rank_env(device_spec(0), 1)["GOMP_SPINCOUNT"] == "500"
