"""The suite: schema, YAML loading, ``--set`` overrides and validation with field paths.

A suite file is the only way configuration enters forgetbench. Relative paths in it are
resolved against the suite file's folder, so a suite runs the same from any directory.
Every mistake becomes one :class:`ForgetbenchError` line naming the file, the field and
what would be valid.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from forgetbench import regularizers
from forgetbench.datafiles import DATA_SUFFIXES, DATASET_BUILDERS, DatasetSource
from forgetbench.errors import ForgetbenchError, shown
from forgetbench.schedule import SCHEDULES

FISHER_VARIANTS = ("true", "empirical")

PositiveFloat = Annotated[float, Field(gt=0)]
MixRatio = Annotated[float, Field(ge=0, lt=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?|mps)$")]


def _registered(name: str) -> str:
    """A regulariser's name as the registry knows it (looked up when a suite loads, so one
    registered after this module was imported is accepted too)."""
    known = regularizers.names()
    if name not in known:
        raise ValueError("Input should be " + ", ".join(repr(n) for n in known[:-1]) + f" or {known[-1]!r}")
    return name


class TaskSpec(_Strict):
    """One lm-eval task: a bundled one from ``tasks.include_path`` or any registered name."""

    name: Annotated[str, Field(min_length=1)]
    category: str | None = None  # qa, math, code ...: how the report groups general tasks
    metric: str | None = None    # the headline metric; default: the task's first metric
    # a document field whose equal values make one cluster of related items (the phrasings of
    # one question): confidence intervals then resample whole clusters, not items
    cluster: str | None = None


class TasksSpec(_Strict):
    # folders of lm-eval task YAMLs, registered with lm-eval (one folder, or a list: the bundled
    # tasks beside your own); a task name defined in two of them is refused
    include_path: tuple[Path, ...] = ()
    target: Annotated[list[TaskSpec], Field(min_length=1)]
    general: Annotated[list[TaskSpec], Field(min_length=1)]

    @field_validator("include_path", mode="before")
    @classmethod
    def _one_folder_is_a_list(cls, value: Any) -> Any:
        return () if value is None else [value] if isinstance(value, (str, Path)) else value

    @field_validator("general")
    @classmethod
    def _general_has_category(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        for task in tasks:
            if not task.category:
                raise ValueError(f"general task {shown(task.name)} needs a category "
                                 "(e.g. qa, math, code)")
        return tasks

    def all(self) -> list[tuple[TaskSpec, str]]:
        """(task, role) pairs, role being ``target`` or ``general``."""
        return [(t, "target") for t in self.target] + [(t, "general") for t in self.general]

    @model_validator(mode="after")
    def _unique_names(self) -> TasksSpec:
        names = [t.name for t in self.target + self.general]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task listed twice: {', '.join(dupes)}")
        return self


def _data_kind(value: Any) -> str:
    return "dataset" if isinstance(value, (dict, DatasetSource)) else "file"


# a mapping is a dataset, anything else a file path: a mistake is reported against that form only
DataSource = Annotated[Annotated[Path, Tag("file")] | Annotated[DatasetSource, Tag("dataset")],
                       Discriminator(_data_kind)]


class DataSpec(_Strict):
    """Each a JSONL file of rows {"prompt", "completion"} (loss on the completion) or {"text"},
    or a dataset (:class:`DatasetSource`: a hub id, a parquet/CSV file, a saved folder)."""

    target: DataSource                  # the fine-tuning data of the target domain
    replay: DataSource | None = None    # general data mixed in at ``mix_ratio``
    # held-out target rows: validation loss every train.eval_every steps, early stopping
    validation: DataSource | None = None
    # held-out general rows (never trained on): the in-training forgetting curve
    general_heldout: DataSource | None = None
    # general rows the EWC Fisher is estimated from; default: data.replay
    fisher: DataSource | None = None

    def sources(self) -> list[Path | DatasetSource]:
        """The data sources the suite sets, in field order."""
        return [s for s in (getattr(self, f) for f in type(self).model_fields) if s is not None]


class EwcSpec(_Strict):
    """How the diagonal Fisher of EWC is estimated on the base model (from data.fisher, else
    data.replay). ``true``: labels sampled from the model's own predictions (the Fisher
    information); ``empirical``: the data's labels (cheaper to explain, biased)."""

    samples: Annotated[int, Field(gt=0)] = 256   # examples, one gradient each
    fisher: Literal[FISHER_VARIANTS] = "true"    # type: ignore[valid-type]

    @field_validator("fisher", mode="before")
    @classmethod
    def _yaml_true(cls, value: Any) -> Any:
        return "true" if value is True else value  # YAML reads an unquoted true as a boolean


