"""Which device a run's record asks for, whatever its kind (executors place runs by it)."""

import pytest

from jobs.executors.launch import cuda_index, run_device, wants_gpu


@pytest.mark.parametrize("config,device,gpu,index", [
    ({"arch": "ping", "device": "cpu"}, "cpu", False, None),
    ({"arch": "ping", "device": "cuda"}, "cuda", True, None),
    ({"arch": "ping", "device": "cuda:1"}, "cuda:1", True, 1),
    ({"experiment": "grid", "params": {"config": {"device": "cuda:2", "n": 100}}}, "cuda:2", True, 2),
    ({"experiment": "train", "params": {"config": {"n": 100}}}, "cpu", False, None),
    ({"name": "coupling_sweep", "params": {"factors": [0, 1]}}, "cpu", False, None),
])
def test_device_of_train_force_and_analysis_records(config, device, gpu, index):
    assert run_device(config) == device
    assert wants_gpu(config) is gpu
    assert cuda_index(config) == index
