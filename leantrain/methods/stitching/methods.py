"""The trainer-facing methods: ``snnet`` and ``learngene_pool`` train a stitched family (one sampled
configuration per step), ``learngene_distill`` trains one auxiliary model of a Learngene Pool.

Lifecycle (``leantrain.core.method``). A fresh run's ``setup`` loads the source runs (anchors,
auxiliaries), builds the family, initialises its stitches and replaces ``state.model`` with it; the
family's structure goes into the method's JSON state (``family.spec()``), so a resumed run — and
``load_trained`` for ``sample``, ``evaluate``, ``export`` — rebuilds it from there without reading the
sources, and the checkpoint's weights load into it. Every step samples a configuration from
(seed, step) alone: the same on every rank, nothing to replay on resume. Evaluations score
``eval_config``; at the end every configuration is scored and the losses kept in the method's state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ...config import build, check
from ...core import Event, Method, State
from ...data import fixed_batches
from ...errors import ConfigError
from ...models import protocol
from ...models.gpt import GPT, GPTConfig
from ...registry import register_method
from .family import StitchedFamily, learngene_pool, snnet_family, stack_width
from .learngene import LearngeneDistillation, auxiliary_config, soft_distillation_loss
from .routes import V2_KINDS
from .sampling import flops_bins, sample_config
from .sources import (STACK_MODELS, identity, is_pretrained_dir, load_recorded, method_state, pretrained_stack,
                      read_source)
from .stitch_init import init_learned, init_least_squares


def runs_alone(name: str, state: State) -> None:
    """These methods replace the model; every other registered method addresses a GPT's blocks or
    dropout sites, which a family or a distillation wrapper does not have."""
    others = [n for n, _ in state.recipe.methods if n != name]
    if others:
        raise ConfigError(f"methods: {name} replaces the model and cannot be combined with {others[0]}; "
                          f"train with {name} alone")
    if state.data.task != "lm" or not hasattr(state.data, "train"):
        raise ConfigError(f"methods.{name}: stitched GPT families train on text (data.name: text), "
                          f"not {state.recipe.data_name!r}")


def plain_stack(model: torch.nn.Module) -> bool:
    """Whether ``model`` can be a stack of a family (or an ancestry / auxiliary model): it declares
    ordered blocks, the embedding / blocks / head entry points and its weights' roles (a model a
    method has wrapped, e.g. cut into local modules, does not)."""
    return protocol.supports(model, "blocks", "stages", "weight_roles")


def _model_device(state: State) -> torch.device:
    return next(state.model.parameters()).device


# ----------------------------------------------------------------------------------- family training
@dataclass
class FamilyOptions:
    """Options every family method shares (sampling, evaluation)."""
    sampling: Literal["auto", "uniform", "flops_binned"] = "auto"
    """Which configuration a step trains: uniform over all (SN-Net v1, Learngene Pool), or
    flops_binned — a FLOPs bin uniformly, then a configuration in it (SN-Net v2); auto = flops_binned
    for SN-Net v2, uniform otherwise."""
    flops_bins: int = 10
    """flops_binned: at most this many bins over the range of inference FLOPs."""
    init_batch: int = 100
    """Sequences of training text (one fixed batch, drawn from train.seed; the training batches are
    untouched) for least-squares stitch init (SN-Net: 100 samples)."""
    eval_config: int | None = None
    """Configuration id that evaluations during training score (and that `leantrain sample` /
    `evaluate` use on the run); null = the widest anchor or auxiliary model. `leantrain pool list`
    shows the ids."""
    stitch_lr_scale: float = 1.0
    """The stitch layers' learning rate: this × the run's at every step (the rest of the family
    trains at the run's). SN-Net's reference raises the stitches' rate above the anchors'; our
    benchmark sets one value for both families. 1 = one rate for everything."""
    final_eval: Literal["whole", "fixed", "none"] = "whole"
    """At the end of training, score every configuration on the whole validation split (whole), on the
    run's fixed evaluation batches (fixed, cheaper), or not at all (none). The losses are kept in the
    checkpoint: `leantrain pool list` prints them, `export --max-flops/--max-params` chooses by them."""

    def validate(self) -> None:
        check(self.flops_bins >= 1, "flops_bins", f"must be ≥ 1, got {self.flops_bins}")
        check(self.init_batch >= 1, "init_batch", f"must be ≥ 1, got {self.init_batch}")
        check(self.stitch_lr_scale > 0, "stitch_lr_scale", f"must be positive, got {self.stitch_lr_scale}")
        check(self.eval_config is None or self.eval_config >= 0, "eval_config",
              f"must be a configuration id ≥ 0, got {self.eval_config}")


class FamilyMethod(Method):
    """Shared by ``snnet`` and ``learngene_pool``: the family replaces ``state.model``; each step trains
    one configuration of it."""
    kind = "step_strategy"
    accumulates = True  # one forward + state.backward per micro-batch; the trainer steps
    precisions = ("fp32", "bf16", "fp16")
    find_unused_parameters = True  # a step reaches only its configuration's parameters
    binned_by_default = False

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.spec: dict | None = None
        """``family.spec()``: set by a fresh run's setup, or loaded from the checkpoint."""
        self.sources: list[dict] = []
        self.bins: list[list[int]] = []
        self.eval_id = 0
        self.final: dict = {}
        """The end-of-training evaluation: {split, step, losses: {id: {loss, loss_se, n}}}."""
        self.teacher: torch.nn.Module | None = None

    # -- to be provided by each method
    def build(self, state: State) -> StitchedFamily:
        """Load the source runs (recording them in ``self.sources``), build the family on the run's device
        and initialise its stitches."""
        raise NotImplementedError

    # -- lifecycle
    def check(self, state: State) -> None:
        runs_alone(self.name, state)

    def setup(self, state: State) -> None:
        device = _model_device(state)
        # Building must not shift the run's random stream (it would differ from a resumed run's).
        with torch.random.fork_rng(devices=[]):
            if self.spec is None:
                family = self.build(state)
                self._plan(family)
                self.spec = family.spec()
            else:
                family = StitchedFamily.from_spec(self.spec).to(device)
        family.active = self.eval_id
        state.model = family

    def _plan(self, family: StitchedFamily) -> None:
        """Sampling bins and the evaluated configuration of a freshly built family."""
        n = family.num_configs
        c = self.cfg
        if c.eval_config is not None and c.eval_config >= n:
            raise ConfigError(f"methods.{self.name}.eval_config: {c.eval_config} is out of range: the family "
                              f"has {n} configurations (0..{n - 1})")
        self.eval_id = family.active if c.eval_config is None else c.eval_config
        binned = c.sampling == "flops_binned" or (c.sampling == "auto" and self.binned_by_default)
        if binned:
            self.bins = flops_bins([family.config_flops(i) for i in range(n)], c.flops_bins)
        else:
            self.bins = [list(range(n))]

    def on_event(self, event: Event, state: State) -> None:
        family = state.model
        if event is Event.FIT_START and self.cfg.stitch_lr_scale != 1.0:
            self._stitch_groups(state)
        elif event is Event.AFTER_BACKWARD and self.cfg.stitch_lr_scale != 1.0:
            # the trainer set this step's rate in every group before the forward; the stitches' groups
            # get the factor on top (afresh each step, so it never accumulates)
            for group in state.optimizer.param_groups:
                if group.get("stitch"):
                    group["lr"] *= self.cfg.stitch_lr_scale
        if event is Event.STEP_START:
            family.active = sample_config(self.bins, state.recipe.train.seed, state.step)
            state.log(f"{self.name}/config", family.active)
        elif event is Event.EVAL_START:
            # The next step samples again; until then (checkpoint, end of run) eval_config stays active.
            family.active = self.eval_id

    def _stitch_groups(self, state: State) -> None:
        """Move the stitch layers' parameters into optimizer groups of their own (marked ``stitch``),
        keeping each one's weight decay and AdamW state (the state is keyed by parameter)."""
        opt = state.optimizer
        stitch = {id(p) for p in state.model.stitches.parameters()}
        moved = []
        for group in opt.param_groups:
            if group.get("stitch"):
                return  # already split (a second FIT_START in one process)
            mine = [p for p in group["params"] if id(p) in stitch]
            if mine:
                group["params"] = [p for p in group["params"] if id(p) not in stitch]
                moved.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine, "stitch": True})
        for group in moved:
            opt.add_param_group(group)

    def finish(self, state: State) -> bool:
        """Score every configuration (after the final checkpoint: minutes for a large family); a run
        interrupted here resumes into this alone. Done once per final step."""
        if self.cfg.final_eval == "none" or self.final.get("step") == state.step:
            return False
        family, whole = state.model, self.cfg.final_eval == "whole"
        split = "whole validation split" if whole else "the run's fixed validation batches"
        losses = {}
        try:
            for i in state.track(range(family.num_configs), f"{self.name}: scoring every configuration ({split})"):
                family.active = i
                r = state.evaluate("val", whole=whole)
                losses[str(i)] = {"loss": r.loss, "loss_se": r.loss_se, "n": r.n}
        finally:
            family.active = self.eval_id
        self.final = {"split": split, "step": state.step, "losses": losses}
        return True

    def training_step(self, state: State, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with state.autocast():
            if self.teacher is None:
                _, loss = model(x, y)
            else:
                with torch.no_grad():
                    teacher_logits, _ = self.teacher(x)
                logits, _ = model(x)
                loss = soft_distillation_loss(logits, teacher_logits, y, self.cfg.alpha, self.cfg.temperature)
        state.backward(loss)
        return loss.detach()

    # -- checkpointing
    def state_dict(self) -> dict:
        return {"spec": self.spec, "sources": self.sources, "bins": self.bins, "eval_config": self.eval_id,
                "final": self.final}

    def load_state_dict(self, state: dict) -> None:
        self.spec, self.sources, self.bins = state["spec"], state["sources"], state["bins"]
        self.eval_id, self.final = state["eval_config"], state["final"]

    # -- helpers for build()
    def init_tokens(self, state: State, family: StitchedFamily) -> torch.Tensor:
        """One fixed batch of training windows for least-squares init (does not touch the sampler)."""
        x, _ = fixed_batches(state.data.train, family.block_size, self.cfg.init_batch, 1,
                             state.recipe.train.seed)[0]
        return x.to(_model_device(state))


# ----------------------------------------------------------------------------------- SN-Net
@dataclass
class SNNetConfig(FamilyOptions):
    anchors: list[str] = field(default_factory=list)
    """Run directories of the trained anchors (at least two; hf anchors may also be save_pretrained
    directories, e.g. written by export --format hf): gpt or hf runs on this run's data with the
    recipe's model.block_size and one bias setting; v1 needs one depth, v2 depths that are multiples
    of the next narrower anchor's. Only this run's first start reads them."""
    version: Literal["v1", "v2"] = "v1"
    """v1: small → large stitches of nearest anchors at sliding-window positions; v2: also large →
    small and three-part routes (large→small→large, small→large→small)."""
    window: int = 2
    """v1: blocks in the sliding window of stitch positions; positions in one window share a stitch
    layer (SN-Net: 2, every (j, k) with |j − k| ≤ 1)."""
    stride: int = 1
    """v1: step of the sliding window (SN-Net: 1); at most window, so every block is covered."""
    v2_kinds: list[Literal["sl", "ls", "lsl", "sls"]] = field(default_factory=lambda: list(V2_KINDS))
    """v2: route kinds to enumerate (sl small→large, ls large→small, lsl, sls three-part)."""
    lora_rank: int = 0
    """> 0: freeze each least-squares stitch weight and train a rank-r update (SN-Net v2: 64)."""
    lora_alpha: float = 1.0
    """Scale of the low-rank update: alpha / lora_rank (loralib's default alpha 1)."""
    init: Literal["least_squares", "none"] = "least_squares"
    """Stitch init: least squares on one batch of activations (SN-Net), or PyTorch's default Linear init."""

    def validate(self) -> None:
        super().validate()
        check(len(self.anchors) >= 2, "anchors", f"needs at least two anchor run directories, got {len(self.anchors)}")
        check(self.window >= 1, "window", f"must be ≥ 1, got {self.window}")
        check(1 <= self.stride <= self.window, "stride", f"must be in [1, window={self.window}], got {self.stride}")
        check(len(self.v2_kinds) > 0 and len(set(self.v2_kinds)) == len(self.v2_kinds), "v2_kinds",
              f"must list route kinds once each, got {self.v2_kinds}")
        check(self.lora_rank >= 0, "lora_rank", f"must be ≥ 0, got {self.lora_rank}")
        check(self.lora_alpha > 0, "lora_alpha", f"must be positive, got {self.lora_alpha}")
        check(self.lora_rank == 0 or self.init == "least_squares", "lora_rank",
              "a low-rank update trains on top of a frozen least-squares stitch; set init: least_squares")


@register_method
class SNNet(FamilyMethod):
    """SN-Net (v1/v2): stitch trained anchors of different widths into many models; train one per step."""
    name = "snnet"
    Config = SNNetConfig

    @property
    def binned_by_default(self) -> bool:
        return self.cfg.version == "v2"

    def build(self, state: State) -> StitchedFamily:
        c = self.cfg
        anchors = []
        for i, path in enumerate(c.anchors):
            key = f"methods.snnet.anchors[{i}]"
            if is_pretrained_dir(path):  # an hf model's save_pretrained directory
                model, ident = pretrained_stack(path, key, state)
                anchors.append(model.train())
                self.sources.append({"role": "anchor", **ident})
                continue
            meta = read_source(path, key, state, "anchors")
            trained = load_recorded(identity(path, meta), key)
            if not plain_stack(trained.model):
                raise ConfigError(f"{key}: {path} was trained with methods that change the model "
                                  f"({type(trained.model).__name__}); anchors must be plain gpt runs")
            anchors.append(trained.model.train())
            self.sources.append({"role": "anchor", **identity(path, meta)})
        try:
            family = snnet_family(anchors, c.version, c.window, c.stride, c.v2_kinds, c.lora_rank, c.lora_alpha)
        except ConfigError as e:
            raise ConfigError(f"methods.snnet.anchors: {e}") from None
        family.to(_model_device(state))
        if c.init == "least_squares":
            init_least_squares(family, self.init_tokens(state, family))
        return family


# ----------------------------------------------------------------------------------- Learngene
@dataclass
class LearngeneDistillConfig:
    ancestry: str = ""
    """Run directory of the trained ancestry: a gpt run on this run's data, at least as wide and deep
    as this recipe's model (the auxiliary model being distilled), with its block_size."""
    points: int = 3
    """Matched positions for the hidden-state and attention losses: the ends of this many equal parts
    of both models (3: blocks at 1/3, 2/3 and the end, as in the reference code)."""
    alpha: float = 0.1
    """Weight of the cross-entropy on labels; 1 − alpha weighs the distillation terms (paper: 0.1)."""
    temperature: float = 1.0
    """Softening temperature T of the soft cross-entropy to the ancestry's logits (paper: 1)."""

    def validate(self) -> None:
        check(bool(self.ancestry), "ancestry", "needs the run directory of the trained ancestry model")
        check(self.points >= 1, "points", f"must be ≥ 1, got {self.points}")
        check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        check(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")


@register_method
class LearngeneDistill(Method):
    """Learngene Pool stage 1: distil an ancestry run into this recipe's (smaller) auxiliary GPT."""
    name = "learngene_distill"
    Config = LearngeneDistillConfig
    kind = "step_strategy"
    accumulates = True  # one forward + state.backward per micro-batch; the trainer steps
    precisions = ("fp32", "bf16", "fp16")

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.ancestry: dict | None = None
        """The ancestry's identity and shape, recorded when the run starts."""
        self.teacher: GPT | None = None

    def check(self, state: State) -> None:
        runs_alone(self.name, state)
        key = f"methods.{self.name}.ancestry"
        if state.recipe.model_name not in STACK_MODELS or not plain_stack(state.model):
            raise ConfigError(f"methods.{self.name}: the auxiliary model is the recipe's model and must be "
                              f"model.name: gpt (or hf), not {state.recipe.model_name!r}")
        meta = read_source(self.cfg.ancestry, key, state, "the ancestry")
        if state.recipe.model_name != "gpt":  # hf: shapes by the protocol, one transformers family
            self._check_other(state, meta, key)
            return
        ancestry = _gpt_config(meta)
        student = state.model.config
        try:
            auxiliary_config(ancestry, student.n_layer, student.n_embd, student.n_head)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
        if ancestry.bias != student.bias:
            raise ConfigError(f"{key}: the ancestry has bias={ancestry.bias}, this recipe's model.bias is "
                              f"{student.bias}; an auxiliary model shares its ancestry's bias setting")
        if self.cfg.points > student.n_layer:
            raise ConfigError(f"methods.{self.name}.points: {self.cfg.points} matched positions need at least as "
                              f"many blocks, the auxiliary model has {student.n_layer}")

    def _check_other(self, state: State, meta: dict, key: str) -> None:
        """An hf auxiliary: the ancestry a run of the same model kind and family, at least as wide and deep."""
        theirs = meta["recipe"].get("model", {}).get("name", "gpt")
        if theirs != state.recipe.model_name:
            raise ConfigError(f"{key}: the ancestry is a {theirs!r} model, the auxiliary a "
                              f"{state.recipe.model_name!r} one")
        width, depth, kind = _run_shape(self.cfg.ancestry, meta, key)
        own = getattr(state.model.config, "model_type", None)
        if kind != own:
            raise ConfigError(f"{key}: the ancestry is a {kind}, the auxiliary model a {own}; one family")
        if stack_width(state.model) > width or len(protocol.adapt(state.model).blocks) > depth:
            raise ConfigError(f"{key}: the ancestry ({depth} blocks × {width}) is smaller than its auxiliary "
                              f"model ({len(protocol.adapt(state.model).blocks)} × {stack_width(state.model)})")
        if self.cfg.points > len(protocol.adapt(state.model).blocks):
            raise ConfigError(f"methods.{self.name}.points: {self.cfg.points} matched positions need at least as "
                              f"many blocks as the auxiliary model has")

    def setup(self, state: State) -> None:
        if self.ancestry is None:  # a fresh run (on resume and load_trained the record is loaded)
            key = f"methods.{self.name}.ancestry"
            meta = read_source(self.cfg.ancestry, key, state, "the ancestry")
            width, depth, _ = _run_shape(self.cfg.ancestry, meta, key)
            self.ancestry = {**identity(self.cfg.ancestry, meta), "n_embd": width, "n_layer": depth}
        a, c = self.ancestry, self.cfg
        with torch.random.fork_rng(devices=[]):  # the projections' init must not shift the run's RNG
            distil = LearngeneDistillation(state.model, a["n_embd"], a["n_layer"], c.points, c.alpha, c.temperature)
        state.model = distil.to(_model_device(state))

    def on_event(self, event: Event, state: State) -> None:
        if event is Event.FIT_START and self.teacher is None:
            self.teacher = load_teacher(self.ancestry, f"methods.{self.name}.ancestry", state)

    def training_step(self, state: State, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with state.autocast():
            _, loss = model(x, y, teacher=self.teacher)  # through the DDP wrapper: projections' grads reduce
        state.backward(loss)
        for k, v in state.model.parts.items():
            state.log_mean(f"{self.name}/{k}", v.item())
        return loss.detach()

    def state_dict(self) -> dict:
        return {"ancestry": self.ancestry}

    def load_state_dict(self, state: dict) -> None:
        self.ancestry = state["ancestry"]


def _run_shape(path: str, meta: dict, key: str) -> tuple[int, int, str | None]:
    """(width, blocks, transformers model_type or None) of the model a run trained."""
    if meta["recipe"].get("model", {}).get("name", "gpt") == "gpt":
        cfg = _gpt_config(meta)
        return cfg.n_embd, cfg.n_layer, None
    with torch.random.fork_rng(devices=[]):
        model = load_recorded(identity(path, meta), key).model
    return stack_width(model), len(protocol.adapt(model).blocks), getattr(model.config, "model_type", None)


def _gpt_config(meta: dict) -> GPTConfig:
    """The GPT config a run was trained with (from its checkpoint's recipe)."""
    model = {k: v for k, v in meta["recipe"]["model"].items() if k != "name"}
    return build(GPTConfig, model, "model")


def load_teacher(ancestry: dict, key: str, state: State) -> GPT:
    """The recorded ancestry run, frozen, in eval mode, on the run's device."""
    with torch.random.fork_rng(devices=[]):  # building it must not shift the run's random stream
        teacher = load_recorded(ancestry, key).model
    if not plain_stack(teacher):
        raise ConfigError(f"{key}: {ancestry['run']} was trained with methods that change the model; the "
                          "ancestry must be a plain gpt run")
    return teacher.requires_grad_(False).eval().to(_model_device(state))


@dataclass
class LearngenePoolConfig(FamilyOptions):
    auxiliaries: list[str] = field(default_factory=list)
    """Run directories of learngene_distill runs (at least two, one depth, one ancestry): their
    auxiliary models' blocks are the pool's instances. Only this run's first start reads them."""
    window: int = 2
    """Blocks in the sliding window of stitch positions between two auxiliary models (as SN-Net's)."""
    stride: int = 1
    """Step of the sliding window; at most window."""
    pairs: Literal["all", "nearest"] = "all"
    """Stitch every narrower → wider pair of auxiliary models (all), or only neighbours in width."""
    init: Literal["learned", "least_squares", "none"] = "least_squares"
    """Stitch init: least squares on one batch of activations (as SN-Net; the default: on held-out
    batches it started every descendant lower than the learned init, and they ended lower — the
    tests and scripts/pool_init_probe.py, see the card), learned (the paper's idea: through the distillation projections,
    W = P̄_end·pinv(P̄_front), b = c̄_end − W·c̄_front, in both instances' own bases), or PyTorch's
    default Linear init."""
    distill: bool = False
    """Also distil from the ancestry while training the pool (soft cross-entropy to its logits); the
    ancestry recorded by the auxiliaries' runs is loaded, and must be unchanged."""
    alpha: float = 0.5
    """distill: weight of the cross-entropy on labels; 1 − alpha weighs the soft term."""
    temperature: float = 1.0
    """distill: softening temperature of the soft cross-entropy."""

    def validate(self) -> None:
        super().validate()
        check(len(self.auxiliaries) >= 2, "auxiliaries",
              f"needs at least two learngene_distill run directories, got {len(self.auxiliaries)}")
        check(self.window >= 1, "window", f"must be ≥ 1, got {self.window}")
        check(1 <= self.stride <= self.window, "stride", f"must be in [1, window={self.window}], got {self.stride}")
        check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        check(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")


@register_method
class LearngenePool(FamilyMethod):
    """Learngene Pool: stitch distilled auxiliary models' blocks into descendants; train one per step."""
    name = "learngene_pool"
    Config = LearngenePoolConfig

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.ancestry: dict | None = None

    def build(self, state: State) -> StitchedFamily:
        c = self.cfg
        distils = []
        for i, path in enumerate(c.auxiliaries):
            key = f"methods.{self.name}.auxiliaries[{i}]"
            meta = read_source(path, key, state, "auxiliary models", plain=False)
            recorded = method_state(meta, LearngeneDistill.name)
            if recorded is None:
                names = [m["name"] for m in meta.get("methods", [])]
                raise ConfigError(f"{key}: {path} was not trained with learngene_distill (its methods: {names})")
            ancestry = recorded["ancestry"]
            if self.ancestry is not None and ancestry["model_sha256"] != self.ancestry["model_sha256"]:
                raise ConfigError(f"{key}: {path} was distilled from {ancestry['run']} (step {ancestry['step']}), "
                                  f"the first auxiliary from {self.ancestry['run']} (step {self.ancestry['step']}); "
                                  "a pool's instances come from one ancestry")
            self.ancestry = ancestry
            distils.append(load_recorded(identity(path, meta), key).model.train())
            self.sources.append({"role": "auxiliary", **identity(path, meta)})
        self.sources.append({"role": "ancestry", **self.ancestry})
        try:
            family = learngene_pool([d.student for d in distils], c.window, c.stride, c.pairs)
        except ConfigError as e:
            raise ConfigError(f"methods.{self.name}.auxiliaries: {e}") from None
        family.to(_model_device(state))
        if c.init == "learned":
            stack_of = {id(s): i for i, s in enumerate(family.stacks)}
            init_learned(family, {stack_of[id(d.student)]: d.stitch_projections() for d in distils},
                         {stack_of[id(d.student)]: d.stitch_projection_biases() for d in distils})
        elif c.init == "least_squares":
            init_least_squares(family, self.init_tokens(state, family))
        return family

    def on_event(self, event: Event, state: State) -> None:
        if event is Event.FIT_START and self.cfg.distill and self.teacher is None:
            self.teacher = load_teacher(self.ancestry, f"methods.{self.name}.distill (the ancestry)", state)
        super().on_event(event, state)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ancestry": self.ancestry}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ancestry = state["ancestry"]
