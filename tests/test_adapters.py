"""A user's own model behind the seam: PyTorch modules (`adapter: torch`) and Keras CGANs
(`adapter: keras`) freeze, train, evaluate and run under DDP as they are; a broken model spec
is one line; a target with other classes starts from the pretrained rows of its classes."""

import os
import sys
from pathlib import Path

import pytest
import tiny_models
import torch
import torch.distributed as dist
from gloo import run_ranks
from PIL import Image
from tiny_models import FACTORY, LATENT, save_keras_base, save_torch_base

from raygan.checkpoint import load_checkpoint, save_checkpoint
from raygan.config import KerasModelSpec, RayganModelSpec, TorchModelSpec, TrialConfig
from raygan.data import load_dataset, sample_batches
from raygan.errors import RayganError
from raygan.models import build
from raygan.models.pretrained import INIT_SEED, load_base_and_data, read_pretrained
from raygan.models.seam import GanModel
from raygan.recipe import build_recipe
from raygan.trial import TrialOutput, build_models, run_trial, train_step

DATA = "demo:target:200"
STEPS = TrialConfig(
    steps=4,
    batch_size=8,
    lr=1e-2,
    freeze_g=3,
    freeze_d=3,
    eval_every=4,
    eval_samples=40,
    eval_at_start=False,
)


def torch_spec(**fields) -> TorchModelSpec:
    return TorchModelSpec(
        **{"adapter": "torch", "factory": FACTORY, "latent_dim": LATENT, **fields}
    )


def keras_spec(**fields) -> KerasModelSpec:
    return KerasModelSpec(**{"adapter": "keras", "latent_dim": LATENT, **fields})


@pytest.fixture(scope="module")
def torch_base(tmp_path_factory) -> Path:
    return save_torch_base(tmp_path_factory.mktemp("torch-base") / "base.pt")


@pytest.fixture(scope="module")
def keras_base(tmp_path_factory) -> Path:
    pytest.importorskip("keras")
    return save_keras_base(tmp_path_factory.mktemp("keras-base"))


@pytest.fixture(params=["torch", "keras"])
def user_model(request):
    """(model spec, base) of a tiny BatchNorm CGAN for each user adapter."""
    if request.param == "torch":
        return torch_spec(), request.getfixturevalue("torch_base")
    return keras_spec(), request.getfixturevalue("keras_base")


