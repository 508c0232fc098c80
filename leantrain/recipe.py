"""A recipe = data + model + train sections and a list of methods. YAML, ``--set`` and Python agree.

    data:    {name: text, path: null}            # the registered data kind's config dataclass
    model:   {name: gpt, n_layer: 4, ...}        # the registered model's config dataclass
    train:   {max_steps: 2000, lr: 1.0e-3, ...}  # TrainConfig
    methods: [{name: raptr, ...}, ...]           # each method's Config dataclass
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from .config import apply_overrides, build, check, load_yaml, to_dict
from .errors import ConfigError
from .registry import get_data, get_method, get_model

BUNDLED_RECIPES = Path(__file__).resolve().parent / "recipes"
"""Recipes installed with the package (``leantrain/recipes/NAME.yaml``), loaded by ``NAME``."""


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in BUNDLED_RECIPES.glob("*.yaml"))


def find_recipe(path_or_name: str | Path) -> Path:
    """A recipe file: an existing path as given, else a bundled recipe by name (``baseline_char`` or
    ``baseline_char.yaml``). A bare name never shadows a file of that name in the working directory."""
    path = Path(path_or_name)
    if path.is_file() or len(path.parts) != 1:
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path} (bundled recipes, by name: "
                              f"{', '.join(bundled_recipes())})")
        return path
    bundled = BUNDLED_RECIPES / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if bundled.is_file():
        return bundled
    close = difflib.get_close_matches(path.stem, bundled_recipes(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"recipe not found: {path_or_name} is neither a file nor a bundled recipe{hint}; "
                      f"bundled: {', '.join(bundled_recipes())}")


@dataclass
class TrainConfig:
    max_steps: int = 2000
    """Optimizer steps in the whole run (the LR schedule spans them)."""
    batch_size: int = 12
    """Samples (text: sequences) per micro-batch, per rank under DDP; one optimizer step takes
    grad_accum_steps of them (the effective batch is batch_size × grad_accum_steps × ranks)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (gradient accumulation, as in nanoGPT): each is forward and
    backward on batch_size samples with its loss divided by N, so the step applies the mean gradient
    of the N micro-batches; under DDP gradients are all-reduced only on the last one (no_sync)."""
    optimizer: Literal["adamw", "sgd", "adafactor"] = "adamw"
    """adamw (betas beta1/beta2), sgd (momentum, nesterov) or adafactor (torch.optim.Adafactor: factored
    second moments, no first moment; beta2 is not used); weight decay on ≥ 2-D tensors only."""
    lr: float = 1e-3
    """Peak learning rate, reached after warm-up."""
    min_lr: float = 1e-4
    """Learning rate at the end of the decay (cosine, linear, wsd)."""
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """Learning rate after the warm-up: cosine (nanoGPT's) or linear decay from lr to min_lr at
    lr_decay_steps, constant lr, or wsd (warmup-stable-decay: lr until the last wsd_decay fraction of
    lr_decay_steps, then linear to min_lr). Every schedule stays at min_lr after lr_decay_steps."""
    wsd_decay: float = 0.2
    """wsd: fraction of the steps up to lr_decay_steps spent decaying (after warm-up and the stable
    phase)."""
    warmup_steps: int = 100
    """Linear warm-up steps (nanoGPT's formula: lr·(t+1)/(warmup+1))."""
    lr_decay_steps: int | None = None
    """Step at which the decay reaches min_lr; null = max_steps."""
    weight_decay: float = 0.1
    """Weight decay (AdamW: decoupled; SGD: L2), applied to parameters with ≥ 2 dimensions only."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.99
    """AdamW β2."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = False
    """SGD with Nesterov momentum."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A step whose loss or gradient norm is NaN/Inf: stop (exit code 3; nothing is updated or
    saved, the last checkpoint stays) or skip it (no update; counted as nonfinite_skipped)."""
    eval_interval: int = 250
    """Evaluate every N steps (also before the first step and after the last)."""
    eval_iters: int = 20
    """Text: fixed validation batches per evaluation. Classification evaluates the whole validation
    split (and the test split once, at the end)."""
    eval_train: bool = False
    """Also evaluate training samples (logs train_eval_loss, for overfitting gaps): text the same
    number of fixed batches, classification the whole training split."""
    log_interval: int = 10
    """Write a metrics row every N steps."""
    checkpoint_interval: int = 0
    """Save a checkpoint every N steps; 0 = only at the end."""
    seed: int = 1337
    """Seed for initialisation, batch sampling, dropout and method randomness."""
    early_stop_patience: int = 0
    """Stop the run when this many evaluations in a row did not lower the best validation loss (the
    summary says why; the end-of-run work and checkpoint follow as for a finished run); 0 = never."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto = cuda if available, else cpu (the chosen device is printed at start)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast of the training forward: fp32 (none), bf16 (bfloat16 autocast) or fp16 (float16
    autocast with torch.amp.GradScaler loss scaling; its state is checkpointed; a step whose gradients
    overflow is skipped and the scale lowered, counted as fp16_overflow_skipped). CUDA only, unless
    train.device: cpu is set explicitly (CPU autocast: for checks, rarely faster). Evaluation runs in fp32."""
    amp: bool = False
    """Deprecated alias of precision: bf16 on CUDA (kept so older recipes and checkpoints load);
    refused on CPU."""
    compile: bool = False
    """torch.compile the model for training steps (evaluation stays eager). It compiles per step
    shape, and again when a surgery method changes the model; the summary counts compiled graphs."""
    compile_backend: str = "inductor"
    """torch.compile backend: inductor (the default, generates kernels), or aot_eager / eager (cheap
    to compile: for tests and debugging)."""
    host_sync: Literal["auto", "step", "log"] = "auto"
    """When the host reads the step's loss and non-finite flag: step = every step (a device sync per
    step; on_nonfinite acts at the bad step); log = only at log, evaluation and checkpoint steps: the
    check runs on the device and the optimizer (adamw/sgd with fused=True) skips a flagged update
    there, so nothing non-finite is applied; on_nonfinite: stop then stops at the next read and skips
    every update from the bad step on. auto = log on CUDA with adamw/sgd, else step."""
    log_to: list[Literal["jsonl", "csv", "tensorboard", "wandb"]] = field(default_factory=lambda: ["jsonl"])
    """Where metrics rows go: metrics.jsonl always; also metrics.csv, TensorBoard event files
    (tensorboard/, needs the tensorboard package) or Weights & Biases in offline mode (wandb/, only if
    wandb is installed; never the network)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept in checkpoints/ (older ones are removed after a new one is complete)."""
    keep_best: bool = False
    """Also keep the checkpoint of the best validation loss: checkpoints/best names it (saved when an
    evaluation improves it; resume it with --resume RUN/checkpoints/best)."""
    threads: int | None = None
    """torch.set_num_threads; null = leave PyTorch's default."""

    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({
        "max_steps", "eval_interval", "log_interval", "checkpoint_interval", "threads", "device",
        "log_to", "keep_checkpoints", "keep_best", "early_stop_patience", "compile", "compile_backend",
        "host_sync"})
    """Train keys a resumed run may change without ``--allow-changes``: how long the run goes (extending
    ``max_steps`` also stretches a cosine that spans the run — reported like every change), how often it
    evaluates, logs and saves, where it runs, what it logs and keeps, when it stops early, and how steps
    are executed (compile, host sync: the same maths, other kernels, so not bit-exact with an
    uninterrupted run). Every other changed key (lr, seed, batch_size, grad_accum_steps, precision, the
    schedule, eval_iters — which would make later figures incomparable with earlier ones —, data and
    method options) is refused unless allowed."""

    def validate(self) -> None:
        for key in ("max_steps", "batch_size", "eval_interval", "eval_iters", "log_interval"):
            check(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        for key in ("warmup_steps", "checkpoint_interval"):
            check(getattr(self, key) >= 0, key, f"must be ≥ 0, got {getattr(self, key)}")
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        check(self.weight_decay >= 0, "weight_decay", "must be ≥ 0")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1", "AdamW betas must be in [0, 1)")
        check(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        check(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0), "nesterov",
              "needs optimizer: sgd with momentum > 0")
        check(self.grad_clip >= 0, "grad_clip", "must be ≥ 0")
        check(self.lr_decay_steps is None or self.lr_decay_steps > self.warmup_steps, "lr_decay_steps",
              "must exceed warmup_steps")
        check(self.grad_accum_steps > 0, "grad_accum_steps", f"must be positive, got {self.grad_accum_steps}")
        check(0 < self.wsd_decay <= 1, "wsd_decay", f"must be in (0, 1], got {self.wsd_decay}")
        check(self.early_stop_patience >= 0, "early_stop_patience", "must be ≥ 0 (0 = off)")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be ≥ 1 (a run always keeps its latest "
              f"checkpoint), got {self.keep_checkpoints}")
        check(not (self.amp and self.precision != "fp32"), "amp", "is the deprecated alias of "
              "precision: bf16; set only train.precision")
        check(not (self.amp and self.device == "cpu"), "amp", "bf16 autocast is CUDA only; for bfloat16 "
              "autocast on CPU set train.precision: bf16 with train.device: cpu")
        check(bool(self.compile_backend.strip()), "compile_backend", "must name a torch.compile backend")

    @property
    def autocast_precision(self) -> str:
        """The precision in effect: ``precision``, or bf16 for the deprecated ``amp: true``."""
        return "bf16" if self.amp else self.precision
        most = 4 * (os.cpu_count() or 1)  # far beyond what helps; huge counts crash PyTorch's pools
        check(self.threads is None or 0 < self.threads <= most, "threads",
              f"must be in [1, {most}] (4 × this machine's {os.cpu_count()} CPUs), got {self.threads}")

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps or self.max_steps


@dataclass
class Recipe:
    data: Any = None
    data_name: str = "text"
    model_name: str = "gpt"
    model: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    methods: list[tuple[str, Any]] = field(default_factory=list)

    SECTIONS = ("data", "model", "train", "methods")

    @classmethod
    def from_dict(cls, d: dict | None) -> "Recipe":
        d = dict(d or {})
        for key in d:
            if key not in cls.SECTIONS:
                close = difflib.get_close_matches(key, cls.SECTIONS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown config key {key!r}{hint}; sections are {', '.join(cls.SECTIONS)}")
        sections = {}
        for key in ("data", "model"):
            if not isinstance(d.get(key) or {}, dict):
                raise ConfigError(f"{key}: expected a mapping of options, got {d[key]!r}")
            sections[key] = dict(d.get(key) or {})
        data = sections["data"]
        data_name = str(data.pop("name", "text"))
        data_cfg = get_data(data_name).Config
        model = sections["model"]
        name = model.pop("name", "gpt")
        _, model_cfg = get_model(str(name))
        methods_raw = d.get("methods") or []
        if not isinstance(methods_raw, list):
            raise ConfigError("methods: expected a list of {name: ..., <options>}")
        methods = []
        for i, entry in enumerate(methods_raw):
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or "name" not in entry:
                raise ConfigError(f"methods[{i}]: expected {{name: ..., <options>}}, got {entry!r}")
            opts = dict(entry)
            mname = str(opts.pop("name"))
            methods.append((mname, build(get_method(mname).Config, opts, f"methods.{mname}")))
        names = [n for n, _ in methods]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"methods: {sorted(dup)[0]!r} is listed twice; a recipe uses each method once "
                              "(merge the two entries' options)")
        return cls(data=build(data_cfg, data, "data"), data_name=data_name, model_name=str(name),
                   model=build(model_cfg, model, "model"),
                   train=build(TrainConfig, d.get("train"), "train"), methods=methods)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] = ()) -> "Recipe":
        """A YAML recipe file, or a bundled recipe by name (``Recipe.load("baseline_char")``), with
        ``key=value`` overrides applied."""
        data = load_yaml(find_recipe(path)) if path else {}
        return cls.from_dict(apply_overrides(data, list(overrides)))

    def __post_init__(self) -> None:
        if self.data is None:
            self.data = get_data(self.data_name).Config()

    def to_dict(self) -> dict:
        return {"data": {"name": self.data_name, **to_dict(self.data)},
                "model": {"name": self.model_name, **to_dict(self.model)},
                "train": to_dict(self.train),
                "methods": [{"name": n, **to_dict(c)} for n, c in self.methods]}

    def replace(self, **sections) -> "Recipe":
        return dataclasses.replace(self, **sections)
