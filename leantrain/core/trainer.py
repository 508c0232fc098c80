"""The training loop: events, methods, measurement, checkpoints, DDP. Features live in methods."""
from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import measure
from ..config import build, to_dict
from ..data import for_model
from ..errors import ConfigError, LeantrainError, RunStopped
from ..recipe import Recipe
from ..registry import get_data, get_method, get_model, model_task
from . import checkpoint, distributed
from .evaluation import EvalResult, evaluate
from .events import Event
from .method import Method
from .state import State

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints")


def lr_at(step: int, t) -> float:
    """nanoGPT's schedule: linear warm-up, cosine decay to min_lr at ``decay_steps``, then flat.
    Total: any validated TrainConfig gives a finite LR in [0, lr] at every step (a warm-up as long
    as the decay leaves no cosine: the LR drops to min_lr when the warm-up ends)."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / (t.warmup_steps + 1)
    if step >= t.decay_steps:
        return t.min_lr
    ratio = (step - t.warmup_steps) / (t.decay_steps - t.warmup_steps)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.lr - t.min_lr)


def build_optimizer(model: torch.nn.Module, t) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay only on ≥ 2-D tensors (matmul and conv weights, embeddings), as in
    nanoGPT — never on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))


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
    or checkpoint directory to continue from; ``overwrite`` allows replacing another run in
    ``out_dir``. Everything is checked before anything is written.
    """

    def __init__(self, recipe: Recipe, out_dir: str | Path | None = None, *, methods: list[Method] = (),
                 resume: str | Path | None = None, overwrite: bool = False, progress: bool | None = None,
                 verbose: bool = True):
        self.recipe = recipe
        t = recipe.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
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

        torch.manual_seed(t.seed)
        factory, _ = get_model(recipe.model_name)
        model = factory(mcfg).to(self.device)
        self.state = State(recipe=recipe, model=model, optimizer=None, data=self.data,
                           rank=self.rank, world_size=self.world, data_rank=self.rank, data_world=self.world,
                           evaluate=self.evaluate_split)
        for m in self.methods:
            # Methods made in Python carry configs that never went through build(): check them too.
            build(type(m.cfg), to_dict(m.cfg), f"methods.{m.name}")
            m.check(self.state)

        ckpt = checkpoint.load(resume) if resume is not None else None
        if ckpt is not None:
            self._check_compatible(ckpt)
            for m, saved in zip(self.methods, ckpt.meta["methods"]):
                m.load_state_dict(saved["state"])
        for m in self.methods:
            m.setup(self.state)
        if ckpt is not None:
            self._check_world(ckpt)
        if self.out_dir is not None:
            distributed.on_main(lambda: self._prepare_out_dir(ckpt, overwrite))

        self.sampler = self.data.sampler(t.batch_size, t.seed, self.state.data_rank, self.state.data_world, mcfg)
        self.val_batches = self._eval_batches("val")
        self.train_eval_batches = self._eval_batches("train") if t.eval_train else []
        self.meter = measure.StepMeter()
        self.seconds = 0.0
        self.eval_seconds = 0.0
        self.loss_sum, self.loss_count = 0.0, 0
        self.test_figures: dict[str, float] = {}
        self.skipped = 0  # steps skipped for a non-finite loss or gradient (on_nonfinite: skip)
        self._interrupted = False  # set by Ctrl-C
        self.interrupt_agreed = False
        self.start_step = 0
        self.state.optimizer = build_optimizer(self.state.model, t)
        if ckpt is not None:
            self._restore(ckpt)
        self._wrap()
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.main

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

    def _prepare_out_dir(self, ckpt, overwrite: bool) -> None:
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
        model = self.state.model
        if distributed.active() and any(m.handles_gradients for m in self.methods):
            distributed.broadcast_module(model)  # one start for every replica; the method syncs gradients
            self.ddp_model = model
        elif distributed.active():
            unused = any(m.find_unused_parameters for m in self.methods)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DDP(model, device_ids=ids, find_unused_parameters=unused)
        else:
            self.ddp_model = model
        self._param_names = dict(model.named_parameters())

    def _rebuild(self, copy_from: dict[str, str]) -> None:
        """Fresh optimizer for the current parameters, keeping (or copying) AdamW state; re-wrap DDP."""
        old, old_names = self.state.optimizer, self._param_names
        new = build_optimizer(self.state.model, self.recipe.train)
        for name, p in self.state.model.named_parameters():
            if p in old.state:
                new.state[p] = old.state[p]
            elif name in copy_from and old_names.get(copy_from[name]) in old.state:
                new.state[p] = {k: v.clone() for k, v in old.state[old_names[copy_from[name]]].items()}
        self.state.optimizer = new
        self._wrap()

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
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
                "methods": [{"name": m.name, "state": m.state_dict()} for m in self.methods]}
        checkpoint.save(self.out_dir, self.state.step, meta, tensors)

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
        s.optimizer = build_optimizer(s.model, self.recipe.train)
        checkpoint.load_optimizer_state(s.model, s.optimizer, ckpt.optimizer)
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
        self.meter.restored = dict(meta.get("flop_cache", {}))  # measure the steps an unbroken run measures
        self.seconds, self.eval_seconds = meta["seconds"], meta["eval_seconds"]
        self.loss_sum, self.loss_count = meta["loss_acc"]
        self.skipped = meta.get("nonfinite_skipped", 0)

    # -- the loop ------------------------------------------------------------------------------
    def dispatch(self, event: Event) -> None:
        for m in (reversed(self.methods) if event.reverse else self.methods):
            m.on_event(event, self.state)

    def _forward_backward(self, x, y) -> torch.Tensor:
        if self.strategy is not None and self.strategy.takes_step(self.state):
            return self.strategy.training_step(self.state, self.ddp_model, x, y)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.recipe.train.amp):
            _, loss = self.ddp_model(x, y)
        loss.backward()
        return loss.detach()

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
        x, y = (v.to(self.device) for v in self.sampler.next())
        key = (tuple(x.shape), s.model.shape_key(),
               tuple(m.flop_key(s) for m in self.methods))
        loss = self.meter.step(key, lambda: self._forward_backward(x, y), s.model.parameters())
        self.dispatch(Event.AFTER_BACKWARD)
        norm = self._grad_norm()
        value, norm = torch.stack([loss.detach().float().cpu(), norm.float().cpu()]).tolist()
        finite, self.interrupt_agreed = self._agree(math.isfinite(value) and math.isfinite(norm))
        if finite:
            s.optimizer.step()
        elif t.on_nonfinite == "stop":
            s.optimizer.zero_grad(set_to_none=True)
            self.seconds += time.perf_counter() - t0 - (self.eval_seconds - eval0)
            self._stop_nonfinite(value, norm, lr)
        s.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        if finite:
            s.loss = value
            self.loss_sum += s.loss
            self.loss_count += 1
        else:  # on_nonfinite: skip — no update, counted and logged
            self.skipped += 1
            s.metrics["nonfinite_skipped"] = self.skipped
        s.metrics["lr"] = lr
        self.dispatch(Event.STEP_END)
        # Training time excludes evaluations methods ran during the step (counted as evaluation time).
        self.seconds += time.perf_counter() - t0 - (self.eval_seconds - eval0)

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

    def _stop_nonfinite(self, value: float, norm: float, lr: float) -> None:
        s = self.state
        if not math.isfinite(value):
            what = f"loss {value}"
        elif not math.isfinite(norm):
            what = f"gradient norm {norm} (loss {value:.4g})"
        else:
            what = "loss or gradient on another rank"
        last = f"last finite loss {s.loss:.4f}" if s.loss is not None else "no finite loss yet"
        raise self._stopped(f"non-finite {what} at step {s.step + 1}, lr {lr:.3g}; {last}; nothing was "
                            "updated or saved", exit_code=3)

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
        a checkpoint at the last completed step."""
        s, t = self.state, self.recipe.train
        stop = t.max_steps if until is None else min(until, t.max_steps)
        s.model.train()
        if t.warmup_steps >= t.max_steps and s.step == 0 and self.verbose:
            print(f"note: train.warmup_steps={t.warmup_steps} ≥ train.max_steps={t.max_steps}: the learning "
                  f"rate warms up for the whole run and peaks at {lr_at(t.max_steps - 1, t):.3g}, never "
                  f"reaching train.lr={t.lr:g}", flush=True)
        self.dispatch(Event.FIT_START)
        if s.step == 0:
            self._emit(self._metrics_row(self.evaluate()))
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=t.max_steps, initial=s.step, unit="step", dynamic_ncols=True)
        try:
            with self._catch_interrupts():
                while s.step < stop:
                    self.train_step()
                    evaluated = s.step % t.eval_interval == 0 or s.step == t.max_steps
                    if evaluated or s.step % t.log_interval == 0:
                        row = self._metrics_row(self.evaluate() if evaluated else {})
                        self._emit(row)
                        if bar is not None:
                            bar.set_postfix({k: f"{row[k]:.3f}" for k in ("train_loss", "val_loss") if k in row})
                    if bar is not None:
                        bar.update(1)
                    if self.interrupt_agreed:
                        self.save_checkpoint()
                        raise self._stopped(f"interrupted after step {s.step}", exit_code=130)
                    if t.checkpoint_interval and s.step % t.checkpoint_interval == 0 and s.step < stop:
                        self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        self.dispatch(Event.FIT_END)
        if s.step >= t.max_steps and "test" in self.data.splits:
            # The test split is scored once, at the end, and never used for choices.
            self.test_figures = self.evaluate_split("test").row("test")
        self.save_checkpoint()
        summary = self.summary()
        if self.main and self.out_dir is not None:
            checkpoint.write_text_atomic(self.out_dir / "summary.json", json.dumps(summary, indent=1))
        return summary

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
        return (steps * self.recipe.train.batch_size * self.data.items_per_sample(self.recipe.model)
                * self.state.data_world)

    def _total_flops(self, collective: bool = True) -> int:
        """Measured training FLOPs summed over the ranks (each measures its own steps)."""
        if not collective:
            return self.meter.total_flops * self.world
        return int(distributed.sum_tensor(torch.tensor([float(self.meter.total_flops)], dtype=torch.float64)).item())

    def summary(self, collective: bool = True) -> dict:
        t, s = self.recipe.train, self.state
        out = {"final_val_loss": s.val_loss, "best_val_loss": s.best_val_loss}
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
                    "finished": s.step >= t.max_steps, "world_size": self.world,
                    "step_shapes": len(self.meter.flops_by_key), "config": self.recipe.to_dict()})
        return out
