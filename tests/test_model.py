from dataclasses import replace

import pytest
import torch

from raygan.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from raygan.config import PretrainConfig, TrialConfig, load_config
from raygan.errors import ConfigError
from raygan.models.builtin import BuiltinGan, ModelConfig, build_models, one_hot
from raygan.pretrain import initial_checkpoint
from raygan.trial import TrialOutput, run_trial


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_generator_maps_noise_and_class_to_images_in_unit_range(resolution):
    cfg = ModelConfig(num_classes=3, resolution=resolution, channels=4)
    g, d = build_models(cfg)
    y = one_hot(torch.tensor([0, 1, 2, 1]), 3)
    images = g(torch.randn(4, 128), y)
    assert images.shape == (4, 3, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images, y).shape == (4,)


def test_defaults_match_the_product_contract():
    cfg = ModelConfig()
    assert (cfg.latent_dim, cfg.resolution, cfg.num_classes) == (128, 64, 10)


def test_invalid_architecture_is_rejected():
    with pytest.raises(ValueError, match="resolution"):
        ModelConfig(resolution=48)


def test_freeze_depth_out_of_range_names_the_limit():
    model = BuiltinGan(ModelConfig(resolution=32, channels=4))
    with pytest.raises(ConfigError, match=r"freeze_d must be in \[0, 4\].*got 5"):
        model.freeze(0, 5)


def test_freeze_counts_g_from_latent_and_d_from_image():
    model = BuiltinGan(ModelConfig(resolution=32, channels=4))
    model.freeze(2, 2)
    assert model.frozen == {"generator": ["input", "up1"], "discriminator": ["from_rgb", "down1"]}
    assert model.max_freeze("generator") == len(model.g.blocks) - 1
    assert model.max_freeze("discriminator") == len(model.d.blocks)
    assert all(p.requires_grad for p in model.d.logit.parameters())


def snapshot(state):
    return {k: v.clone() for k, v in state.items()}


def test_frozen_blocks_do_not_change_and_the_rest_trains(tiny_data, tiny_base, tmp_path):
    cfg = TrialConfig(
        steps=5,
        batch_size=8,
        lr=1e-2,
        freeze_g=2,
        freeze_d=3,
        eval_every=5,
        eval_samples=40,
        eval_at_start=False,
    )
    result = run_trial(cfg, tiny_base, tiny_data, TrialOutput(tmp_path, lambda m, c: None))
    assert result.status == "completed"

    after = load_checkpoint(result.best_checkpoint)
    frozen_g = ("blocks.input.", "blocks.up1.")
    frozen_d = ("blocks.from_rgb.", "blocks.down1.", "blocks.down2.")
    model = tiny_base.build()
    g, d = model.g, model.d
    for what, net, before, trained, frozen in (
        ("generator", g, tiny_base.generator, after.generator, frozen_g),
        ("discriminator", d, tiny_base.discriminator, after.discriminator, frozen_d),
    ):
        parameters = {name for name, _ in net.named_parameters()}
        for name, tensor in before.items():
            same = torch.equal(tensor, trained[name])
            if name.startswith(frozen):  # every tensor, spectral-norm buffers included
                assert same, f"frozen {what} tensor {name} changed"
            elif name in parameters:
                assert not same, f"trainable {what} parameter {name} did not change"


def test_frozen_parameters_are_left_out_of_the_optimizer(tiny_base):
    from raygan.trial import build_models as build_trial_models

    cfg = TrialConfig(freeze_d=2)
    m = build_trial_models(cfg, tiny_base, torch.device("cpu"))
    optimized = {id(p) for group in m.opt_d.param_groups for p in group["params"]}
    frozen = [
        p for n, p in m.d.named_parameters() if n.startswith(("blocks.from_rgb", "blocks.down1"))
    ]
    assert frozen and not any(id(p) in optimized for p in frozen)


