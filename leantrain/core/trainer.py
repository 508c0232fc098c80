"""The training loop: events, methods, measurement, checkpoints, DDP. Features live in methods."""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import measure
from ..config import build, to_dict
from ..data import for_model
from ..errors import ConfigError, LeantrainError, RunStopped
from ..recipe import Recipe
from ..models.protocol import adapt
from ..registry import get_data, get_method, get_model, model_task
from . import checkpoint, distributed
from .callback import Callback
from . import resume as resume_checks
from .evaluation import EvalResult, evaluate
from .events import Event
from .method import Method
from .precision import Precision, check_precision
from .state import State

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "metrics.csv", "tensorboard", "wandb")


def lr_at(step: int, t) -> float:
    """Linear warm-up (nanoGPT's formula), then ``t.schedule`` down to min_lr at ``decay_steps``, then
    flat. cosine is nanoGPT's schedule; linear decays linearly; constant stays at lr; wsd holds lr and
    decays linearly over the last ``wsd_decay`` fraction of the steps before ``decay_steps``.
    Total: any validated TrainConfig gives a finite LR in [0, lr] at every step (a warm-up as long
    as the decay leaves no decay: the LR drops to min_lr when the warm-up ends)."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / (t.warmup_steps + 1)
    schedule = getattr(t, "schedule", "cosine")
    if schedule == "constant":
        return t.lr
    if step >= t.decay_steps:
        return t.min_lr
    if schedule == "wsd":
        start = max(t.warmup_steps, t.decay_steps - max(1, round(t.wsd_decay * t.decay_steps)))
        if step < start:
            return t.lr
        return t.lr - (step - start) / (t.decay_steps - start) * (t.lr - t.min_lr)
    ratio = (step - t.warmup_steps) / (t.decay_steps - t.warmup_steps)
    if schedule == "linear":
        return t.lr - ratio * (t.lr - t.min_lr)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.lr - t.min_lr)


def build_optimizer(model: torch.nn.Module, t, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW, SGD or Adafactor (torch's own); weight decay only on ≥ 2-D tensors (matmul and conv
    weights, embeddings), as in nanoGPT — never on biases and norm gains. ``fused``: torch's fused
    AdamW/SGD kernels, which can skip a flagged update on the device (``train.host_sync: log``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if fused else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, **extra)
    if t.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=t.lr)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), **extra)


def check_model_fits_data(model_name: str, data_name: str, task, model_cfg=None) -> None:
    # a model whose architecture decides what it consumes (hf) says so on its config
    consumes = getattr(model_cfg, "consumes", None) or model_task(model_name)
    if consumes != task.task:
        what = {"lm": "token sequences (language modelling)", "classification": "labelled arrays (classification)"}
        raise ConfigError(f"model {model_name!r} consumes {what.get(consumes, consumes)}, but data "
                          f"{data_name!r} is {what.get(task.task, task.task)}; choose a model for this data")


def check_combination(methods: list[Method]) -> None:
    strategies = [m.name for m in methods if m.takes_steps]
    if len(strategies) > 1:
        raise ConfigError(f"methods {strategies[0]!r} and {strategies[1]!r} both replace the training "
                          "step; at most one step strategy can be active")
    groups: dict[str, str] = {}
    for m in methods:
        if m.exclusive_group in groups:
            raise ConfigError(f"methods {groups[m.exclusive_group]!r} and {m.name!r} cannot be combined "
                              f"(both are {m.exclusive_group} methods)")
        if m.exclusive_group:
            groups[m.exclusive_group] = m.name


def check_step_options(methods: list[Method], t, precision: str) -> None:
    """A step strategy runs the step's forward and backward itself: it must declare that it honours
    gradient accumulation and the precision, else the run is refused before anything is written."""
    for m in methods:
        if not m.takes_steps:
            continue
        if t.grad_accum_steps > 1 and not m.accumulates:
            raise ConfigError(f"train.grad_accum_steps={t.grad_accum_steps}: method {m.name!r} replaces the "
                              "training step and does not accumulate micro-batches; use grad_accum_steps: 1 "
                              "(and a larger batch_size) with it")
        if precision not in m.precisions:
            raise ConfigError(f"train.precision: {precision}: method {m.name!r} replaces the training step "
                              f"and honours only {' / '.join(m.precisions)}")


def resolve_host_sync(t, device: torch.device) -> bool:
    """True for host_sync log (read the step's flags at log steps only; needs a fused optimizer)."""
    fused = t.optimizer in ("adamw", "sgd")
    if t.host_sync == "log" and not fused:
        raise ConfigError(f"train.host_sync: log skips flagged updates on the device with torch's fused "
                          f"AdamW/SGD; optimizer {t.optimizer} has no fused kernel: use host_sync: step")
    if t.host_sync == "auto":
        return device.type == "cuda" and fused
    return t.host_sync == "log"


def compile_backend(name: str, counter: list[int]):
    """torch.compile's backend ``name`` (checked now), counting the graphs it compiles in ``counter[0]``."""
    from torch._dynamo.backends.registry import lookup_backend
    try:
        inner = lookup_backend(name)
    except Exception:  # torch._dynamo.exc.InvalidBackend
        raise ConfigError(f"train.compile_backend: {name!r} is not a torch.compile backend (e.g. inductor, "
                          "aot_eager, eager)") from None

    def backend(gm, example_inputs):
        counter[0] += 1
        return inner(gm, example_inputs)
    return backend


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    if name == "cuda":
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


class Trainer:
    """Train ``recipe`` into ``out_dir``.

    ``methods`` adds Method objects made in Python to those the recipe names. ``resume`` is a run
    or checkpoint directory to continue from (or ``RUN/checkpoints/best``): on other data
    (``Task.fingerprint``) it is refused, and so is a recipe key changed since the checkpoint unless it
    is in ``TrainConfig.FREE_ON_RESUME`` or ``allow_changes`` (dotted keys or sections:
    ``["train.lr", "methods.raptr"]``); allowed changes are printed. ``overwrite`` allows replacing
    another run in ``out_dir``. ``callbacks`` observe the run (:class:`Callback`; the loggers of
    ``train.log_to`` are added on rank 0). ``dry_run`` builds and checks everything, writes nothing,
    and offers :meth:`dry_run_report` instead of :meth:`fit`. Everything is checked
    before anything is written.
    """

    def __init__(self, recipe: Recipe, out_dir: str | Path | None = None, *, methods: list[Method] = (),
                 resume: str | Path | None = None, overwrite: bool = False, progress: bool | None = None,
                 verbose: bool = True, callbacks: list[Callback] = (), dry_run: bool = False,
                 allow_changes: Iterable[str] = ()):
        self.recipe = recipe
        t = recipe.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
        self.precision = check_precision(t, self.device)
        self.lazy = resolve_host_sync(t, self.device)  # host_sync log: no per-step host sync
        self.compiled_graphs = [0]
        self._backend = compile_backend(t.compile_backend, self.compiled_graphs) if t.compile else None
        self.dry_run = dry_run
        self.rank, self.world = distributed.setup(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.main = self.rank == 0
        self.verbose = verbose and self.main
        self.out_dir = Path(out_dir) if out_dir else None

        model_task(recipe.model_name)  # an unknown model name is reported before the data is read
        mcfg = recipe.model
        self.data = for_model(get_data(recipe.data_name)(recipe.data), mcfg)
        check_model_fits_data(recipe.model_name, recipe.data_name, self.data, mcfg)
        mcfg.adapt_to_data(self.data.info())
        self.data.check_model(mcfg, t.batch_size, self.world)

        self.methods = [get_method(n)(c) for n, c in recipe.methods] + list(methods)
        check_combination(self.methods)
        self.strategy = next((m for m in self.methods if m.takes_steps), None)
        self.callbacks = list(callbacks)

        torch.manual_seed(t.seed)
        factory, _ = get_model(recipe.model_name)
        model = factory(mcfg).to(self.device)
        self.state = State(recipe=recipe, model=model, optimizer=None, data=self.data,
                           rank=self.rank, world_size=self.world, data_rank=self.rank, data_world=self.world,
                           evaluate=self.evaluate_split, verbose=self.verbose,
                           precision=Precision(self.precision, self.device, t.grad_accum_steps))
        for m in self.methods:
            # Methods made in Python carry configs that never went through build(): check them too.
            build(type(m.cfg), to_dict(m.cfg), f"methods.{m.name}", numbers_from_text=False)
            m.check(self.state)
        check_step_options(self.methods, t, self.precision)
        if self.main and self.out_dir is not None and not dry_run:
            from ..loggers import make_loggers  # checks optional packages before anything is written
            self.callbacks += make_loggers(t.log_to, self.out_dir, recipe)

        ckpt = checkpoint.load(resume) if resume is not None else None
        self.data_fingerprint = self.data.fingerprint()
        if ckpt is not None:
            self._check_compatible(ckpt)
            resume_checks.check_data(ckpt.path, ckpt.meta, self.data_fingerprint, self.data.meta())
            changes = resume_checks.recipe_changes(ckpt.path, ckpt.meta["recipe"], recipe.to_dict(),
                                                   type(t).FREE_ON_RESUME, allow_changes)
            if changes and self.verbose:
                print(resume_checks.describe_changes(changes), flush=True)
            for m, saved in zip(self.methods, ckpt.meta["methods"]):
                m.load_state_dict(saved["state"])
        for m in self.methods:
            m.setup(self.state)
        if ckpt is not None:
            self._check_world(ckpt)
        if self.out_dir is not None:
            distributed.on_main(lambda: self._prepare_out_dir(ckpt, overwrite, write=not dry_run))

        self.sampler = self.data.sampler(t.batch_size, t.seed, self.state.data_rank, self.state.data_world, mcfg)
        self.val_batches = self._eval_batches("val")
        self.train_eval_batches = self._eval_batches("train") if t.eval_train else []
        self.meter = measure.StepMeter()
        self.seconds = 0.0
        self.eval_seconds = 0.0
        self.loss_sum, self.loss_count = 0.0, 0
        self.test_figures: dict[str, float] = {}
        self.skipped = 0  # steps skipped for a non-finite loss or gradient (on_nonfinite: skip)
        self.overflow_skipped = 0  # fp16: steps the loss scaler skipped (gradient overflow)
        self.best_step: int | None = None  # step of the evaluation that set best_val_loss
        self.evals_since_best = 0
        self.early_stopped: str | None = None  # the reason, once train.early_stop_patience ended the run
        self._flags = self._device_flags() if self.lazy else None
        self.val_step: int | None = None  # the step of the last evaluation (val_loss is from it)
        self._interrupted = False  # set by Ctrl-C
        self.interrupt_agreed = False
        self.start_step = 0
        self.state.optimizer = build_optimizer(self.state.model, t, fused=self.lazy)
        if ckpt is not None:
            self._restore(ckpt)
        self._wrap()
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.main
        self.state.show_progress = self.progress

    # -- setup ---------------------------------------------------------------------------------
    def _eval_batches(self, split: str, whole: bool = False) -> list:
        """The batches an evaluation of ``split`` runs: text's fixed batches, or a whole split."""
        t = self.recipe.train
        fixed = self.data.has_fixed_eval() and not whole
        return self.data.eval_batches(split, t.batch_size if fixed else self.data.eval_batch_size, self.recipe.model,
                                      whole=not fixed, n_batches=t.eval_iters)

    def _check_compatible(self, ckpt: checkpoint.Checkpoint) -> None:
        if not any(k.startswith("torch/") for k in ckpt.rng):
            raise LeantrainError(f"checkpoint {ckpt.path} holds no training state (an exported model): "
                                 "evaluate or sample it, or start a run from it")
        saved_data = ckpt.meta["recipe"].get("data", {}).get("name", "text")
        if saved_data != self.recipe.data_name:
            raise LeantrainError(f"checkpoint {ckpt.path} was trained on data {saved_data!r}; the recipe "
                                 f"has {self.recipe.data_name!r}")
        saved = ckpt.meta["recipe"]["model"]
        here = self.recipe.to_dict()["model"]
        diff = [k for k in sorted(set(saved) | set(here)) if saved.get(k) != here.get(k)]
        if diff:
            k = diff[0]
            raise LeantrainError(f"checkpoint {ckpt.path} does not match the recipe: model.{k} is "
                                 f"{saved.get(k)!r} in the checkpoint, {here.get(k)!r} in the recipe")
        names = [m["name"] for m in ckpt.meta["methods"]]
        if names != [m.name for m in self.methods]:
            raise LeantrainError(f"checkpoint {ckpt.path} was trained with methods {names}, "
                                 f"the recipe has {[m.name for m in self.methods]}")
        if ckpt.meta["step"] > self.recipe.train.max_steps:
            raise ConfigError(f"train.max_steps={self.recipe.train.max_steps} is below the checkpoint's "
                              f"step {ckpt.meta['step']}")

    def _check_world(self, ckpt: checkpoint.Checkpoint) -> None:
        """The data must be sharded as it was (each shard's sampler state resumes); how many ranks
        train one shard (e.g. pipeline stages) may differ."""
        saved = ckpt.meta.get("data_world", ckpt.meta["world_size"])
        if saved != self.state.data_world:
            raise LeantrainError(f"checkpoint {ckpt.path} was trained on {saved} data shard(s) (data-parallel "
                                 f"processes); resume with the same number (now {self.state.data_world})")

    def _prepare_out_dir(self, ckpt, overwrite: bool, write: bool = True) -> None:
        """Check ``out_dir`` can take this run; then (``write``) clear a replaced run, truncate a
        resumed run's metrics after its checkpoint and write config.json."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise LeantrainError(f"output directory {out} is a file, not a directory")
        continuing = ckpt is not None and ckpt.path.parent.parent.resolve() == out.resolve()
        existing = [f for f in RUN_FILES if (out / f).exists()]
        if existing and not continuing:
            if not overwrite:
                why = "another run"
                cfg = out / "config.json"
                try:
                    if cfg.is_file() and json.loads(cfg.read_text()) == self.recipe.to_dict():
                        why = "a run of this recipe (use --resume to continue it)"
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pass
                raise LeantrainError(f"output directory {out} already holds {why}; "
                                     "pass --overwrite to replace it")
        if not write:
            return
        if existing and not continuing:
            for f in existing:
                (shutil.rmtree if (out / f).is_dir() else Path.unlink)(out / f)
        checkpoint.ensure_dir(out)
        if continuing:  # drop rows logged after the checkpoint by the interrupted run
            rows = self._read_metrics()
            self._write_lines(out / "metrics.jsonl", [r for r in rows if r["step"] <= ckpt.meta["step"]])
        checkpoint.write_text_atomic(out / "config.json", json.dumps(self.recipe.to_dict(), indent=1))

    def _read_metrics(self) -> list[dict]:
        path = self.out_dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash
        return rows

    @staticmethod
    def _write_lines(path: Path, rows: list[dict]) -> None:
        checkpoint.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))

    def _wrap(self) -> None:
        """DDP-wrap the model (or broadcast it, for a method that syncs gradients itself), then
        torch.compile the result (train.compile) — again after every surgery (counted)."""
        model = self.state.model
        if distributed.active() and any(m.handles_gradients for m in self.methods):
            distributed.broadcast_module(model)  # one start for every replica; the method syncs gradients
            wrapped = model
        elif distributed.active():
            unused = any(m.find_unused_parameters for m in self.methods)
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DDP(model, device_ids=ids, find_unused_parameters=unused)
        else:
            wrapped = model
        self._ddp = wrapped if isinstance(wrapped, DDP) else None  # for no_sync on accumulated micro-batches
        self._eager_model = wrapped  # what the meter measures: dynamo skips a frame run under FlopCounterMode
        self.ddp_model = torch.compile(wrapped, backend=self._backend) if self._backend is not None else wrapped
        self._param_names = dict(model.named_parameters())

    def _rebuild(self, copy_from: dict[str, str]) -> None:
        """Fresh optimizer for the current parameters, keeping (or copying) AdamW state; re-wrap DDP."""
        old, old_names = self.state.optimizer, self._param_names
        new = build_optimizer(self.state.model, self.recipe.train, fused=self.lazy)
        for name, p in self.state.model.named_parameters():
            if p in old.state:
                new.state[p] = old.state[p]
            elif name in copy_from and old_names.get(copy_from[name]) in old.state:
                new.state[p] = {k: v.clone() for k, v in old.state[old_names[copy_from[name]]].items()}
        self.state.optimizer = new
        self._wrap()

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Save the run's state at this step (every rank takes part); with train.keep_best, mark it
        ``best`` when this step's evaluation set the best validation loss."""
        self._settle()  # host_sync log: a pending non-finite step stops the run before anything is saved
        self.dispatch(Event.CHECKPOINT)
        bad = [n for n, v in checkpoint.model_tensors(self.state.model).items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # never replace a good checkpoint with a broken one
            raise RunStopped(f"refusing to save a checkpoint at step {self.state.step}: {bad[0]} holds NaN "
                             "or Inf; the last checkpoint is untouched", exit_code=3)
        rng = {**self.sampler.state(), "torch": torch.get_rng_state()}
        all_rng = distributed.gather(rng)
        data_ranks = distributed.gather(self.state.data_rank)
        flops = self._total_flops()
        if not self.main or self.out_dir is None:
            return
        tensors = {"model": checkpoint.model_tensors(self.state.model),
                   "optimizer": checkpoint.optimizer_tensors(self.state.model, self.state.optimizer),
                   "rng": {f"{k}/rank{r}": v for r, d in enumerate(all_rng) for k, v in d.items()},
                   "methods": {f"{m.name}/{k}": v for m in self.methods for k, v in m.tensors().items()}}
        meta = {"recipe": self.recipe.to_dict(), **self.data.meta(), "world_size": self.world,
                "data_world": self.state.data_world, "data_ranks": data_ranks,
                "val_loss": self.state.val_loss, "best_val_loss": self.state.best_val_loss,
                "val_error": self.state.val_error, "best_val_error": self.state.best_val_error,
                "flops": flops, "seconds": self.seconds, "eval_seconds": self.eval_seconds,
                "peak_activation_bytes": self.meter.peak_activation_bytes,
                "peak_live_activation_bytes": self.meter.peak_live_activation_bytes,
                "flop_cache": self.meter.cache_state(),
                "loss_acc": [self.loss_sum, self.loss_count], "nonfinite_skipped": self.skipped,
                "methods": [{"name": m.name, "state": m.state_dict()} for m in self.methods],
                "grad_scaler": self.state.precision.state_dict(), "fp16_overflow_skipped": self.overflow_skipped,
                "early_stop": {"best_step": self.best_step, "evals_since_best": self.evals_since_best,
                               "stopped": self.early_stopped},
                "val_step": self.val_step, "data_fingerprint": self.data_fingerprint}
        t = self.recipe.train
        best = t.keep_best and self.best_step == self.state.step and self.state.val_loss is not None
        checkpoint.save(self.out_dir, self.state.step, meta, tensors, keep=t.keep_checkpoints, best=best)

    def _restore(self, ckpt: checkpoint.Checkpoint) -> None:
        meta, s = ckpt.meta, self.state
        s.step = self.start_step = meta["step"]
        s.val_loss, s.best_val_loss = meta["val_loss"], meta["best_val_loss"]
        s.val_error, s.best_val_error = meta.get("val_error"), meta.get("best_val_error")
        for m in self.methods:
            m.restore(s)
        s.rebuild = None
        checkpoint.load_model_tensors(s.model, ckpt.model, ckpt.path)
        for m in self.methods:
            m.load_tensors(checkpoint.method_tensors(ckpt, m.name))
        s.optimizer = build_optimizer(s.model, self.recipe.train, fused=self.lazy)
        checkpoint.load_optimizer_state(s.model, s.optimizer, ckpt.optimizer)
        s.precision.load_state_dict(meta.get("grad_scaler"))
        # the sampler state of a rank that drew this rank's shard (the same rank, unless the number of
        # ranks per shard changed, e.g. a pipeline resuming a single-process run)
        ranks = meta.get("data_ranks", list(range(meta["world_size"])))
        source = self.rank if self.rank < len(ranks) and ranks[self.rank] == s.data_rank else ranks.index(s.data_rank)
        suffix = f"/rank{source}"
        self.sampler.load_state({k[: -len(suffix)]: v for k, v in ckpt.rng.items()
                                 if k.endswith(suffix) and k.startswith("sampler")})
        torch.set_rng_state(ckpt.rng.get(f"torch/rank{self.rank}", ckpt.rng[f"torch/rank{source}"]))
        self.meter.total_flops = meta["flops"] if self.main else 0  # the run's total (summed over ranks)
        self.meter.peak_activation_bytes = meta["peak_activation_bytes"]
        self.meter.peak_live_activation_bytes = meta.get("peak_live_activation_bytes", 0)
        if meta["world_size"] == self.world and meta.get("data_world", meta["world_size"]) == self.state.data_world:
            # measure the steps an unbroken run measures; the cache is rank 0's, so another process layout
            # (e.g. a pipeline's stage, whose counts cover only its modules) measures its steps anew
            self.meter.restored = dict(meta.get("flop_cache", {}))
        self.seconds, self.eval_seconds = meta["seconds"], meta["eval_seconds"]
        self.loss_sum, self.loss_count = meta["loss_acc"]
        self.skipped = meta.get("nonfinite_skipped", 0)
        self.overflow_skipped = meta.get("fp16_overflow_skipped", 0)
        early = meta.get("early_stop") or {}
        self.best_step, self.evals_since_best = early.get("best_step"), early.get("evals_since_best", 0)
        patience = self.recipe.train.early_stop_patience
        if early.get("stopped") and patience and self.evals_since_best >= patience:
            self.early_stopped = early["stopped"]  # a finished run: resuming it trains no further
        self.val_step = meta.get("val_step")

    # -- the loop ------------------------------------------------------------------------------
    def dispatch(self, event: Event) -> None:
        """Methods (in reverse order for *_END / AFTER_* events), then callbacks, which see the result."""
        for m in (reversed(self.methods) if event.reverse else self.methods):
            m.on_event(event, self.state)
        for c in self.callbacks:
            c.on_event(event, self.state)

    def _forward_backward(self, x, y, model) -> torch.Tensor:
        if self.strategy is not None and self.strategy.takes_step(self.state):
            return self.strategy.training_step(self.state, model, x, y)
        with self.state.autocast():
            _, loss = model(x, y)
        self.state.backward(loss)
        return loss.detach()

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda":  # pinned, asynchronous copies: no wait for the GPU's queue
            return tuple(v.pin_memory().to(self.device, non_blocking=True) for v in self.sampler.next())
        return tuple(v.to(self.device) for v in self.sampler.next())

    def _micro_batches(self) -> torch.Tensor:
        """Forward and backward on train.grad_accum_steps micro-batches (gradients all-reduced on the
        last only); the meter counts each one's FLOPs. Returns the step's loss (their mean)."""
        s, n = self.state, self.recipe.train.grad_accum_steps
        losses = []
        for i in range(n):
            s.micro_batch = i
            x, y = self._next_batch()
            key = (tuple(x.shape), adapt(s.model).shape_key(),  # the protocol's: adapter-registered models too
                   tuple(m.flop_key(s) for m in self.methods))
            quiet = self._ddp.no_sync() if self._ddp is not None and i < n - 1 else contextlib.nullcontext()
            # a step shape's first micro-batch is measured (FLOPs, saved bytes), eagerly under compile
            model = self._eager_model if key not in self.meter.flops_by_key else self.ddp_model
            with quiet:
                losses.append(self.meter.step(key, lambda: self._forward_backward(x, y, model), s.model.parameters()))
        s.micro_batch = 0
        return losses[0] if n == 1 else torch.stack([v.float() for v in losses]).mean()

    def train_step(self) -> None:
        s, t = self.state, self.recipe.train
        t0, eval0 = time.perf_counter(), self.eval_seconds  # a method may evaluate mid-step (state.evaluate)
        self.dispatch(Event.STEP_START)
        if s.rebuild is not None:
            self._rebuild(s.rebuild)
            s.rebuild = None
        lr = lr_at(s.step, t)
        for g in s.optimizer.param_groups:
            g["lr"] = lr
        loss = self._micro_batches()
        if s.precision.scaler is not None:
            s.precision.scaler.unscale_(s.optimizer)  # methods, clipping and the check see true gradients
        self.dispatch(Event.AFTER_BACKWARD)
        norm = self._grad_norm()
        if self.lazy:
            self._update_on_device(loss, norm)
            self.interrupt_agreed = self._interrupted if not distributed.active() else self.interrupt_agreed
            s.step += 1
        else:
            self._update_checked(loss, norm, lr, t0, eval0)
        s.metrics["lr"] = lr
        self.dispatch(Event.STEP_END)
        # Training time excludes evaluations methods ran during the step (counted as evaluation time).
        self.seconds += time.perf_counter() - t0 - (self.eval_seconds - eval0)

    def _update_checked(self, loss: torch.Tensor, norm: torch.Tensor, lr: float, t0: float, eval0: float) -> None:
        """host_sync step: read the loss and gradient norm (one host sync), then update or not."""
        s, t = self.state, self.recipe.train
        value, norm = torch.stack([loss.detach().float().cpu(), norm.float().cpu()]).tolist()
        scaler = s.precision.scaler
        # fp16: a finite loss with overflowing gradients is the loss scaler's business (skip, lower the scale)
        overflow = scaler is not None and math.isfinite(value) and not math.isfinite(norm)
        finite, self.interrupt_agreed = self._agree(math.isfinite(value) and (overflow or math.isfinite(norm)))
        if finite and not overflow:
            s.optimizer.step()
        elif not finite and t.on_nonfinite == "stop":
            s.optimizer.zero_grad(set_to_none=True)
            self.seconds += time.perf_counter() - t0 - (self.eval_seconds - eval0)
            self._stop_nonfinite(value, norm, lr)
        if scaler is not None:
            scaler.update()
        s.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        if finite:
            s.loss = value
            self.loss_sum += s.loss
            self.loss_count += 1
        else:  # on_nonfinite: skip — no update, counted and logged
            self.skipped += 1
            s.metrics["nonfinite_skipped"] = self.skipped
        if overflow:
            self.overflow_skipped += 1
            s.metrics["fp16_overflow_skipped"] = self.overflow_skipped

    # -- host_sync log: the step's checks stay on the device until the host reads them (_settle)
    FLAGS = ("first_bad", "first_loss", "first_norm", "loss_sum", "loss_count", "skipped", "overflow", "last_loss")

    def _device_flags(self) -> dict[str, torch.Tensor]:
        f = {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in self.FLAGS}
        f["first_bad"].fill_(-1)  # the first non-finite step (1-based, as reported), -1 = none
        return f

    def _update_on_device(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Update without reading anything on the host: the fused optimizer skips the update when the
        flag is set (torch's ``found_inf``, as GradScaler uses it). on_nonfinite: stop keeps the flag
        set from the first bad step on, so nothing is applied until the host reads it and stops."""
        s, t, f = self.state, self.recipe.train, self._flags
        loss = loss.detach().to(self.device, torch.float64)
        norm = norm.detach().to(self.device, torch.float64)
        loss_bad, norm_bad = ~torch.isfinite(loss), ~torch.isfinite(norm)
        scaler = s.precision.scaler
        bad = loss_bad if scaler is not None else loss_bad | norm_bad
        if distributed.active():  # every rank takes the same decision (an asynchronous all-reduce)
            bad = distributed.sum_tensor(bad.double(), group=s.step_group) > 0
        new = bad & (f["first_bad"] < 0)
        f["first_bad"].masked_fill_(new, float(s.step + 1))
        f["first_loss"] = torch.where(new, loss, f["first_loss"])
        f["first_norm"] = torch.where(new, norm, f["first_norm"])
        skip = (f["first_bad"] >= 0) if t.on_nonfinite == "stop" else bad
        overflow = (norm_bad & ~bad) if scaler is not None else None
        if overflow is not None:
            skip = skip | overflow
            f["overflow"] += overflow.double()
        opt = s.optimizer
        opt.grad_scale, opt.found_inf = None, skip.float()
        try:
            opt.step()
        finally:
            del opt.grad_scale, opt.found_inf
        if scaler is not None:
            scaler.update()
        opt.zero_grad(set_to_none=True)
        ok = ~bad
        f["loss_sum"] += torch.where(ok, loss, 0.0)
        f["loss_count"] += ok.double()
        f["last_loss"] = torch.where(ok, loss, f["last_loss"])
        f["skipped"] += bad.double()

    def _settle(self) -> None:
        """host_sync log: read the device's flags (one host sync) into the host counters; stop the run
        if a step since the last read was non-finite and on_nonfinite is stop."""
        if not self.lazy:
            return
        s, f = self.state, self._flags
        t0 = time.perf_counter()
        first_bad, first_loss, first_norm, loss_sum, count, skipped, overflow, last = \
            torch.stack([f[k] for k in self.FLAGS]).tolist()
        self.seconds += time.perf_counter() - t0  # waiting here for the queued steps is training time
        for k in ("loss_sum", "loss_count", "skipped", "overflow"):
            f[k].zero_()
        self.loss_sum += loss_sum
        self.loss_count += int(count)
        if count:
            s.loss = last
        if self.recipe.train.on_nonfinite == "skip" and skipped:
            self.skipped += int(skipped)
            s.metrics["nonfinite_skipped"] = self.skipped
        if overflow:
            self.overflow_skipped += int(overflow)
            s.metrics["fp16_overflow_skipped"] = self.overflow_skipped
        if first_bad >= 0 and self.recipe.train.on_nonfinite == "stop":
            step = int(first_bad)
            self._stop_nonfinite(first_loss, first_norm, lr_at(step - 1, self.recipe.train), step=step,
                                 note=f" (read at step {s.step}: host_sync log; no update was applied from "
                                      f"step {step} on)")

    def _grad_norm(self) -> torch.Tensor:
        """Clip to ``grad_clip`` (if set) and return the global gradient norm (checked for Inf/NaN)."""
        params = [p for p in self.state.model.parameters() if p.grad is not None]
        clips_itself = any(m.handles_gradients for m in self.methods)
        if self.recipe.train.grad_clip > 0 and not clips_itself:
            return torch.nn.utils.clip_grad_norm_(params, self.recipe.train.grad_clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())

    def _agree(self, finite: bool) -> tuple[bool, bool]:
        """(every rank's step is finite, some rank was interrupted): one small all-reduce under DDP,
        so all ranks take the same decision at the same step."""
        if not distributed.active():
            return finite, self._interrupted
        flags = distributed.sum_tensor(torch.tensor([float(not finite), float(self._interrupted)]),
                                       group=self.state.step_group)
        if self.state.step_group is not None:  # ranks not in lockstep agree on Ctrl-C at metrics rows
            return flags[0].item() == 0, self.interrupt_agreed
        return flags[0].item() == 0, flags[1].item() > 0

    def _stop_nonfinite(self, value: float, norm: float, lr: float, step: int | None = None,
                        note: str = "") -> None:
        s = self.state
        step = s.step + 1 if step is None else step
        if not math.isfinite(value):
            what = f"loss {value}"
        elif not math.isfinite(norm):
            what = f"gradient norm {norm} (loss {value:.4g})"
        else:
            what = "loss or gradient on another rank"
        last = f"last finite loss {s.loss:.4f}" if s.loss is not None else "no finite loss yet"
        raise self._stopped(f"non-finite {what} at step {step}, lr {lr:.3g}; {last}; nothing was "
                            f"updated or saved{note}", exit_code=3)

    def _stopped(self, reason: str, exit_code: int) -> RunStopped:
        """Write the summary of a run that stops early (``finished: false`` and the reason), and the
        exception that carries the message and exit code to the caller."""
        latest = None
        if self.out_dir is not None and (self.out_dir / "checkpoints" / "latest").is_file():
            latest = checkpoint.read_meta(self.out_dir)["step"]
        where = (f"the latest checkpoint is step {latest} (continue with --resume {self.out_dir})"
                 if latest is not None else "no checkpoint was written (train.checkpoint_interval keeps some)")
        # ranks that do not step in lockstep (a pipeline) may stop alone: no collective then
        summary = {**self.summary(collective=self.state.step_group is None), "finished": False, "stopped": reason}
        if self.main and self.out_dir is not None:
            checkpoint.write_text_atomic(self.out_dir / "summary.json", json.dumps(summary, indent=1))
        return RunStopped(f"stopped: {reason}; {where}", exit_code)

    def evaluate_split(self, split: str = "val", whole: bool = True) -> EvalResult:
        """Evaluate the model (in eval mode: the full network) on ``split`` — the whole split, or the
        run's evaluation batches with ``whole=False`` — without touching the run's state. Methods
        reach it as ``state.evaluate``; the time counts as evaluation time."""
        t0 = time.perf_counter()
        model = self.state.model
        was_training = model.training
        model.eval()
        try:
            batches = self.val_batches if split == "val" and not whole else self._eval_batches(split, whole)
            return evaluate(model, self.data, batches, self.device)
        finally:
            model.train(was_training)
            self.eval_seconds += time.perf_counter() - t0

    def evaluate(self) -> dict:
        t0 = time.perf_counter()
        s = self.state
        s.model.eval()
        self.dispatch(Event.EVAL_START)
        val = evaluate(s.model, self.data, self.val_batches, self.device)
        row = val.row("val")
        if self.train_eval_batches:
            row["train_eval_loss"] = evaluate(s.model, self.data, self.train_eval_batches, self.device).loss
        s.model.train()
        s.val_loss, s.val_error, s.val_result = val.loss, val.error, val
        if s.best_val_loss is None or s.val_loss < s.best_val_loss:
            self.best_step, self.evals_since_best = s.step, 0
        else:
            self.evals_since_best += 1
        self.val_step = s.step
        s.best_val_loss = s.val_loss if s.best_val_loss is None else min(s.best_val_loss, s.val_loss)
        if val.error is not None:
            s.best_val_error = val.error if s.best_val_error is None else min(s.best_val_error, val.error)
        self.dispatch(Event.EVAL_END)
        self.eval_seconds += time.perf_counter() - t0
        return row

    def _metrics_row(self, extra: dict) -> dict:
        t, s = self.recipe.train, self.state
        row = {"step": s.step}
        w = s.report_weight if self.loss_count else 0.0
        weighted, weights, interrupted = distributed.mean(
            [w * self.loss_sum / max(self.loss_count, 1), w, float(self._interrupted)])
        if weights > 0:
            row["train_loss"] = weighted / weights
        self.loss_sum, self.loss_count = 0.0, 0
        self.interrupt_agreed |= interrupted > 0
        row.update(extra)
        row.update({"lr": s.metrics.pop("lr", lr_at(s.step, t)),
                    "flops": self._total_flops(), "seconds": self.seconds,
                    self.data.unit: self._items(s.step)})
        for metrics in reversed(distributed.gather(s.metrics)):  # ranks that ran other parts (pipeline
            row.update(metrics)                                 # stages) add theirs; rank 0's win
        s.metrics.clear()
        return row

    def _emit(self, row: dict) -> None:
        if not self.main:
            return
        if self.out_dir is not None:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        for c in self.callbacks:
            c.on_log(row, self.state)
        if self.verbose and not self.progress and "val_loss" in row:
            # method metrics on the console (nested ones such as per-site rates: metrics.jsonl only)
            extra = "".join(f" | {k} {v:.4g}" for k, v in row.items()
                            if k.count("/") == 1 and isinstance(v, (int, float)))
            train = f"{row['train_loss']:.4f}" if "train_loss" in row else "-"
            print(f"step {row['step']:>6d} | train {train} | val {row['val_loss']:.4f} | "
                  f"{row['seconds']:.1f}s{extra}", flush=True)

    def fit(self, until: int | None = None) -> dict:
        """Train to ``max_steps`` (or stop after step ``until``, checkpointed). Returns the summary.

        Raises :class:`RunStopped` (after writing the summary) on a non-finite loss or gradient with
        ``on_nonfinite: stop`` — nothing non-finite is applied or saved — and on Ctrl-C, after saving
        a checkpoint at the last completed step. ``train.early_stop_patience`` ends the run like a
        finished one, its reason in the summary (``early_stopped``)."""
        if self.dry_run:
            raise LeantrainError("this Trainer was built with dry_run=True; it does not train")
        s, t = self.state, self.recipe.train
        stop = t.max_steps if until is None else min(until, t.max_steps)
        s.model.train()
        if self.verbose:
            self._print_start()
        if t.warmup_steps >= t.max_steps and s.step == 0 and self.verbose:
            print(f"note: train.warmup_steps={t.warmup_steps} ≥ train.max_steps={t.max_steps}: the learning "
                  f"rate warms up for the whole run and peaks at {lr_at(t.max_steps - 1, t):.3g}, never "
                  f"reaching train.lr={t.lr:g}", flush=True)
        try:
            self.dispatch(Event.FIT_START)
            self._train_loop(stop)
            self.dispatch(Event.FIT_END)
            self._settle()
            self.save_checkpoint()  # before any end-of-run work: an interruption there loses no training
            if s.step >= t.max_steps or self.early_stopped:
                self._finish()
            summary = self.summary()
            if self.main and self.out_dir is not None:
                checkpoint.write_text_atomic(self.out_dir / "summary.json", json.dumps(summary, indent=1))
            if self.early_stopped and self.verbose:
                print(f"early stop after step {s.step}: {self.early_stopped}", flush=True)
        finally:
            for c in self.callbacks:
                c.close()
        return summary

    def _train_loop(self, stop: int) -> None:
        s, t = self.state, self.recipe.train
        if s.step == 0:
            self._emit(self._metrics_row(self.evaluate()))
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=t.max_steps, initial=s.step, unit="step", dynamic_ncols=True)
        try:
            with self._catch_interrupts():
                while s.step < stop and not self.early_stopped:
                    self.train_step()
                    evaluated = s.step % t.eval_interval == 0 or s.step == t.max_steps
                    if evaluated or s.step % t.log_interval == 0:
                        self._settle()
                        row = self._metrics_row(self.evaluate() if evaluated else {})
                        self._emit(row)
                        if bar is not None:
                            bar.set_postfix({k: f"{row[k]:.3f}" for k in ("train_loss", "val_loss") if k in row})
                    if bar is not None:
                        bar.update(1)
                    if self.interrupt_agreed:
                        self.save_checkpoint()
                        raise self._stopped(f"interrupted after step {s.step}", exit_code=130)
                    saved = False
                    if evaluated and t.keep_best and self.best_step == s.step and s.step < stop:
                        self.save_checkpoint()  # the best validation loss so far: marked best
                        saved = True
                    if evaluated and t.early_stop_patience and self.evals_since_best >= t.early_stop_patience:
                        self.early_stopped = (f"validation loss did not improve for {self.evals_since_best} "
                                              f"evaluations (train.early_stop_patience={t.early_stop_patience}); "
                                              f"best {s.best_val_loss:.4f} at step {self.best_step}")
                        break
                    if t.checkpoint_interval and s.step % t.checkpoint_interval == 0 and s.step < stop and not saved:
                        self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()

    def _print_start(self) -> None:
        """A verbose run's first lines: device and step options, then the resolved recipe (YAML)."""
        import yaml
        t = self.recipe.train
        found = "found" if self.device.type == "cuda" else "not found"
        where = f"{self.device}" + (f" (train.device auto; CUDA {found})" if t.device == "auto" else "")
        options = [f"precision {self.precision}", f"micro-batch {t.batch_size} × {t.grad_accum_steps} "
                   f"accumulated × {self.state.data_world} rank(s) = {self._effective_batch()} samples/step",
                   f"host sync {'at log steps' if self.lazy else 'every step'}"]
        if t.compile:
            options.append(f"torch.compile ({t.compile_backend})")
        print(f"leantrain: device {where}; " + ", ".join(options), flush=True)
        print("recipe:\n" + textwrap.indent(yaml.safe_dump(self.recipe.to_dict(), sort_keys=False).rstrip(), "  "),
              flush=True)

    def _effective_batch(self) -> int:
        t = self.recipe.train
        return t.batch_size * t.grad_accum_steps * self.state.data_world

    def dry_run_report(self) -> dict:
        """What ``--dry-run`` prints: parameters, device, and the measured FLOPs of one step (every
        micro-batch: forward and backward on real batches, no update; the run is not trained)."""
        s, t = self.state, self.recipe.train
        s.model.train()
        self.dispatch(Event.FIT_START)
        self.dispatch(Event.STEP_START)
        if s.rebuild is not None:
            self._rebuild(s.rebuild)
            s.rebuild = None
        before = self.meter.total_flops
        self._micro_batches()  # a new step shape: the meter measures it
        flops = self.meter.total_flops - before
        s.optimizer.zero_grad(set_to_none=True)
        return {"parameters": sum(p.numel() for p in s.model.parameters()),
                "trainable_parameters": sum(p.numel() for p in s.model.parameters() if p.requires_grad),
                "device": str(self.device), "precision": self.precision,
                "effective_batch_size": self._effective_batch(),
                "flops_per_step": flops, "estimated_train_flops": flops * (t.max_steps - s.step),
                "steps": t.max_steps - s.step}

    def _finish(self) -> None:
        """End-of-run work after the final checkpoint: methods' ``finish`` (checkpointed again if any
        worked), then the test split, scored once, at the end, and never used for choices. A Ctrl-C here
        stops with the checkpoint of the last step: ``--resume`` runs only this work again."""
        try:
            if sum(bool(m.finish(self.state)) for m in self.methods):
                self.save_checkpoint()
            if "test" in self.data.splits:
                self.test_figures = self.evaluate_split("test").row("test")
        except KeyboardInterrupt:
            raise self._stopped(f"interrupted in the end-of-run work after step {self.state.step} (training "
                                "is complete and checkpointed; --resume does only this work)", exit_code=130) from None

    def _catch_interrupts(self):
        """While training, a first Ctrl-C (SIGINT) asks to stop after the current step with a
        checkpoint; a second one interrupts at once. Only the main thread can take signals."""
        import contextlib
        if threading.current_thread() is not threading.main_thread():
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def handler():
            def on_sigint(signum, frame):
                if self._interrupted:
                    raise KeyboardInterrupt
                self._interrupted = True
                if self.main:
                    print("\nleantrain: stopping after this step with a checkpoint (Ctrl-C again to "
                          "abort now)", file=sys.stderr, flush=True)
            previous = signal.signal(signal.SIGINT, on_sigint)
            try:
                yield
            finally:
                signal.signal(signal.SIGINT, previous)
        return handler()

    def _items(self, steps: int) -> int:
        """Tokens (text) or samples (classification) trained on in ``steps`` steps, all data shards."""
        return (steps * self._effective_batch() * self.data.items_per_sample(self.recipe.model))

    def _total_flops(self, collective: bool = True) -> int:
        """Measured training FLOPs summed over the ranks (each measures its own steps)."""
        if not collective:
            return self.meter.total_flops * self.world
        return int(distributed.sum_tensor(torch.tensor([float(self.meter.total_flops)], dtype=torch.float64)).item())

    def summary(self, collective: bool = True) -> dict:
        t, s = self.recipe.train, self.state
        # final_val_loss is the last evaluation's, at val_step: the last step, unless a run stops
        # (--until, Ctrl-C) between evaluations — an extra evaluation there would change what methods
        # that react to evaluations do, and a resumed run would no longer match an uninterrupted one
        out = {"final_val_loss": s.val_loss, "best_val_loss": s.best_val_loss, "val_step": self.val_step}
        if s.val_error is not None:
            out.update({"final_val_error": s.val_error, "best_val_error": s.best_val_error})
        out.update(self.test_figures)
        peak = (lambda v: int(distributed.max_value(v))) if collective else int
        seconds = distributed.max_value(self.seconds) if collective else self.seconds  # the slowest rank's
        out.update({"train_flops": self._total_flops(collective), "wall_seconds": seconds,
                    "eval_seconds": self.eval_seconds,
                    f"{self.data.unit}_per_second": self._items(s.step) / max(seconds, 1e-9),
                    "peak_activation_bytes": peak(self.meter.peak_activation_bytes),
                    "peak_live_activation_bytes": peak(self.meter.peak_live_activation_bytes),
                    "steps": s.step,
                    "nonfinite_skipped": self.skipped,
                    "finished": s.step >= t.max_steps or bool(self.early_stopped), "world_size": self.world,
                    "step_shapes": len(self.meter.flops_by_key),
                    "device": str(self.device), "precision": self.precision,
                    "grad_accum_steps": t.grad_accum_steps, "effective_batch_size": self._effective_batch(),
                    "host_sync": "log" if self.lazy else "step"})
        if self.early_stopped:
            out["early_stopped"] = self.early_stopped
        if self.precision == "fp16":
            out["fp16_overflow_skipped"] = self.overflow_skipped
            out["fp16_loss_scale"] = self.state.precision.scaler.get_scale()
        if t.compile:
            out["compiled_graphs"] = self.compiled_graphs[0]  # graphs dynamo compiled: shapes, surgery, breaks
        out["config"] = self.recipe.to_dict()
        return out
