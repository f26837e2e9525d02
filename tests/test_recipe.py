"""The fine-tuning recipe's building blocks: EMA, losses, regularisers, augmentation policies."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raygan.augment import AdaptiveAugment, AugmentPolicy, diff_augment, parse_augment
from raygan.ema import GeneratorEMA
from raygan.losses import LOSSES, d_loss, g_loss, mismatch_loss, wrong_labels
from raygan.regularizers import Anchor, LeCam, lazy_r1_weight, norm_affine_names, r1_penalty

# --- generator EMA ---------------------------------------------------------------------------


def _linear(value: float) -> nn.Linear:
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(value)
        net.bias.fill_(value)
    return net


def test_ema_matches_its_formula_after_n_steps():
    net = _linear(1.0)
    ema = GeneratorEMA(net, decay=0.9)
    for step, value in enumerate([2.0, 4.0, 8.0]):
        with torch.no_grad():
            net.weight.fill_(value)
        ema.update(net, step)
    # ((1 * .9 + .1 * 2) * .9 + .1 * 4) * .9 + .1 * 8 = 1.6510
    expected = ((1.0 * 0.9 + 0.1 * 2.0) * 0.9 + 0.1 * 4.0) * 0.9 + 0.1 * 8.0
    assert ema.module.weight.flatten().tolist() == pytest.approx([expected] * 2)
    assert ema.module.bias.item() == pytest.approx(1.0)  # unchanged parameter stays put


def test_ema_equals_the_weights_before_start():
    net = _linear(1.0)
    ema = GeneratorEMA(net, decay=0.99, start=3)
    for step in range(3):
        with torch.no_grad():
            net.weight.add_(5.0)
        ema.update(net, step)
        assert torch.equal(ema.module.weight, net.weight)
    with torch.no_grad():
        net.weight.add_(5.0)
    ema.update(net, 3)
    assert not torch.equal(ema.module.weight, net.weight)


def test_ema_copies_batchnorm_buffers():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ema = GeneratorEMA(net, decay=0.999)
    net.train()(torch.randn(8, 3, 4, 4) + 3.0)
    ema.update(net, step=10)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)
    assert torch.equal(ema.module[1].num_batches_tracked, net[1].num_batches_tracked)


def test_ema_copy_is_frozen_and_in_eval_mode():
    ema = GeneratorEMA(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), decay=0.9)
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_dict_round_trips():
    net = _linear(3.0)
    ema = GeneratorEMA(net, decay=0.5)
    restored = GeneratorEMA(_linear(0.0), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.module.weight, ema.module.weight)


def test_ema_copy_to_writes_the_average_into_another_model():
    ema = GeneratorEMA(_linear(3.0), decay=0.5)
    target = _linear(0.0)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.module.weight)


def _keras_on_torch(monkeypatch):
    if "KERAS_BACKEND" not in os.environ:
        monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    return keras


def test_ema_and_norm_affine_names_work_on_a_keras_model(monkeypatch):
    keras = _keras_on_torch(monkeypatch)
    inputs = keras.Input((3,))
    # Named: Keras numbers unnamed layers by how many it has built in this process.
    hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4)(inputs))
    net = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    net(torch.randn(8, 3), training=True)
    assert norm_affine_names(net) == ["_torch_params.bn/beta", "_torch_params.bn/gamma"]
    ema = GeneratorEMA(net, decay=0.5)
    with torch.no_grad():
        for v in net.weights:
            v.value.add_(1.0)
    ema.update(net, step=1)
    for v, e in zip(net.weights, ema.module.weights, strict=True):
        # Trainable variables move halfway; moving statistics are copied.
        expected = v.value - 0.5 if v.trainable else v.value
        assert torch.allclose(e.value, expected), v.path


# --- losses ----------------------------------------------------------------------------------

REAL = torch.tensor([2.0, -0.5, 0.3])
FAKE = torch.tensor([-1.5, 0.8, 0.0])


def test_bce_losses_match_the_softplus_formulas():
    expected_d = F.softplus(-REAL).mean() + F.softplus(FAKE).mean()
    assert d_loss("bce", REAL, FAKE).item() == pytest.approx(expected_d.item())
    assert g_loss("bce", FAKE).item() == pytest.approx(F.softplus(-FAKE).mean().item())


def test_hinge_losses_match_their_formulas():
    # relu(1 - real) = [0, 1.5, 0.7]; relu(1 + fake) = [0, 1.8, 1.0]
    assert d_loss("hinge", REAL, FAKE).item() == pytest.approx(2.2 / 3 + 2.8 / 3)
    assert g_loss("hinge", FAKE).item() == pytest.approx(-(-1.5 + 0.8 + 0.0) / 3)


def test_mismatched_pairs_are_scored_as_fakes_by_either_loss():
    assert mismatch_loss("bce", REAL).item() == pytest.approx(F.softplus(REAL).mean().item())
    assert mismatch_loss("hinge", REAL).item() == pytest.approx((3.0 + 0.5 + 1.3) / 3)


def test_wrong_labels_always_differ_and_reach_every_other_class():
    torch.manual_seed(0)
    labels = torch.full((2000,), 3)
    wrong = wrong_labels(labels, 5)
    assert not (wrong == labels).any()
    assert set(wrong.tolist()) == {0, 1, 2, 4}


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss 'wgan'.*bce, hinge"):
        d_loss("wgan", REAL, FAKE)
    assert set(LOSSES) == {"bce", "hinge"}


# --- R1 ------------------------------------------------------------------------------------


def test_r1_penalty_matches_the_hand_computed_gradient():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    x = torch.randn(5, 1, 2, 2, requires_grad=True)
    # D(x) = sum(w * x) + sum(x^2)  =>  grad = w + 2x, per sample.
    logits = (w * x).flatten(1).sum(1) + x.square().flatten(1).sum(1)
    penalty = r1_penalty(logits, x)
    expected = (w + 2 * x.detach()).square().flatten(1).sum(1).mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
    assert penalty.requires_grad  # create_graph: D's weights get the penalty's gradient


def test_lazy_r1_weight_scales_by_interval():
    assert lazy_r1_weight(gamma=10.0, interval=16) == pytest.approx(80.0)


# --- LeCam -----------------------------------------------------------------------------------


def test_lecam_emas_follow_the_batch_means():
    lecam = LeCam(decay=0.9)
    lecam.update(torch.tensor([1.0, 3.0]), torch.tensor([-2.0, -4.0]))
    assert (lecam.ema_real, lecam.ema_fake) == pytest.approx((0.2, -0.3))
    lecam.update(torch.tensor([2.0]), torch.tensor([0.0]))
    assert (lecam.ema_real, lecam.ema_fake) == pytest.approx((0.9 * 0.2 + 0.2, 0.9 * -0.3))


def test_lecam_tracks_the_latest_means_before_start():
    lecam = LeCam(decay=0.99, start=1)
    lecam.update(torch.tensor([1.0, 3.0]), torch.tensor([-4.0]))
    assert (lecam.ema_real, lecam.ema_fake) == pytest.approx((2.0, -4.0))


def test_lecam_penalty_matches_its_formula():
    lecam = LeCam()
    lecam.load_state_dict({"ema_real": 0.5, "ema_fake": -1.0, "updates": 10})
    real, fake = torch.tensor([2.0, -3.0]), torch.tensor([1.0, -0.5])
    # relu(real + 1)^2 = [9, 0]; relu(0.5 - fake)^2 = [0, 1]
    assert lecam.penalty(real, fake).item() == pytest.approx(9 / 2 + 1 / 2)
    assert lecam.state_dict() == {"ema_real": 0.5, "ema_fake": -1.0, "updates": 10}


# --- anchor (L2-SP) --------------------------------------------------------------------------


def test_anchor_penalty_is_zero_at_pretrained_weights_and_grows_with_change():
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    anchor = Anchor(net.named_parameters())
    assert anchor.penalty(net.named_parameters()).item() == 0.0
    with torch.no_grad():
        net[0].weight[0, 0] += 0.5
        net[1].bias += 2.0
    penalty = anchor.penalty(net.named_parameters())
    assert penalty.item() == pytest.approx(0.25 + 4.0)
    penalty.backward()
    assert net[1].bias.grad.item() == pytest.approx(4.0)


def test_anchor_refuses_names_it_cannot_find():
    net = nn.Linear(2, 2)
    anchor = Anchor(net.named_parameters())
    prefixed = ((f"module.{n}", p) for n, p in net.named_parameters())
    with pytest.raises(KeyError, match="bias"):
        anchor.penalty(prefixed)


# --- normalisation-only mode -----------------------------------------------------------------


def test_norm_affine_names_picks_norm_scale_and_shift_only():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(2, 4)),
        nn.BatchNorm1d(4, affine=False),
        nn.Embedding(10, 4),
    )
    assert norm_affine_names(net) == ["1.weight", "1.bias", "2.1.weight", "2.1.bias"]


def test_norm_affine_names_covers_layer_and_instance_norms():
    net = nn.Sequential(nn.LayerNorm(4), nn.InstanceNorm2d(4, affine=True), nn.Linear(4, 4))
    assert norm_affine_names(net) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_norm_affine_only_trains_the_class_tables_but_not_the_latent_ones():
    from raygan.models.builtin import BuiltinGan, ModelConfig
    from raygan.recipe import restrict_to_norm_affine

    cfg = ModelConfig(num_classes=3, resolution=32, channels=4, class_norm=True, latent_norm=True)
    model = BuiltinGan(cfg)
    restrict_to_norm_affine(model)
    trained = {name for name, p in model.g.named_parameters() if p.requires_grad}
    norms = {
        f"blocks.up{i}.2.{table}"
        for i in range(1, cfg.num_stages + 1)
        for table in ("weight", "bias", "class_gain", "class_bias")
    }
    assert trained == norms | {"blocks.input.linear.weight"}  # its class columns are trained


# --- augmentation policies -------------------------------------------------------------------


def test_parse_augment_reads_every_policy():
    assert parse_augment("none").ops == ()
    assert parse_augment("diffaug").ops == ("color", "translation", "cutout")
    assert parse_augment("diffaug:cutout, color").ops == ("color", "cutout")
    assert isinstance(parse_augment("ada"), AdaptiveAugment)
    for spec in ["none", "diffaug", "diffaug:translation", "ada", "ada:color,cutout"]:
        assert parse_augment(spec).spec == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("diffaug:colour", "unknown op 'colour'; valid ops: color, translation, cutout"),
        ("diffaug:", "unknown op ''"),
        ("mixup", "unknown policy 'mixup'; valid: none, diffaug"),
        ("none:color", "'none' takes no ops"),
    ],
)
def test_parse_augment_rejects_bad_specs_naming_the_bad_part(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_augment(spec)


def test_full_diffaug_policy_reproduces_diff_augment():
    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(0)
    expected = diff_augment(x)
    torch.manual_seed(0)
    assert torch.equal(parse_augment("diffaug").apply(x), expected)


def test_no_augment_is_identity():
    x = torch.rand(2, 3, 8, 8)
    assert parse_augment("none").apply(x) is x


def _run_ada(ada: AdaptiveAugment, real_logit: float, steps: int) -> None:
    for _ in range(steps):
        ada.observe(torch.full((16,), real_logit))
        ada.adjust(16)


def test_ada_p_rises_when_d_overfits_the_real_images():
    ada = AdaptiveAugment(speed_images=640, interval=4)
    _run_ada(ada, real_logit=5.0, steps=8)  # two adjustments of 64 / 640 each
    assert ada.p == pytest.approx(0.2)
    _run_ada(ada, real_logit=5.0, steps=200)
    assert ada.p == 1.0  # clamped


def test_ada_p_falls_when_d_calls_real_images_fake():
    ada = AdaptiveAugment(speed_images=640, interval=4, p=0.5)
    _run_ada(ada, real_logit=-1.0, steps=4)
    assert ada.p == pytest.approx(0.4)
    _run_ada(ada, real_logit=-1.0, steps=200)
    assert ada.p == 0.0  # clamped


def test_ada_p_moves_only_every_interval_steps():
    ada = AdaptiveAugment(speed_images=640, interval=4)
    _run_ada(ada, real_logit=5.0, steps=3)
    assert ada.p == 0.0


def test_ada_augments_each_image_with_probability_p_and_stays_differentiable():
    x = torch.rand(64, 3, 8, 8, requires_grad=True)
    assert torch.equal(AdaptiveAugment(p=0.0).apply(x), x)
    ada = AdaptiveAugment(ops=["cutout"], p=0.5)
    torch.manual_seed(0)
    out = ada.apply(x)
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert 0.25 < changed < 0.75
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_ada_state_dict_restores_p():
    ada = AdaptiveAugment(p=0.37)
    restored = AdaptiveAugment()
    restored.load_state_dict(ada.state_dict())
    assert restored.p == pytest.approx(0.37)


def test_fixed_policies_ignore_feedback():
    policy = AugmentPolicy(["color"])
    policy.observe(torch.ones(4))
    policy.adjust(4)
    assert policy.p == 1.0 and AugmentPolicy().p == 0.0
