"""Typed configuration, validated once where it enters (YAML file or `--set key=value`)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raygan.augment import parse_augment
from raygan.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrialConfig(Strict):
    """One fine-tuning run: hyperparameters and schedule."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-4, gt=0)
    lr_g: float | None = Field(None, gt=0, description="overrides lr for G")
    lr_d: float | None = Field(None, gt=0, description="overrides lr for D")
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    freeze_g: int = Field(0, ge=0)
    freeze_d: int = Field(0, ge=0)
    # The recipe: loss, stabilisers and transfer regularisers. Defaults: the plain recipe plus
    # the matching-aware D, which kept the class best in bench/recipe.py (bench/README §7).
    loss: Literal["bce", "hinge"] = "bce"
    d_steps: int = Field(1, ge=1, le=5, description="D updates per G update")
    augment: str = Field("none", description="none | diffaug[:ops] | ada[:ops]")
    ema_decay: float | None = Field(None, ge=0, lt=1, description="generator EMA; None: off")
    ema_start: int = Field(0, ge=0, description="steps before the EMA starts averaging")
    r1_gamma: float = Field(0.0, ge=0, description="R1 penalty on real images")
    r1_every: int = Field(16, ge=1, description="lazy R1: every N steps, scaled by N")
    lecam_weight: float = Field(0.0, ge=0)
    mismatch_weight: float = Field(
        1.0, ge=0, description="matching-aware D: real images with a wrong label are fake"
    )
    anchor_weight: float = Field(0.0, ge=0, description="L2-SP pull toward pretrained weights")
    norm_affine_only: bool = Field(False, description="train only norm scale/shift + classes")
    # Off by default: only the built-in model can grow it (on in search_spaces/demo.yaml).
    class_norm: bool = Field(
        False, description="add a per-class scale/shift, zero at start, to G's norms"
    )
    # Off: on CPU, compiling took 17-53 s and the step ran 0.91-1.02x as fast (bench/README §1).
    compile: bool = Field(False, description="torch.compile G and D for the training step")
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int | None = Field(None, ge=1, description="default: eval_every")
    eval_samples: int = Field(500, ge=20)
    eval_at_start: bool = Field(
        True, description="score the base before step 1 (a search scores it once, not per trial)"
    )
    feature_extractor: Literal["classifier", "inception"] = "classifier"
    inception_weights: str | None = None
    collapse_stop: float | None = Field(None, gt=0, le=1, description="stop when collapse exceeds")
    collapse_patience: int = Field(2, ge=1)
    seed: int = 0

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_policy(cls, value: Any) -> Any:
        if isinstance(value, bool):  # `augment: true` before policies existed
            return "diffaug" if value else "none"
        if isinstance(value, str):
            parse_augment(value)  # ValueError names the bad part
        return value

    @model_validator(mode="after")
    def _checkpoints_follow_evaluations(self) -> TrialConfig:
        # A checkpoint is kept or dropped by its score, so it must have been evaluated.
        if self.checkpoint_every is not None and self.checkpoint_every % self.eval_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"eval_every ({self.eval_every})"
            )
        return self

    @property
    def g_lr(self) -> float:
        return self.lr_g or self.lr

    @property
    def d_lr(self) -> float:
        return self.lr_d or self.lr

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or self.eval_every


ClassMap = dict[str, str | int]


class RayganModelSpec(Strict):
    """raygan's built-in architecture; `base` is a raygan checkpoint, a state_dict file or demo."""

    adapter: Literal["raygan"] = "raygan"
    class_map: ClassMap | None = None