class TrainSpec(_Strict):
    batch_size: Annotated[int, Field(gt=0)] = 16
    grad_accum: Annotated[int, Field(gt=0)] = 1
    max_seq_len: Annotated[int, Field(gt=0)] = 256
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1  # cosine floor = lr × this
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    seed: int = 0
    device: Device = "auto"       # auto: cuda when available, else cpu
    nproc: Annotated[int, Field(gt=0)] = 1  # processes per point under torchrun (one per GPU)
    checkpoint_every: Annotated[int, Field(gt=0)] | None = None  # steps; resume uses the newest
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False                   # torch.compile each decoder block
    dtype: Literal["float32", "bfloat16"] = "float32"
    # chat models: a prompt/completion row becomes a user turn and an assistant turn of the
    # tokenizer's chat template, and the loss covers the assistant turn only ({"text"} rows
    # stay plain text)
    chat_template: bool = False
    # every N optimizer steps: loss on data.validation (early stopping) and data.general_heldout
    # (the forgetting curve), logged in train_log.jsonl
    eval_every: Annotated[int, Field(gt=0)] | None = None
    track_kl: bool = False  # also KL(base ‖ fine-tuned) on data.general_heldout at each eval
    # rows per forward pass of those evaluations (per process); default: the training micro-batch
    eval_batch_size: Annotated[int, Field(gt=0)] | None = None
    ewc: EwcSpec = EwcSpec()


class EvalSpec(_Strict):
    batch_size: Annotated[int, Field(gt=0)] = 32
    num_fewshot: Annotated[int, Field(ge=0)] | None = None  # None: each task's own default
    limit: Annotated[int, Field(gt=0)] | None = None        # items per task; None: all
    device: Device = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # lm-eval refuses tasks that execute generated code (humaneval, mbpp) without this opt-in
    confirm_run_unsafe_code: bool = False
    # chat models: each prompt goes through the tokenizer's chat template (lm-eval's
    # --apply_chat_template), few-shot examples as alternating user/assistant turns unless
    # fewshot_as_multiturn is off; scores with and without it never share an eval key
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = True
    system_instruction: str | None = None  # a system turn (or a prefix without a chat template)


