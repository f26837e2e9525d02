"""The recipe inside the trial loop: EMA, D steps, regularisers, norm-affine-only, resume."""

import math

import pytest
import torch
from aot_eager import without_codegen

from raygan.checkpoint import load_checkpoint
from raygan.config import TrialConfig
from raygan.errors import ConfigError
from raygan.recipe import build_recipe
from raygan.regularizers import norm_affine_names
from raygan.trial import TrialOutput, build_models, run_trial, train_step


def tiny(**overrides) -> TrialConfig:
    settings = dict(steps=4, batch_size=8, lr=5e-3, eval_every=2, eval_samples=40)
    return TrialConfig(**{**settings, "eval_at_start": False, **overrides})


def run(cfg, base, data, out, resume=None, run_id=""):
    reports = []
    output = TrialOutput(out, lambda m, c: reports.append(m), run_id=run_id)
    return run_trial(cfg, base, data, output, resume), reports


def test_checkpoints_ship_the_ema_generator_and_keep_the_trained_one_for_resume(
    tiny_base, tiny_data, tmp_path
):
    cfg = tiny(ema_decay=0.9)
    result, reports = run(cfg, tiny_base, tiny_data, tmp_path)
    ckpt = load_checkpoint(result.best_checkpoint, with_optimizer=True)
    raw = ckpt.optimizer["raw_generator"]
    differs = [k for k, v in ckpt.generator.items() if not torch.equal(v, raw[k])]
    assert differs, "the shipped generator is the trained one, not its EMA"
    # The first evaluations also score the trained generator, to show what the EMA buys.
    assert "fid_raw" in reports[0] and math.isfinite(reports[0]["fid_raw"])


def test_resume_restores_the_ema_and_the_trained_weights(tiny_base, tiny_data, tmp_path):
    cfg = tiny(ema_decay=0.9, steps=2)
    first, _ = run(cfg, tiny_base, tiny_data, tmp_path / "a")
    saved = load_checkpoint(first.best_checkpoint, with_optimizer=True)
    m = build_models(cfg, tiny_base, torch.device("cpu"))
    recipe = build_recipe(cfg, m.model)
    from raygan.trial import averaged_generator_state, resume_state

    state = resume_state(m, recipe, cfg, first.best_checkpoint)
    assert state["step"] == 2
    for name, tensor in m.model.g.state_dict().items():
        assert torch.equal(tensor, saved.optimizer["raw_generator"][name]), name
    for name, tensor in averaged_generator_state(m.model, recipe.ema).items():
        assert torch.equal(tensor, saved.generator[name]), name


def test_d_steps_updates_d_that_many_times_per_g_update(tiny_base, tiny_data):
    cfg = tiny(d_steps=3)
    m = build_models(cfg, tiny_base, torch.device("cpu"))
    recipe = build_recipe(cfg, m.model)
    batch = tiny_data.batch(torch.arange(8))
    train_step(m, [batch] * 3, cfg, recipe, 1)
    d_state = next(iter(m.opt_d.state.values()))
    g_state = next(iter(m.opt_g.state.values()))
    assert (int(d_state["step"]), int(g_state["step"])) == (3, 1)


def test_every_knob_at_once_trains_and_logs_its_signals(tiny_base, tiny_data, tmp_path):
    cfg = tiny(
        loss="hinge",
        d_steps=2,
        augment="ada",
        ema_decay=0.99,
        r1_gamma=1.0,
        r1_every=2,
        lecam_weight=0.1,
        mismatch_weight=1.0,
        anchor_weight=0.01,
    )
    result, reports = run(cfg, tiny_base, tiny_data, tmp_path)
    assert result.status == "completed"
    for signal in ("ada_p", "lecam_ema_real", "lecam_ema_fake", "r1", "score"):
        assert signal in reports[-1], signal
    assert reports[-1]["score"] == min(r["objective"] for r in reports)