def test_spectral_norm_and_minibatch_stddev_stay_fp32_under_bf16_autocast(monkeypatch):
    from torch.nn.utils.parametrizations import _SpectralNorm

    from raygan.models.builtin import Discriminator, minibatch_stddev

    seen = []
    power_method = _SpectralNorm._power_method

    def recording(self, weight_mat, n_power_iterations):
        seen.append((torch.is_autocast_enabled("cpu"), weight_mat.dtype))
        return power_method(self, weight_mat, n_power_iterations)

    monkeypatch.setattr(_SpectralNorm, "_power_method", recording)
    d = Discriminator(ModelConfig(num_classes=3, resolution=32, channels=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d(torch.randn(8, 3, 32, 32), one_hot(torch.arange(8) % 3, 3))
        spread = minibatch_stddev(torch.randn(8, 16, dtype=torch.bfloat16), 4)
    assert seen and all(not on and dtype == torch.float32 for on, dtype in seen), seen
    assert spread.dtype == torch.float32


def test_class_norm_starts_as_the_pretrained_generator_and_learns_per_class(tiny_base, tiny_data):
    from raygan.recipe import build_recipe
    from raygan.trial import build_models as build_trial_models
    from raygan.trial import train_step

    base = tiny_base.build()
    grown = base.with_class_norm()
    z, labels = torch.randn(6, grown.latent_dim), torch.arange(6) % grown.num_classes
    assert torch.equal(base.generate(z, labels), grown.generate(z, labels))
    tables = [t.name for t in grown.conditional_tensors() if ".class_" in t.name]
    assert len(tables) == 2 * grown.cfg.num_stages  # a gain and a bias per up block

    cfg = TrialConfig(batch_size=8, lr=5e-3, class_norm=True)
    m = build_trial_models(cfg, tiny_base, torch.device("cpu"))
    train_step(m, [tiny_data.batch(torch.arange(8))], cfg, build_recipe(cfg, m.model), 1)
    gains = dict(m.model.g.named_parameters())[tables[0]]
    assert gains.abs().sum() > 0, "the per-class scale did not train"


def test_a_class_norm_checkpoint_rebuilds_with_its_per_class_tables(tiny_base, tmp_path):
    grown = tiny_base.build().with_class_norm()
    for name, p in grown.g.named_parameters():
        if ".class_" in name:
            torch.nn.init.normal_(p)
    saved = save_checkpoint(Checkpoint.of(grown, tiny_base.class_names, {}), tmp_path / "c")
    rebuilt = load_checkpoint(saved).build()
    z, labels = torch.randn(4, grown.latent_dim), torch.arange(4) % grown.num_classes
    assert rebuilt.cfg.class_norm
    assert torch.equal(rebuilt.generate(z, labels), grown.generate(z, labels))
    rebuilt.export(tmp_path)  # the serving program carries the tables too
    program = torch.export.load(tmp_path / "generator.pt2").module()
    assert torch.allclose(program(z, labels), grown.generate(z, labels), atol=1e-5)


@pytest.fixture
def latent_norm_base(tiny_data):
    cfg = PretrainConfig(resolution=32, channels=4, class_norm=True, latent_norm=True)
    return initial_checkpoint(cfg, tiny_data.class_names)


def test_latent_norm_starts_as_class_norm_alone_and_lets_z_reach_every_norm(latent_norm_base):
    model = latent_norm_base.build()
    without = BuiltinGan(replace(model.cfg, latent_norm=False))
    without.g.load_state_dict(
        {k: v for k, v in latent_norm_base.generator.items() if ".latent_" not in k}
    )
    z, labels = torch.randn(4, model.latent_dim), torch.arange(4) % model.num_classes
    assert torch.equal(model.generate(z, labels), without.generate(z, labels))

    tables = [p for name, p in model.g.named_parameters() if ".latent_" in name]
    assert len(tables) == 2 * model.cfg.num_stages  # a gain and a bias per up block
    for table in tables:
        torch.nn.init.normal_(table, std=0.1)
    assert not torch.allclose(model.generate(z, labels), without.generate(z, labels))


def test_a_latent_norm_checkpoint_rebuilds_and_exports_with_its_z_tables(
    latent_norm_base, tmp_path
):
    model = latent_norm_base.build()
    for name, p in model.g.named_parameters():
        if ".latent_" in name:
            torch.nn.init.normal_(p, std=0.1)
    saved = save_checkpoint(Checkpoint.of(model, latent_norm_base.class_names, {}), tmp_path / "c")
    rebuilt = load_checkpoint(saved).build()
    z, labels = torch.randn(4, model.latent_dim), torch.arange(4) % model.num_classes
    assert rebuilt.cfg.latent_norm
    assert torch.equal(rebuilt.generate(z, labels), model.generate(z, labels))
    rebuilt.export(tmp_path)  # the serving program feeds z to the norms too
    program = torch.export.load(tmp_path / "generator.pt2").module()
    assert torch.allclose(program(z, labels), model.generate(z, labels), atol=1e-5)


def test_latent_norm_without_class_norm_is_refused():
    with pytest.raises(ConfigError, match="latent_norm needs class_norm"):
        load_config(PretrainConfig, None, ["latent_norm=true"])
    with pytest.raises(ValueError, match="latent_norm needs class_norm"):
        ModelConfig(latent_norm=True)


def test_class_norm_on_a_user_model_is_a_config_error():
    from tiny_models import FACTORY

    from raygan.models.torch_user import TorchGan

    spec = {"adapter": "torch", "factory": FACTORY, "latent_dim": 16, "labels": "index"}
    with pytest.raises(ConfigError, match="class_norm: only the built-in model"):
        TorchGan(spec, 3).with_class_norm()