class ClusterSpec(_Strict):
    """Where ``forgetbench sweep --executor slurm`` runs its jobs: one Slurm job per point (a job
    array, through submitit), one node each, ``train.nproc`` GPUs under torchrun."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: Annotated[int, Field(gt=0)] = 240  # minutes per job; at the limit it checkpoints and requeues
    gpus_per_node: Annotated[int, Field(ge=0)] | None = None  # default: train.nproc, or 0 on device cpu
    cpus_per_task: Annotated[int, Field(gt=0)] = 8
    mem_gb: Annotated[float, Field(gt=0)] | None = None
    array_parallelism: Annotated[int, Field(gt=0)] = 64  # jobs of the array running at once
    max_timeouts: Annotated[int, Field(ge=0)] = 3  # requeues after the time limit (preemptions: unlimited)
    signal_delay_s: Annotated[int, Field(ge=60)] = 120  # SIGUSR2 this long before the job is stopped
    setup: list[str] = []  # shell lines each job runs first: module load ..., source venv/bin/activate
    # any other sbatch option, e.g. {constraint: h100, exclusive: true}
    sbatch: dict[str, bool | int | float | str] = {}

    def gpus(self, train: TrainSpec) -> int:
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        return 0 if train.device == "cpu" else train.nproc


class SweepSpec(_Strict):
    """One grid: the product of its lists. ``sweep`` in a suite is a grid or a list of grids,
    whose points are joined in order without duplicates."""

    lr: Annotated[list[PositiveFloat], Field(min_length=1)]
    epochs: Annotated[list[PositiveFloat], Field(min_length=1)] = [1.0]
    mix_ratio: Annotated[list[MixRatio], Field(min_length=1)] = [0.0]
    # none, or a registered regulariser (forgetbench/regularizers.py: l2 is L2-SP, ewc is EWC)
    regularizer: Annotated[list[Annotated[str, AfterValidator(_registered)]], Field(min_length=1)] = ["none"]
    lam: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)] = [0.0]
    # how a regulariser acts (forgetbench/train/regularizers.py): decoupled, a pull toward the
    # base weights at the rate λ·lr after each AdamW step (λ ~ 1/the distance a weight may
    # drift); coupled, λ·penalty added to the loss, whose pull Adam normalises away at first
    regularizer_form: Annotated[list[Literal[regularizers.FORMS]],  # type: ignore[valid-type]
                                Field(min_length=1)] = [regularizers.DEFAULT_FORM]
    schedule: Annotated[list[Literal[SCHEDULES]], Field(min_length=1)] = ["cosine"]  # type: ignore[valid-type]
    # discriminative learning rates (ULMFiT): depth l gets lr / xi^(L + 1 - l), with the
    # embeddings at 0, the L decoder blocks at 1..L and the head at L + 1; 1 trains every
    # depth at lr (ULMFiT used 2.6)
    xi: Annotated[list[Annotated[float, Field(ge=1)]], Field(min_length=1)] = [1.0]
    # early stopping: evaluations (every train.eval_every steps) without a new best validation
    # loss before training stops; the best step is exported. None: train to the end
    patience: Annotated[list[Annotated[int, Field(gt=0)] | None], Field(min_length=1)] = [None]
    # replicates: the same point trained with each of these seeds (in place of train.seed),
    # to tell an effect from the noise of training. None: train.seed alone
    # (strict: YAML's true or "1" is a typo, not seed 1)
    seed: Annotated[list[Annotated[int, Field(strict=True)]], Field(min_length=1)] | None = None

    def points(self) -> list[Point]:
        """The product of the lists; a point's seed is as listed (Suite.points makes it canonical)."""
        return [Point(lr=lr, epochs=epochs, mix_ratio=mix, regularizer=reg,
                      lam=0.0 if reg == "none" else lam, regularizer_form=form, schedule=sched,
                      xi=xi, patience=pat, seed=seed)
                for lr, epochs, mix, reg, lam, form, sched, xi, pat, seed in itertools.product(
                    self.lr, self.epochs, self.mix_ratio, self.regularizer, self.lam,
                    self.regularizer_form, self.schedule, self.xi, self.patience, self.seed or [None])]


class Mitigation(NamedTuple):
    """One mitigation a point has on, as every table, label and figure names it."""

    kind: str        # replay, a regulariser's name (l2, ewc, ...), xi or patience
    strength: float  # its setting: the mix ratio, λ, ξ or the patience
    text: str        # "replay mix 0.1", "L2-SP λ=30", "EWC λ=1000 (coupled)", "discriminative lr ξ=2.6", ...
    short: str       # in point labels: "mix 0.1", "L2-SP λ=30", "ξ=2.6", "patience 2"


def mitigation_kinds() -> list[str]:
    """Every kind of mitigation, in the order reports list them."""
    return ["replay", *regularizers.names()[1:], "xi", "patience"]


class Point(_Strict):
    """One grid point: the values a sweep varies. ``seed`` is a replicate's training seed;
    None is train.seed's (a suite's points are canonical: never ``seed == train.seed``)."""

    lr: float
    epochs: float
    mix_ratio: float
    regularizer: str
    lam: float
    # None without a regulariser; a point recorded before the forms existed has none and
    # trained coupled, the only form there was
    regularizer_form: Literal[regularizers.FORMS] | None = None  # type: ignore[valid-type]
    schedule: str = "cosine"
    xi: float = 1.0
    patience: int | None = None
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _form_of_its_regularizer(cls, data: Any) -> Any:
        if isinstance(data, dict) and "regularizer" in data:
            form = data.get("regularizer_form")
            form = None if data["regularizer"] == regularizers.NONE else form or "coupled"
            data = {**data, "regularizer_form": form}
        return data

    def describe(self) -> list[Mitigation]:
        """The mitigations this point has on, in the reports' order; empty: plain training."""
        out = []
        if self.mix_ratio > 0:
            out.append(Mitigation("replay", self.mix_ratio, f"replay mix {self.mix_ratio:g}",
                                  f"mix {self.mix_ratio:g}"))
        if self.regularizer != regularizers.NONE:
            # λ means another thing in each form: a form other than the default is named
            form = self.regularizer_form or "coupled"
            text = f"{regularizers.title(self.regularizer)} λ={self.lam:g}" + (
                f" ({form})" if form != regularizers.DEFAULT_FORM else "")
            out.append(Mitigation(self.regularizer, self.lam, text, text))
        if self.xi != 1:
            out.append(Mitigation("xi", self.xi, f"discriminative lr ξ={self.xi:g}", f"ξ={self.xi:g}"))
        if self.patience is not None:
            out.append(Mitigation("patience", self.patience, f"early stopping (patience {self.patience})",
                                  f"patience {self.patience}"))
        return out

    def mitigations(self) -> list[str]:
        """The kinds of :meth:`describe`."""
        return [m.kind for m in self.describe()]

    def label_parts(self) -> list[str]:
        """lr, epochs, mix (always), a schedule other than cosine, each other mitigation, then
        a replicate's seed."""
        parts = [f"lr {self.lr:g}", f"epochs {self.epochs:g}", f"mix {self.mix_ratio:g}"]
        if self.schedule != "cosine":
            parts.append(self.schedule)
        parts += [m.short for m in self.describe() if m.kind != "replay"]
        return parts + ([f"seed {self.seed}"] if self.seed is not None else [])

    def label(self) -> str:
        """Short, for progress lines and plot legends."""
        return ", ".join(self.label_parts())