def train_steps(m, batches, cfg: TrialConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` steps of the trial loop's update, one batch each; returns the last losses."""
    recipe = build_recipe(cfg, m.model)
    for step in range(1, n + 1):
        losses = train_step(m, [next(batches)], cfg, recipe, step)
    return losses


def frozen_keys(model: GanModel, net: str, depth: int) -> set[str]:
    """State-dict keys of the tensors (weights and statistics) in the first `depth` groups."""
    groups = model.freeze_groups(net)[:depth]
    ids = {
        id(t)
        for group in groups
        for module in group.modules
        for t in module.state_dict(keep_vars=True).values()
    }
    return {k for k, t in model.net(net).state_dict(keep_vars=True).items() if id(t) in ids}


# ---- freezing and training -----------------------------------------------------------------


def test_frozen_groups_stay_bit_identical_and_every_trainable_tensor_changes(user_model, tmp_path):
    spec, base_path = user_model
    base, data = load_base_and_data(spec, str(base_path), DATA, False)
    result = run_trial(STEPS, base, data, TrialOutput(tmp_path, lambda m, c: None))
    assert result.status == "completed" and result.history[-1]["fid"] > 0  # it evaluated
    after = load_checkpoint(result.best_checkpoint)
    model = base.build()
    for net, before, trained in (
        ("generator", base.generator, after.generator),
        ("discriminator", base.discriminator, after.discriminator),
    ):
        frozen = frozen_keys(model, net, 3)
        assert any("mean" in k for k in frozen), f"no BatchNorm statistics in frozen {net}"
        for name in frozen:
            assert torch.equal(before[name], trained[name]), f"frozen {net} {name} changed"
        params = dict(model.net(net).named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad} - frozen
        assert trainable
        for name in trainable:
            assert not torch.equal(before[name], trained[name]), f"{net} {name} did not train"


def test_frozen_groups_have_no_optimizer_state_and_their_batchnorm_stays_in_eval(user_model):
    spec, base_path = user_model
    base, data = load_base_and_data(spec, str(base_path), DATA, False)
    m = build_models(STEPS, base, torch.device("cpu"))
    train_steps(m, sample_batches(data, 8, seed=0), STEPS, 2)
    m.model.train(True)
    for net, opt in (("generator", m.opt_g), ("discriminator", m.opt_d)):
        groups = m.model.freeze_groups(net)
        frozen = [p for group in groups[:3] for p in group.parameters()]
        optimized = {id(p) for group in opt.param_groups for p in group["params"]}
        assert frozen and not any(p.requires_grad for p in frozen)
        assert not {id(p) for p in frozen} & (optimized | {id(p) for p in opt.state})
        for group in groups[:3]:  # torch modules in eval mode; Keras layers not trainable
            for module in group.modules:
                assert not module.training and not getattr(module, "trainable", False)


def test_conditioning_layers_are_no_freeze_groups(user_model):
    spec, base_path = user_model
    base, _ = load_base_and_data(spec, str(base_path), DATA, False)
    model = base.build()
    conditional = model.conditional_tensors()
    assert {t.net for t in conditional} == (
        {"generator", "discriminator"} if spec.adapter == "torch" else {"discriminator"}
    )
    for net in ("generator", "discriminator"):
        grouped = {k for k in frozen_keys(model, net, len(model.freeze_groups(net)))}
        assert not grouped & {t.name for t in conditional}, f"{net} would freeze its conditioning"


# ---- a broken model spec is one line -------------------------------------------------------


def base_from(factory: str, tmp_path: Path) -> Path:
    """Weights saved from `tiny_models.<factory>()`, so only the contract can fail."""
    g, d = getattr(tiny_models, factory)()
    path = tmp_path / f"{factory}.pt"
    torch.save({"generator": g.state_dict(), "discriminator": d.state_dict()}, path)
    return path


def factory(name: str) -> str:
    return f"{Path(tiny_models.__file__).resolve()}:{name}"


@pytest.mark.parametrize(
    "fields, weights, message",
    [
        ({"factory": "no_such_package.models:build"}, "build", r"cannot import no_such_package"),
        ({"factory": "/nowhere/model.py:build"}, "build", r"file not found: /nowhere/model\.py"),
        ({"factory": factory("nothing")}, "build", r"has no callable named 'nothing'"),
        ({"factory": factory("build_one")}, "build", r"must return \(G, D\).*got TinyG"),
        ({"factory": factory("build_not_modules")}, "build", r"must return \(G, D\).*'str'"),
        (
            {"factory": factory("build_wrong_shape")},
            "build_wrong_shape",
            r"got shape \(2, 3, 32, 16",
        ),
        ({"factory": factory("build_out_of_range")}, "build_out_of_range", r"lie in \[-1, 1\]"),
        ({"factory": factory("build_two_logits")}, "build_two_logits", r"D must return .*\(4, 2\)"),
        ({"latent_dim": 8}, "build", r"z of shape \(2, 8\) \(model.latent_dim 8\)"),
        (
            {"factory_args": {"width": 2}},
            "build",
            r"tensor project.0.weight has shape \(24, 8, 4, 4\) in the weights but "
            r"\(24, 4, 4, 4\) in the model",
        ),
        (
            {},
            "build_out_of_range",
            r"missing in the weights \['label_embedding.weight'.*"
            r"not in the modules \['g.label_embedding.weight'",
        ),
    ],
)
def test_a_broken_torch_model_spec_is_one_line_naming_the_problem(
    fields, weights, message, tmp_path
):
    base = base_from(weights, tmp_path)
    with pytest.raises(RayganError, match=message) as error:
        load_base_and_data(torch_spec(**fields), str(base), DATA, False)
    assert "\n" not in str(error.value)


def test_a_keras_file_that_needs_unsafe_deserialisation_is_refused(tmp_path):
    pytest.importorskip("keras")
    base = save_keras_base(tmp_path / "lambda", unsafe=True)
    with pytest.raises(RayganError, match=r"generator.keras: needs unsafe deserialisation") as e:
        load_base_and_data(keras_spec(), str(base), DATA, False)
    assert "\n" not in str(e.value)


def test_a_keras_latent_size_mismatch_is_named(keras_base):
    with pytest.raises(RayganError, match=r"model.latent_dim is 8 but .* noise of size 16"):
        load_base_and_data(keras_spec(latent_dim=8), str(keras_base), DATA, False)


def test_missing_keras_says_what_to_install(tmp_path, monkeypatch):
    for name in ("generator.keras", "discriminator.keras"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(RayganError, match=r"needs Keras 3: pip install 'raygan\[keras\]'"):
        load_base_and_data(keras_spec(), str(tmp_path), DATA, False)


# ---- new label sets ------------------------------------------------------------------------

THREE = ["circle", "ring", "star"]  # an ImageFolder sorts them so; demo indices 0, 4, 6


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    """A 3-class ImageFolder of demo:target images; its classes are named like the demo's."""
    demo = load_dataset("demo:target", 64)
    root = tmp_path_factory.mktemp("three")
    for name in THREE:
        (root / name).mkdir()
        index = demo.class_names.index(name)
        for i, image in enumerate(demo.images[demo.labels == index][:12]):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
    return root


def check_class_rows(model_spec, base: str, data: str, expected: dict[int, int | None]) -> None:
    """Class-conditional slices of target class t are the pretrained slices of class
    `expected[t]`, or fresh ones when None; every other tensor is the pretrained one."""
    ckpt, loaded = load_base_and_data(model_spec, base, data, False)
    assert loaded.class_names == THREE
    pre = read_pretrained(model_spec, base)
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)
        fresh = build(pre.spec, 3)
    conditional = {(t.net, t.name): t for t in fresh.conditional_tensors()}
    assert conditional
    for net, stored, merged in (
        ("generator", pre.generator, ckpt.generator),
        ("discriminator", pre.discriminator, ckpt.discriminator),
    ):
        new = fresh.net(net).state_dict()
        for name, tensor in merged.items():
            where = conditional.get((net, name))
            if where is None:
                assert torch.equal(tensor, stored[name]), f"{net} {name} is not the pretrained one"
                continue
            for target, source in expected.items():
                row = tensor.select(where.dim, where.start + target)
                want = (
                    new[name].select(where.dim, where.start + target)
                    if source is None
                    else stored[name].select(where.dim, where.start + source)
                )
                assert torch.equal(row, want), f"{net} {name} class {target}"
    m = build_models(STEPS, ckpt, torch.device("cpu"))  # and it trains at the new class count
    loss_d, loss_g = train_steps(m, sample_batches(loaded, 8, seed=0), STEPS, 1)
    assert m.model.num_classes == 3 and torch.isfinite(loss_d + loss_g)


def test_a_three_class_target_starts_from_mapped_rows_with_class_map(three_classes):
    spec = RayganModelSpec(class_map={"circle": "circle", "ring": "square"})
    check_class_rows(spec, "demo", str(three_classes), {0: 0, 1: 1, 2: None})


def test_a_three_class_target_is_matched_by_name_without_class_map(three_classes):
    check_class_rows(RayganModelSpec(), "demo", str(three_classes), {0: 0, 1: 4, 2: 6})


def test_a_torch_model_takes_class_map_by_index(three_classes, torch_base):
    spec = torch_spec(class_map={"ring": 4, "star": 6})
    check_class_rows(spec, str(torch_base), str(three_classes), {0: None, 1: 4, 2: 6})


def test_unnamed_classes_of_another_count_ask_for_class_map(three_classes, torch_base, tmp_path):
    demo = load_checkpoint(Path(__file__).parents[1] / "raygan" / "assets" / "demo-base")
    plain = tmp_path / "plain.pt"
    torch.save({"generator": demo.generator, "discriminator": demo.discriminator}, plain)
    for spec, base in ((RayganModelSpec(), plain), (torch_spec(), torch_base)):
        with pytest.raises(RayganError, match=r"10 classes .* has 3 .*set model.class_map"):
            load_base_and_data(spec, str(base), str(three_classes), False)


def test_a_keras_model_keeps_its_class_count(three_classes, keras_base):
    with pytest.raises(RayganError, match=r"one-hot labels of 10 classes but the data has 3"):
        load_base_and_data(keras_spec(), str(keras_base), str(three_classes), False)


# ---- DDP ------------------------------------------------------------------------------------


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in tensors])


def weights_and_statistics(m) -> torch.Tensor:
    """(2, n): G's and D's weights, then their BatchNorm statistics, n of each padded."""
    nets = (m.model.g, m.model.d)
    weights = flat(p for net in nets for p in net.parameters())
    statistics = flat(b for net in nets for b in net.buffers())
    return torch.nn.utils.rnn.pad_sequence([weights, statistics], batch_first=True)


def ddp_worker(rank: int, world: int, base_dir: str, out_dir: str, cache: str) -> None:
    os.environ["RAYGAN_CACHE"] = cache
    base, data = load_checkpoint(base_dir), load_dataset(DATA, 32)
    cfg = STEPS.model_copy(update={"freeze_g": 1, "freeze_d": 1, "seed": 3})
    reports = []
    run_trial(
        cfg, base, data, TrialOutput(Path(out_dir), lambda metrics, ckpt: reports.append(metrics))
    )
    assert [r["step"] for r in reports] == [4], reports

    m = build_models(cfg, base, torch.device("cpu"))
    batches = sample_batches(data, cfg.batch_size, seed=rank)  # each rank its own data
    before = weights_and_statistics(m)
    train_steps(m, batches, cfg, 3)
    after = weights_and_statistics(m)
    gathered = [torch.empty_like(after) for _ in range(world)]
    dist.all_gather(gathered, after)
    if rank == 0:
        moved = float((after - before).abs().max())
        torch.save({"states": gathered, "moved": moved}, os.path.join(out_dir, "states.pt"))


def test_a_batchnorm_user_model_under_two_process_ddp_keeps_ranks_identical(
    torch_base, tmp_path, isolated_cache
):
    base, _ = load_base_and_data(torch_spec(), str(torch_base), DATA, False)
    base_dir = save_checkpoint(base, tmp_path / "base")
    out = tmp_path / "run"
    out.mkdir()
    run_ranks(ddp_worker, 2, str(base_dir), str(out), str(isolated_cache))
    result = torch.load(out / "states.pt", weights_only=True)
    rank0, rank1 = result["states"]
    assert result["moved"] > 0
    assert torch.equal(rank0[0], rank1[0]), "weights differ across ranks"
    assert torch.equal(rank0[1], rank1[1]), "BatchNorm statistics differ across ranks"
    assert (out / "checkpoints" / "step-000004" / "raygan.json").exists()
