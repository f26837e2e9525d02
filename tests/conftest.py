import pytest
import ray
import torch

from raygan.config import PretrainConfig
from raygan.data import LabeledImages, load_dataset
from raygan.pretrain import initial_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Classifiers and real features are cached per test session, never in ~/.cache."""
    path = tmp_path_factory.mktemp("raygan-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYGAN_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_data() -> LabeledImages:
    return load_dataset("demo:target:200", resolution=32)


@pytest.fixture(scope="session")
def tiny_base(tiny_data):
    cfg = PretrainConfig(resolution=32, channels=4)
    return initial_checkpoint(cfg, tiny_data.class_names)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray cluster of 2 CPUs for one test module's searches."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