class Suite(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]  # the run directory, runs/<name>/
    model: Annotated[str, Field(min_length=1)]  # builtin:tiny-llama, a local HF dir, or a hub id
    # run Python code shipped with a model (its config's auto_map); off: such a model is refused
    trust_remote_code: bool = False
    # the release gate (a `forgetbench compare --gate` file): what the sweep's verdict and
    # `compare` without --gate judge a point against the base model by; none: no general task may
    # lose 2 points or more
    gate: Path | None = None
    # which points keep their exported model once evaluated (scores, logs and the report stay
    # for all): pareto, the points on the learning-forgetting front; all; or none
    keep_models: Literal["pareto", "all", "none"] = "pareto"
    data: DataSpec
    tasks: TasksSpec
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    # the Slurm resources of `forgetbench sweep --executor slurm` (or a --cluster FILE)
    cluster: ClusterSpec = ClusterSpec()
    # one grid, or a list of grids (stored as a list either way)
    sweep: Annotated[list[SweepSpec], Field(min_length=1)]

    @field_validator("name")
    @classmethod
    def _not_the_evaluation_store(cls, name: str) -> str:
        reserved = {"evals": "the evaluation store's", "compare": "forgetbench compare's outputs'"}
        if name in reserved:
            raise ValueError(f"{shown(name)} is {reserved[name]} folder beside the run directories; "
                             "choose another name")
        return name

    @field_validator("sweep", mode="before")
    @classmethod
    def _one_grid_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @property
    def grids(self) -> list[SweepSpec]:
        return self.sweep

    @model_validator(mode="after")
    def _data_for_the_grid(self) -> Suite:
        for i, grid in enumerate(self.grids):
            where = "sweep" if len(self.grids) == 1 else f"sweep[{i}]"
            if any(r > 0 for r in grid.mix_ratio) and self.data.replay is None:
                raise ValueError(f"{where}.mix_ratio has values above 0 but data.replay is not "
                                 "set: add a replay JSONL or use mix_ratio: [0.0]")
            for name in dict.fromkeys(grid.regularizer):
                reg = regularizers.get(name)
                problem = reg.check(self) if reg is not None and reg.check is not None else None
                if problem:
                    raise ValueError(f"{where}.regularizer {name} {problem}")
                lacking = [f for f in grid.regularizer_form if reg is not None and f not in reg.forms]
                if lacking:
                    raise ValueError(f"{where}.regularizer_form {lacking[0]}: regulariser {name} has no "
                                     f"{lacking[0]} form; set {where}.regularizer_form to "
                                     f"[{', '.join(reg.forms)}]")
            if any(p is not None for p in grid.patience) and (
                    self.train.eval_every is None or self.data.validation is None):
                raise ValueError(f"{where}.patience needs train.eval_every and data.validation "
                                 "(held-out target rows) to early-stop on")
        if self.train.track_kl and (self.train.eval_every is None
                                    or self.data.general_heldout is None):
            raise ValueError("train.track_kl needs train.eval_every and data.general_heldout")
        return self

    def points(self) -> list[Point]:
        """Every grid's points in a stable order, without duplicates. λ only varies where a
        regularizer is on, so a point without one appears once (with lam 0) however many λ
        values are swept; grids that share points (e.g. the same plain baseline) share them.
        A swept seed equal to train.seed becomes None: that replicate is the unswept point."""
        return list(dict.fromkeys(
            p.model_copy(update={"seed": None}) if p.seed == self.train.seed else p
            for grid in self.grids for p in grid.points()))

    def for_point(self, point: Point) -> Suite:
        """The suite as ``point`` trains: train.seed is the point's seed where it has one."""
        if point.seed is None or point.seed == self.train.seed:
            return self
        return self.model_copy(update={"train": self.train.model_copy(update={"seed": point.seed})})

    def all_tasks(self) -> list[tuple[TaskSpec, str]]:
        """(task, role) pairs, role being ``target`` or ``general``."""
        return self.tasks.all()

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- loading