class TorchModelSpec(Strict):
    """The user's own PyTorch G and D; `base` holds their weights."""

    adapter: Literal["torch"]
    factory: str = Field(pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$")
    factory_args: dict[str, Any] = Field(default_factory=dict)
    latent_dim: int = Field(128, ge=1)
    labels: Literal["index", "onehot"] = "index"
    freeze_g: list[str] | None = Field(None, description="freeze order; default: G's children")
    freeze_d: list[str] | None = Field(None, description="freeze order; default: D's children")
    class_map: ClassMap | None = None


class KerasModelSpec(Strict):
    """A Keras 3 CGAN; `base` is the directory with generator.keras and discriminator.keras."""

    adapter: Literal["keras"]
    latent_dim: int = Field(128, ge=1)
    labels: Literal["index", "onehot"] = "onehot"
    class_map: ClassMap | None = None


ModelSpec = Annotated[
    RayganModelSpec | TorchModelSpec | KerasModelSpec, Field(discriminator="adapter")
]


class FinetuneConfig(TrialConfig):
    """`raygan finetune`: one trial from a pretrained checkpoint on a data set."""

    data: str = "demo:target"
    base: str = Field("demo", description="pretrained weights: see `model`")
    model: ModelSpec = RayganModelSpec()
    output: str = "runs/finetune"
    skip_corrupt: bool = False

    @model_validator(mode="after")
    def _class_norm_on_the_builtin_model(self) -> FinetuneConfig:
        check_class_norm(self.model, self.class_norm)
        return self


class PretrainConfig(TrialConfig):
    """`raygan pretrain`: train a base model from scratch with the same loop, no freezing."""

    data: str = "demo:source"
    output: str = "runs/pretrain"
    resolution: Literal[32, 64, 128] = 64
    channels: int = Field(16, ge=1)
    skip_corrupt: bool = False
    eval_at_start: bool = False
    # Defaults are the recipe of the shipped demo base model (StyleGAN-like Adam betas).
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(32, ge=1)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    eval_every: int = Field(500, ge=1)
    # An architecture choice, so a base model's alone: fine-tuning keeps what the base has.
    latent_norm: bool = Field(
        False, description="G's norms also get a per-sample scale/shift from z (needs class_norm)"
    )

    @model_validator(mode="after")
    def _latent_norm_with_class_norm(self) -> PretrainConfig:
        if self.latent_norm and not self.class_norm:
            raise ValueError("latent_norm needs class_norm: set class_norm: true as well")
        return self


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; ML configs mean a float
    (YAML 1.2). Lax fields would coerce it, but `seed_recipe` values are checked as given."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are parsed as YAML scalars (`1e-4`, `true`, `null`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = load_yaml(value) if value else None
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{_yaml_place(path, e)}: not valid YAML ({_yaml_problem(e)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return raw


def _yaml_place(path: Path, error: yaml.YAMLError) -> str:
    """`path:line:column` of the problem, as compilers print it, when PyYAML knows it."""
    mark = getattr(error, "problem_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)


def _yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    return ", ".join(p for p in (context, problem) if p) or str(error).splitlines()[0]


def validate(cls: type[Model], raw: dict[str, Any], origin: str) -> Model:
    """Build `cls` from raw data or raise ConfigError naming the field and the bad value."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {describe(e)}") from None


def _union_tags(union: Any, field: str) -> set[str]:
    """The tag values of a discriminated union `Annotated[A | B, Field(discriminator=field)]`."""
    return {get_args(m.model_fields[field].annotation)[0] for m in get_args(get_args(union)[0])}


def _field_path(loc: tuple[int | str, ...]) -> str:
    # pydantic puts a tagged union's tag in the path (space.lr.loguniform.low): users never
    # write it there, so leave it out.
    tags = _union_tags(ParamSpec, "type") | _union_tags(ModelSpec, "adapter")
    return ".".join(str(p) for i, p in enumerate(loc) if not (i and p in tags))


def describe(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        field = _field_path(err["loc"])
        if not field and err["type"] == "value_error":
            parts.append(str(err["ctx"]["error"]))
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown field '{field}'")
        elif err["type"] == "missing":
            parts.append(f"field '{field}' is required")
        else:
            parts.append(f"field '{field}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def load_config(cls: type[Model], path: str | Path | None, overrides: list[str]) -> Model:
    raw = read_yaml(path) if path else {}
    for key, value in parse_overrides(overrides).items():
        set_dotted(raw, key, value)
    # A bad --set is not the file's fault: name both.
    origin = " with ".join(
        [*([str(path)] if path else []), *([f"--set {' '.join(overrides)}"] if overrides else [])]
    )
    return validate(cls, raw, origin or "defaults")


# ---- search spaces -----------------------------------------------------------------------

SEARCHABLE = (
    "lr",
    "lr_g",
    "lr_d",
    "beta1",
    "beta2",
    "freeze_g",
    "freeze_d",
    "augment",
    "batch_size",
    "loss",
    "d_steps",
    "ema_decay",
    "r1_gamma",
    "lecam_weight",
    "mismatch_weight",
    "anchor_weight",
    "norm_affine_only",
    "class_norm",
)


class IntRange(Strict):
    type: Literal["int"]
    low: int
    high: int


class Uniform(Strict):
    type: Literal["uniform"]
    low: float
    high: float


class LogUniform(Strict):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class Choice(Strict):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


ParamSpec = Annotated[IntRange | Uniform | LogUniform | Choice, Field(discriminator="type")]


class SchedulerConfig(Strict):
    """What steers trials between evaluations; every interval counts evaluations.

    asha: a trial must survive `grace_evals` evaluations before it can be stopped, and each
    rung keeps the best 1/`reduction_factor`.
    pbt: every `perturbation_interval` evaluations, a trial in the worst `quantile_fraction`
    restarts from a best trial's checkpoint with that trial's settings, its continuous ones
    (uniform/loguniform in the space) scaled by 0.8 or 1.2, or redrawn with
    `resample_probability`.
    none: every trial runs all its steps."""

    kind: Literal["asha", "pbt", "none"] = "asha"
    # A GAN's first evaluation predicts its best poorly; cutting there lost the winner on 2 of
    # 5 benchmark seeds, and 2 kept it on all (bench/README §4).
    grace_evals: int = Field(2, ge=1)
    reduction_factor: int = Field(2, ge=2)
    perturbation_interval: int = Field(2, ge=1)
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)


DEFAULT_SEED_HINT = (
    " (the default seed recipe: set `seed_recipe` to a point of your space, or `seed_recipe: null`)"
)


class SearchConfig(Strict):
    name: str = Field("raygan", pattern=r"^[A-Za-z0-9_.-]+$")
    data: str = "demo:target"
    base: str = "demo"
    model: ModelSpec = RayganModelSpec()
    skip_corrupt: bool = False
    trial: TrialConfig = TrialConfig()
    space: dict[str, ParamSpec]
    # DCGAN's Adam settings, TrialConfig's own: lr 1e-5 never left the base in the demo's
    # trials (bench/README §4).
    seed_recipe: dict[str, Any] | None = Field(
        default_factory=lambda: {"lr": 2e-4, "beta1": 0.5, "freeze_d": 0, "freeze_g": 0},
        description="evaluated first, so the report can say how much the search beat it",
    )
    num_trials: int = Field(8, ge=1)
    workers: int = Field(1, ge=1, description="DDP workers per trial")
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    max_concurrent: int | None = Field(None, ge=1, description="default: what the cluster fits")
    seed: int = 0
    # gp: with ASHA it matched random search's best in 0.39x its steps at demo scale, and did
    # better than TPE on a proxy (bench/README §4).
    searcher: Literal["gp", "tpe", "random", "grid"] = Field(
        "gp", description="grid: every point of the `choice` and `int` specs, no seed point"
    )
    scheduler: SchedulerConfig = SchedulerConfig()
    max_failures: int = Field(2, ge=0, description="retries of a failed trial from its checkpoint")
    keep_checkpoints: int = Field(2, ge=1, description="per trial, best by objective")
    storage: str = "runs"
    rescore_top: int = Field(
        3, ge=0, description="export re-scores the best N checkpoints on fresh samples; 0: off"
    )
    # The objective does not count the class: on digits it exported class accuracy 0.58 while
    # two trials reached 0.70+ (bench/README §7). A floor keeps such models out of the export.
    min_class_accuracy: float | None = Field(
        None, ge=0, le=1, description="export only checkpoints whose class accuracy reaches this"
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_directory_of_its_own(cls, name: str) -> str:
        if set(name) == {"."}:  # <storage>/.. would be the parent of the storage
            raise ValueError(f"name {name!r} is not a directory of its own")
        return name

    @model_validator(mode="after")
    def _space_names_hyperparameters_within_bounds(self) -> SearchConfig:
        for name, spec in self.space.items():
            if name not in SEARCHABLE:
                raise ValueError(f"space.{name}: not searchable; choose from {list(SEARCHABLE)}")
            bounds = spec.values if isinstance(spec, Choice) else [spec.low, spec.high]
            if not isinstance(spec, Choice):
                _require_range(name, spec)
            for value in bounds:
                try:
                    TrialConfig.model_validate({**self.trial.model_dump(), name: value})
                except ValidationError as e:
                    raise ValueError(
                        f"space.{name}: value {value!r} is invalid: {describe(e)}"
                    ) from None
        if self.seed_recipe:
            try:
                TrialConfig.model_validate({**self.trial.model_dump(), **self.seed_recipe})
            except ValidationError as e:
                raise ValueError(f"seed_recipe: {describe(e)}") from None
            hint = DEFAULT_SEED_HINT if "seed_recipe" not in self.model_fields_set else ""
            for name, value in self.seed_recipe.items():
                if name in self.space and not _within(self.space[name], value):
                    raise ValueError(f"seed_recipe.{name}: {value!r} is outside space.{name}{hint}")
        return self

    @model_validator(mode="after")
    def _class_norm_on_the_builtin_model(self) -> SearchConfig:
        recipe = self.seed_recipe or {}
        check_class_norm(
            self.model,
            self.trial.class_norm or "class_norm" in self.space or recipe.get("class_norm"),
        )
        return self

    @model_validator(mode="after")
    def _whole_gpus_for_ddp_workers(self) -> SearchConfig:
        # With a fraction, Ray may pack two workers of one trial onto one GPU, where NCCL
        # refuses to run (and gloo would only share the device).
        if self.workers > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(
                f"gpus_per_worker ({self.gpus_per_worker:g}) must be a whole number when "
                f"workers > 1 ({self.workers}): each DDP worker needs a GPU of its own"
            )
        return self

    @model_validator(mode="after")
    def _grid_of_discrete_specs(self) -> SearchConfig:
        if self.searcher != "grid":
            return self
        for name, spec in self.space.items():
            if not isinstance(spec, (Choice, IntRange)):
                raise ValueError(
                    f"space.{name}: searcher grid takes `choice` and `int` specs only, got "
                    f"{spec.type}: list the values to try as a choice"
                )
        points = grid_size(self.space)
        if self.num_trials > points:
            raise ValueError(
                f"num_trials ({self.num_trials}) exceeds the grid's {points} points: "
                f"set num_trials to {points} or fewer"
            )
        return self

    @model_validator(mode="after")
    def _pbt_alone_over_continuous_specs(self) -> SearchConfig:
        if self.scheduler.kind != "pbt":
            return self
        if self.searcher != "random":
            # Ray refuses PBT beside a search algorithm, and PBT picks its own new points.
            raise ValueError(
                f"scheduler.kind pbt needs `searcher: random` (got {self.searcher}): PBT "
                "chooses new points itself by perturbing the best trials"
            )
        if not continuous_names(self.space):
            raise ValueError(
                "scheduler.kind pbt perturbs uniform/loguniform specs, and the space has none"
            )
        if self.workers > 1:
            # PBT pauses trials mid-run; a paused Ray Train trial may keep its workers'
            # placement group (ray-project/ray#54305) and later trials wait forever.
            raise ValueError(f"scheduler.kind pbt needs workers: 1 (got {self.workers})")
        perturb = self.scheduler.perturbation_interval * self.trial.eval_every
        if perturb % self.trial.checkpoint_interval:
            raise ValueError(
                f"trial.checkpoint_every ({self.trial.checkpoint_interval}) must divide "
                f"scheduler.perturbation_interval x trial.eval_every ({perturb} steps): PBT "
                "copies the checkpoint of the evaluation where it perturbs"
            )
        return self

    def with_absolute_paths(self) -> SearchConfig:
        """Paths as the driver sees them: Ray runs each trial from a directory of its own, so
        `data`, `base` and a `file.py:callable` factory relative to here would not resolve."""
        update: dict[str, Any] = {"data": _absolute(self.data), "base": _absolute(self.base)}
        factory = getattr(self.model, "factory", None)
        if factory:
            target, _, attr = factory.rpartition(":")
            if target.endswith(".py"):
                model = self.model.model_copy(update={"factory": f"{_absolute(target)}:{attr}"})
                update["model"] = model
        return self.model_copy(update=update)

    def trial_config(self, params: dict[str, Any]) -> TrialConfig:
        """The fixed trial settings with one trial's sampled hyperparameters."""
        return TrialConfig.model_validate({**self.trial.model_dump(), **params})


def grid_values(spec: IntRange | Choice) -> list[Any]:
    return list(spec.values) if isinstance(spec, Choice) else list(range(spec.low, spec.high + 1))


def check_class_norm(model: RayganModelSpec | TorchModelSpec | KerasModelSpec, used: Any) -> None:
    """`class_norm` adds layers to G, which only raygan's own architecture can do."""
    if used and model.adapter != "raygan":
        raise ValueError(
            f"class_norm needs the built-in model (model.adapter: raygan), not "
            f"{model.adapter}: turn it off, or leave it out of the space and seed_recipe"
        )


def grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(grid_values(spec)) for spec in space.values())


def continuous_names(space: dict[str, Any]) -> list[str]:
    """The specs PBT may perturb mid-run: a new int or choice (freezing, batch size, loss)
    would not fit the optimizer state it restores."""
    return [name for name, spec in space.items() if isinstance(spec, (Uniform, LogUniform))]


def _absolute(path: str) -> str:
    """An existing local path made absolute; `demo`, `demo:...` and URIs stay as they are."""
    if path == "demo" or path.startswith("demo:") or "://" in path or not Path(path).exists():
        return path
    return str(Path(path).resolve())


def _require_range(name: str, spec: IntRange | Uniform | LogUniform) -> None:
    if spec.low == spec.high:
        raise ValueError(
            f"space.{name}: low equals high ({spec.low}): a fixed value is not searched; "
            f"set trial.{name}: {spec.low} instead"
        )
    if spec.low > spec.high:
        raise ValueError(f"space.{name}: low ({spec.low}) must be below high ({spec.high})")


def _within(spec: IntRange | Uniform | LogUniform | Choice, value: Any) -> bool:
    if isinstance(spec, Choice):
        return value in spec.values
    return isinstance(value, (int, float)) and spec.low <= value <= spec.high


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """`trial.steps=50` sets raw["trial"]["steps"]."""
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    node[leaf] = value
