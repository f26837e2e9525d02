import pytest

from raygan.config import FinetuneConfig, SearchConfig, TrialConfig, load_config
from raygan.errors import ConfigError

SPACE = "space:\n  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n"


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_overrides_are_parsed_as_yaml_scalars_and_validated(tmp_path):
    cfg = load_config(FinetuneConfig, None, ["lr=1e-4", "augment=true", "freeze_d=2"])
    assert (cfg.lr, cfg.augment, cfg.freeze_d) == (1e-4, "diffaug", 2)


def test_exponents_without_a_dot_are_floats_in_files_and_overrides(tmp_path):
    # YAML 1.1 reads `1e-4` as a string; the seed recipe is checked against the space as given.
    path = write(tmp_path, SPACE + "seed_recipe: {lr: 2e-4}\n")
    cfg = load_config(SearchConfig, path, ["trial.lr=3e-4"])
    assert cfg.seed_recipe == {"lr": 2e-4} and cfg.trial.lr == 3e-4
    cfg = load_config(SearchConfig, path, ["seed_recipe.lr=5E-4"])
    assert cfg.seed_recipe == {"lr": 5e-4}


def test_dotted_override_reaches_nested_trial_settings(tmp_path):
    cfg = load_config(SearchConfig, write(tmp_path, SPACE), ["trial.steps=50", "num_trials=2"])
    assert cfg.trial.steps == 50 and cfg.num_trials == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr: -1\n", "field 'lr'.*greater than 0.*got -1"),
        ("lrr: 1\n", "unknown field 'lrr'"),
        ("beta1: 1.5\n", "field 'beta1'"),
        ("checkpoint_every: 150\neval_every: 100\n", "multiple of eval_every"),
        ("- a list\n", "expected a mapping"),
        ("lr: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_finetune_config_names_file_field_and_value(tmp_path, text, message):
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(FinetuneConfig, path, [])
    assert "bad.yaml" in str(info.value)


@pytest.mark.parametrize(
    "space, message",
    [
        ("  lr: {type: loguniform, low: 0, high: 1.0e-3}", "space.lr.low"),
        ("  lr: {type: gaussian, low: 0, high: 1}", "does not match any of the expected tags"),
        ("  beta1: {type: uniform, low: 0.5, high: 1.5}", "space.beta1: value 1.5 is invalid"),
        ("  momentum: {type: uniform, low: 0, high: 1}", "space.momentum: not searchable"),
        ("  freeze_d: {type: int, low: 3, high: 1}", r"low \(3\) must be below high \(1\)"),
        ("  freeze_g: {type: int, low: 1, high: 1}", "low equals high .*set trial.freeze_g: 1"),
        ("  augment: {type: choice, values: []}", "space.augment.values"),
    ],
)
def test_malformed_search_space_is_rejected_with_the_field(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SearchConfig, write(tmp_path, f"space:\n{space}\n"), [])


def test_search_space_is_required(tmp_path):
    with pytest.raises(ConfigError, match="field 'space' is required"):
        load_config(SearchConfig, write(tmp_path, "num_trials: 3\n"), [])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(SearchConfig, tmp_path / "nope.yaml", [])


def test_shipped_search_spaces_are_valid():
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "search_spaces").glob("*.yaml"))
    assert files
    for file in files:
        load_config(SearchConfig, file, [])


def test_trial_config_merges_sampled_parameters():
    search = SearchConfig(space={}, trial=TrialConfig(steps=10))
    assert search.trial_config({"lr": 3e-4}).steps == 10


def test_seed_recipe_outside_the_space_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"seed_recipe.lr: 1e-06 is outside space.lr"):
        load_config(
            SearchConfig,
            None,
            ["space.lr={type: loguniform, low: 1.0e-5, high: 1.0e-3}", "seed_recipe={lr: 1.0e-6}"],
        )


def test_a_default_seed_recipe_outside_the_space_says_it_is_the_default_and_how_to_change_it():
    high_lr = "space.lr={type: loguniform, low: 1.0e-3, high: 1.0e-2}"
    with pytest.raises(ConfigError) as error:
        load_config(SearchConfig, None, [high_lr])
    message = str(error.value)
    assert "seed_recipe.lr: 0.0002 is outside space.lr (the default seed recipe" in message
    assert "`seed_recipe: null`" in message
    assert load_config(SearchConfig, None, [high_lr, "seed_recipe="]).seed_recipe is None


def test_unknown_augment_policy_names_the_bad_op():
    with pytest.raises(ConfigError, match="unknown op 'colour'"):
        load_config(FinetuneConfig, None, ["augment=diffaug:colour"])


def test_seed_point_fills_lr_g_lr_d_and_batch_size_choices_with_values_of_the_space():
    from raygan.search import seed_point

    cfg = load_config(
        SearchConfig,
        None,
        [
            "space.lr_g={type: loguniform, low: 1.0e-5, high: 1.0e-3}",
            "space.lr_d={type: loguniform, low: 1.0e-5, high: 1.0e-3}",
            "space.batch_size={type: choice, values: [8, 32]}",
        ],
    )
    # The default seed recipe sets lr 2e-4 and no lr_g/lr_d: they fall back to it.
    assert seed_point(cfg) == [{"lr_g": 2e-4, "lr_d": 2e-4, "batch_size": 8}]


def test_search_paths_become_absolute_so_trials_in_other_directories_find_them(
    tmp_path, monkeypatch
):
    (tmp_path / "data").mkdir()
    (tmp_path / "base.pt").write_bytes(b"")
    (tmp_path / "model.py").write_text("")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        SearchConfig,
        None,
        [
            "data=data",
            "base=base.pt",
            "model={adapter: torch, factory: 'model.py:build'}",
            SPACE_OVERRIDE,
        ],
    ).with_absolute_paths()
    assert (cfg.data, cfg.base) == (str(tmp_path / "data"), str(tmp_path / "base.pt"))
    assert cfg.model.factory == f"{tmp_path / 'model.py'}:build"
    demo = load_config(SearchConfig, None, [SPACE_OVERRIDE]).with_absolute_paths()
    assert (demo.data, demo.base) == ("demo:target", "demo")


SPACE_OVERRIDE = "space.lr={type: loguniform, low: 1.0e-5, high: 1.0e-3}"


@pytest.mark.parametrize(
    "where", ["trial.class_norm=true", "space.class_norm={type: choice, values: [false, true]}"]
)
def test_class_norm_with_a_user_model_is_refused_at_load(where):
    with pytest.raises(ConfigError, match="class_norm needs the built-in model .* not torch"):
        load_config(
            SearchConfig,
            None,
            ["model={adapter: torch, factory: 'model.py:build'}", SPACE_OVERRIDE, where],
        )


def test_a_broken_yaml_file_is_named_with_line_and_column(tmp_path):
    path = write(tmp_path, "name: demo\n  space: 3\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:2:8: not valid YAML \(mapping values"):
        load_config(SearchConfig, path, [])


@pytest.mark.parametrize(
    "cls, override, message",
    [
        (
            SearchConfig,
            "space.lr={type: loguniform, low: 1.0e-5, high: 1.0e-3, log: true}",
            "unknown field 'space.lr.log'",
        ),
        (FinetuneConfig, "model.adapter=torch", "field 'model.factory' is required"),
    ],
)
def test_error_paths_are_the_ones_users_write_without_the_union_tag(cls, override, message):
    with pytest.raises(ConfigError) as error:
        load_config(cls, None, [override])
    assert message in str(error.value)