def _apply_override(raw: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ForgetbenchError(f"--set {shown(assignment)}: expected key=value, "
                               "e.g. --set train.batch_size=8 or --set sweep.lr=[1e-4,1e-3]")
    key, _, text = assignment.partition("=")
    # sweep.1.lr addresses the second grid of a list of grids
    parts: list[Any] = [int(k) if k.isdigit() else k for k in key.strip().split(".")]
    node: Any = raw
    for i, part in enumerate(parts):
        here = ".".join(map(str, parts[:i + 1]))
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ForgetbenchError(f"--set {key}: {here}: expected an index below {len(node)}")
        elif not isinstance(node, dict):
            raise ForgetbenchError(f"--set {key}: {'.'.join(map(str, parts[:i]))} is not a section")
        if i == len(parts) - 1:
            break
        if isinstance(node, dict) and node.get(part) is None:
            node[part] = {}
        node = node[part]
    try:
        node[parts[-1]] = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ForgetbenchError(f"--set {key}: value {shown(text)} is not valid YAML ({exc.problem})")


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("literal[", "function-", "list[", "float", "int")):
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict, model: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        # name the valid keys of the section the unknown key sits in
        section: Any = model
        for part in err["loc"][:-1]:
            if isinstance(part, int) or section is None:
                continue
            field = getattr(section, "model_fields", {}).get(part)
            section = _submodel(field.annotation) if field else None
        valid = sorted(getattr(section, "model_fields", {}))
        return (f"unknown field {shown(err['loc'][-1])}"
                + (f"; valid fields here: {', '.join(valid)}" if valid else ""))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {shown(err['input'])})"
    return msg


