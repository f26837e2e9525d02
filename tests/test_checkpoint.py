import json
import pickle

import pytest
import torch

import raygan.checkpoint as checkpoint_module
from raygan.checkpoint import (
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from raygan.errors import CheckpointError
from raygan.models.builtin import ModelConfig, build_models


@pytest.fixture
def saved(tiny_base, tmp_path):
    return save_checkpoint(tiny_base, tmp_path / "ckpt")


def test_checkpoint_round_trips_weights_architecture_and_classes(tiny_base, saved):
    loaded = load_checkpoint(saved)
    assert loaded.spec == tiny_base.spec
    assert loaded.class_names == tiny_base.class_names
    for name, tensor in tiny_base.generator.items():
        assert torch.equal(tensor, loaded.generator[name])
    model = loaded.build()
    assert model.generate(torch.randn(2, 128), torch.arange(2)).shape == (2, 3, 32, 32)


def test_failed_write_leaves_previous_checkpoint_whole(tiny_base, saved, monkeypatch, tmp_path):
    before = (saved / "generator.safetensors").read_bytes()
    calls = []

    def crash_on_second_file(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed mid-write
        return real_save(tensors, path)

    real_save = checkpoint_module.save_file
    monkeypatch.setattr(checkpoint_module, "save_file", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_base, saved)
    assert (saved / "generator.safetensors").read_bytes() == before
    assert load_checkpoint(saved).spec == tiny_base.spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "temporary files left behind"


def test_corrupt_weights_file_is_named_in_the_error(saved):
    (saved / "discriminator.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="discriminator.safetensors"):
        load_checkpoint(saved)


def test_missing_sidecar_and_missing_path_are_clear_errors(saved, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (saved / "raygan.json").unlink()
    with pytest.raises(CheckpointError, match="raygan.json is missing"):
        load_checkpoint(saved)


def test_architecture_mismatch_names_the_tensor_and_both_shapes(tiny_base, saved):
    sidecar = json.loads((saved / "raygan.json").read_text())
    sidecar["model"]["channels"] = 8
    (saved / "raygan.json").write_text(json.dumps(sidecar))
    with pytest.raises(
        CheckpointError, match=r"generator tensor .* has shape .* but .* in the model"
    ):
        load_checkpoint(saved).build()


@pytest.mark.parametrize(
    "norms", [{}, {"class_norm": True}, {"class_norm": True, "latent_norm": True}]
)
def test_plain_state_dict_file_loads_with_architecture_read_from_shapes(tmp_path, norms):
    cfg = ModelConfig(num_classes=5, resolution=64, channels=8, **norms)
    g, d = build_models(cfg)
    file = tmp_path / "gan.pt"
    torch.save({"generator": g.state_dict(), "discriminator": d.state_dict()}, file)
    loaded = load_checkpoint(file)
    assert loaded.spec == {"adapter": "raygan", **cfg.to_dict()}
    loaded.build()


class Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickle_with_code_is_refused_not_executed(tmp_path, capsys):
    file = tmp_path / "evil.pt"
    file.write_bytes(pickle.dumps({"generator": Payload(), "discriminator": {}}))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(file)
    assert "pickle code ran" not in capsys.readouterr().out


def test_state_dict_file_of_another_model_is_rejected(tmp_path):
    file = tmp_path / "other.pt"
    torch.save({"generator": {"w": torch.zeros(1)}, "discriminator": {}}, file)
    with pytest.raises(CheckpointError, match="not a raygan G/D state_dict"):
        load_checkpoint(file)


def test_sidecar_with_wrong_class_name_count_is_rejected(saved):
    sidecar = json.loads((saved / "raygan.json").read_text())
    sidecar["class_names"] = ["only", "two"]
    (saved / "raygan.json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="2 class names for a model of 10 classes"):
        load_checkpoint(saved)


def test_checkpoint_dataclass_builds_fresh_models(tiny_base):
    copy = Checkpoint(
        tiny_base.spec, tiny_base.class_names, tiny_base.generator, tiny_base.discriminator
    )
    assert copy.build().spec() == tiny_base.spec