def test_norm_affine_only_leaves_every_other_tensor_bit_identical(tiny_base, tiny_data, tmp_path):
    cfg = tiny(norm_affine_only=True)
    result, _ = run(cfg, tiny_base, tiny_data, tmp_path)
    after = load_checkpoint(result.best_checkpoint).generator
    model = tiny_base.build()
    trainable = set(norm_affine_names(model.g))
    trainable |= {t.name for t in model.conditional_tensors() if t.net == "generator"}
    assert trainable
    for name, before in tiny_base.generator.items():
        same = torch.equal(before, after[name])
        assert same != (name in trainable), f"{name}: changed={not same}"


def test_a_resumed_trial_continues_exactly_as_an_uninterrupted_one(tiny_base, tiny_data, tmp_path):
    """Data stream, noise, EMA, ADA's p, collapse patience and best-so-far all resume."""
    cfg = tiny(ema_decay=0.9, augment="ada", collapse_stop=0.999, collapse_patience=5)
    whole, whole_reports = run(cfg, tiny_base, tiny_data, tmp_path / "whole")
    first_half = whole.history[0]
    halfway = tmp_path / "whole" / "checkpoints" / "step-000002"
    resumed, resumed_reports = run(cfg, tiny_base, tiny_data, tmp_path / "resumed", halfway)
    end_whole = load_checkpoint(whole.best_checkpoint.parent / "step-000004")
    end_resumed = load_checkpoint(resumed.best_checkpoint.parent / "step-000004")
    for name, tensor in end_whole.generator.items():
        assert torch.equal(tensor, end_resumed.generator[name]), name
    last_whole, last_resumed = whole_reports[-1], resumed_reports[-1]
    for key in ("fid", "score", "ada_p"):
        assert last_whole[key] == last_resumed[key], key
    assert end_resumed.state["high_collapse"] == end_whole.state["high_collapse"]
    assert last_resumed["score"] <= first_half["objective"]


def test_a_pbt_clone_of_a_final_checkpoint_reports_that_checkpoint_as_its_end(
    tiny_base, tiny_data, tmp_path
):
    """PBT can hand a trial another's last checkpoint: nothing is left to train, but the trial
    must not end on its stale "running" report. A retry from its own last checkpoint (already
    reported) reports nothing more."""
    cfg = tiny(steps=2)
    donor, donor_reports = run(cfg, tiny_base, tiny_data, tmp_path / "a", run_id="a")
    for run_id, expected in (("b", donor_reports[-1:]), ("a", [])):
        out = tmp_path / run_id
        result, reports = run(cfg, tiny_base, tiny_data, out, donor.best_checkpoint, run_id)
        assert reports == expected, run_id
        assert (result.status, result.step) == ("completed", 2)
    assert donor_reports[-1]["trial_status"] == "completed"


def test_compiled_training_step_trains_like_the_eager_one(tiny_base, tiny_data, monkeypatch):
    monkeypatch.setattr(torch, "compile", without_codegen(torch.compile))
    batch = tiny_data.batch(torch.arange(8))
    start = parameter_vector(tiny_base.build())
    runs = {}
    for compiled in (False, True):
        cfg = tiny(compile=compiled)
        m = build_models(cfg, tiny_base, torch.device("cpu"))
        assert (m.g is not m.model.g) == compiled  # evaluation keeps the eager modules
        recipe = build_recipe(cfg, m.model)
        torch.manual_seed(0)
        losses = [torch.stack(train_step(m, [batch], cfg, recipe, s)) for s in (1, 2, 3)]
        runs[compiled] = torch.stack(losses), parameter_vector(m.model) - start
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-3, atol=1e-4)
    # Adam moves a weight by up to lr whatever its gradient's size, so near-zero gradients that
    # differ in their last bits move a few weights differently: compare the whole update.
    similarity = torch.nn.functional.cosine_similarity(runs[True][1], runs[False][1], dim=0)
    assert similarity > 0.99


def parameter_vector(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for net in (model.g, model.d) for p in net.parameters()])


def test_compile_without_a_cpp_compiler_is_a_config_error(tiny_base, monkeypatch):
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", ("raygan-no-such-compiler",))
    with pytest.raises(ConfigError, match="compile: no working C.. compiler"):
        build_models(tiny(compile=True), tiny_base, torch.device("cpu"))