def _submodel(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _resolve_data(value: Path | DatasetSource | None, field: str, base: Path,
                  source: str) -> Path | DatasetSource | None:
    """A data field with its paths absolute: a JSONL file stays a Path; a parquet/CSV/Arrow
    file or a folder becomes a DatasetSource; a DatasetSource's ``dataset`` is a local path
    when it is one (explicitly, or present beside the suite), else a hub id."""
    if value is None:
        return None
    if isinstance(value, Path):
        full = (base / value.expanduser()).resolve()
        if full.is_dir() or full.suffix in DATASET_BUILDERS:
            return _resolve_data(DatasetSource(dataset=str(value)), field, base, source)
        if not full.exists():
            raise ForgetbenchError(f"{source}: {field}: file not found: {full} "
                                   "(paths are relative to the suite file's folder)")
        return full
    text = value.dataset
    if text.startswith((".", "/", "~")) or (base / text).exists() or Path(text).suffix in DATASET_BUILDERS:
        full = (base / Path(text).expanduser()).resolve()
        if not full.exists():
            raise ForgetbenchError(f"{source}: {field}.dataset: not found: {full} (paths are relative "
                                   "to the suite file's folder; a hub id looks like org/name)")
        if full.is_dir() and not any(f.name in ("state.json", "dataset_dict.json") or f.suffix in DATA_SUFFIXES
                                     for f in full.rglob("*")):
            raise ForgetbenchError(f"{source}: {field}: {full} is a folder with no data in it (neither "
                                   "a dataset saved by save_to_disk nor data files); set it to a JSONL, "
                                   "parquet or CSV file, or a saved dataset's folder")
        return value.model_copy(update={"dataset": str(full)})
    return value


def _resolve_paths(suite: Suite, base: Path, source: str) -> Suite:
    def resolve(p: Path | None, field: str, *, folder: bool = False) -> Path | None:
        if p is None:
            return None
        full = (base / p).expanduser().resolve()
        if not full.exists() or (folder and not full.is_dir()):
            kind = "folder" if folder else "file"
            raise ForgetbenchError(f"{source}: {field}: {kind} not found: {full} "
                                   f"(paths are relative to the suite file's folder)")
        if not folder and full.is_dir():
            raise ForgetbenchError(f"{source}: {field}: {full} is a folder, not a file; "
                                   "set it to the JSONL file itself")
        return full

    data = suite.data.model_copy(update={
        f: _resolve_data(getattr(suite.data, f), f"data.{f}", base, source) for f in DataSpec.model_fields})
    many = len(suite.tasks.include_path) > 1
    tasks = suite.tasks.model_copy(update={"include_path": tuple(
        resolve(p, f"tasks.include_path[{i}]" if many else "tasks.include_path", folder=True)
        for i, p in enumerate(suite.tasks.include_path))})
    model = suite.model
    # a path (explicit, or relative to the suite and present there) is a local directory;
    # anything else is a hub id
    if not model.startswith("builtin:") and (model.startswith((".", "/", "~"))
                                             or (base / model).is_dir()):
        model = str(resolve(Path(model), "model", folder=True))
    return suite.model_copy(update={"data": data, "tasks": tasks, "model": model,
                                    "gate": resolve(suite.gate, "gate")})


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    """Read, override, validate and resolve a suite file; every failure is a ForgetbenchError."""
    path = Path(path)
    source = str(path)
    raw = read_yaml_mapping(path, "suite file", "name, model, data, tasks, train, eval, sweep")
    for assignment in overrides:
        _apply_override(raw, assignment)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        # a single grid is wrapped into a list to validate: name it as the file does
        rename = ("sweep[0]", "sweep") if isinstance(raw.get("sweep"), dict) else None
        raise ForgetbenchError(validation_message(source, exc, Suite, rename)) from None
    return _resolve_paths(suite, path.resolve().parent, source)


def load_cluster(path: str | Path) -> ClusterSpec:
    """A ``--cluster`` file: the fields of a suite's ``cluster:`` section."""
    raw = read_yaml_mapping(Path(path), "cluster file", "partition, time, gpus_per_node, account, sbatch ...")
    try:
        return ClusterSpec.model_validate(raw)
    except ValidationError as exc:
        raise ForgetbenchError(validation_message(str(path), exc, ClusterSpec)) from None


def validation_message(source: str, exc: ValidationError, model: type[BaseModel],
                       rename: tuple[str, str] | None = None) -> str:
    """One line for a file that failed ``model``'s validation: the file, the first field in
    error and what would be valid there, and how many more errors there are."""
    errors = exc.errors()
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = _field_path(first["loc"])
    if rename:
        where = where.replace(*rename, 1)
    return f"{source}: {where}: {_describe(first, model)}{more}"


def read_yaml_mapping(path: Path, what: str, fields: str) -> dict:
    """A YAML file (``what``: "suite file", ...) that must hold a mapping of ``fields``, read as
    UTF-8; any problem is one line naming the file."""
    source = str(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.y*ml"))[:3]
        raise ForgetbenchError(f"{source}: a folder, not a {what}; give the YAML file itself"
                               + (f" (it holds {', '.join(inside)})" if inside else ""))
    if not path.is_file():
        raise ForgetbenchError(f"{source}: {what} not found")
    try:
        raw = yaml.load(read_utf8(path), Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ForgetbenchError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ForgetbenchError(f"{source}: expected a mapping of fields ({fields})")
    return raw


def read_utf8(path: Path) -> str:
    """A user's text file (a suite, a task YAML) as UTF-8; a byte that is not is one line
    naming the file and the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ForgetbenchError(f"{path}: not UTF-8 text at line {line} (byte "
                               f"0x{data[exc.start]:02x}); save the file as UTF-8") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key that one mapping holds twice (PyYAML lets the last
    win, silently). Checked on the composed nodes, before ``<<`` merges are flattened: a merged
    key that the mapping sets again is an override, not a duplicate."""

    def compose_document(self):
        root = super().compose_document()
        seen, todo = set(), [root]
        while todo:  # each node once: an alias is the node it names
            node = todo.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                first: dict[Any, yaml.Node] = {}
                for key, _ in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                        name = self.construct_object(key)
                        if name in first:
                            raise yaml.constructor.ConstructorError(
                                None, None, f"key {shown(name)} is given twice in one mapping (first at "
                                f"line {first[name].start_mark.line + 1}); keep one", key.start_mark)
                        first[name] = key
                todo += [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                todo += node.value
        return root
