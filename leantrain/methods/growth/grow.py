"""The ``grow`` method: the recipe's model is the *target*; ``source`` is a trained smaller model whose
weights a growth operator maps into it before the target trains normally. leantrain's GPT uses the
operators of ``copying.py`` / ``mango.py`` / ``ligo.py`` / ``msg.py``; any other model that declares
weight roles (``hf``) the same operators through its roles (``roles.py``).

* Copy operators (fpi, aki, stackbert, gstack, net2net) and MSG grow once, in ``setup``: the target
  holds the grown weights before the optimizer exists, and the run's first evaluation (step 0) is
  the grown model's.
* Trained operators (mango, ligo) take the run's first ``operator_steps`` steps: each step runs the
  target functionally on the operator's output and trains only the operator (:mod:`.phase`); then
  the output is written into the target, the operator and its optimizer are dropped, and the target
  trains with a fresh optimizer.
* MSG's masks ramp from 0 to 1 over ``ramp_steps`` steps (forward hooks, re-attached on resume).

The source is read once, when a fresh run starts; its provenance (checkpoint step, SHA-256 of its
weights) and training cost are kept in the method's state. Nothing after that needs it: a grown
target is in the run's checkpoints, and during the operator phase so are the source's weights, the
operator and its moments. Method card: README.md in this folder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from dataclasses import dataclass
from typing import Literal

import torch

from ...config import check, to_dict
from ...core import Event, Method, State, checkpoint
from ...errors import ConfigError, LeantrainError
from ...models import protocol
from ...models.gpt import GPT, GPTConfig
from ...registry import register_method
from .copying import aki, fpi, gstack, net2net, stackbert
from .layout import PREFIX, GrowthOperator, Tensors, check_layout, load_tensors, source_tensors
from .ligo import LiGOOperator
from .mango import MangoOperator
from .msg import MSGGrowth, MSGMasks, carry_adam_state, msg_grow, ramp_value
from .phase import OperatorPhase
from . import roles as role_growth

OPERATORS = ("mango", "ligo", "fpi", "aki", "stackbert", "gstack", "msg", "net2net")
TRAINED = ("mango", "ligo")
CARRY = ("msg", "stackbert", "gstack")
"""Operators whose target entries are copies of single source entries, so AdamW moments can follow."""
NOISE = {"mango": 1e-3, "ligo": 0.03, "net2net": 0.01}
"""Default init noise of the operators that take one (see ``GrowConfig.noise``)."""
DEFAULT_OPERATOR_STEPS = 100

# Options that only some operators read: giving one a non-default value for another operator is an
# error rather than silently ignored.
APPLIES = {"operator_steps": TRAINED, "operator_lr": TRAINED, "operator_warmup": TRAINED,
           "operator_weight_decay": TRAINED, "target_warmup": TRAINED, "rank": ("mango",), "init": ("mango",),
           "noise": tuple(NOISE),
           "mapping": ("mango", "fpi", "aki", "net2net"), "depth_init": ("ligo",), "width_init": ("ligo",),
           "new_blocks": ("msg",), "init_std": ("msg",), "ramp_steps": ("msg",), "g": ("gstack",)}


@dataclass
class GrowConfig:
    source: str | None = None
    """Run or checkpoint directory of the trained smaller model to grow from (same model name, data and
    vocabulary; for an hf target also a save_pretrained directory of the same family). Read once, when
    a fresh run starts; resuming or loading the grown run does not need it."""
    operator: Literal["mango", "ligo", "fpi", "aki", "stackbert", "gstack", "msg", "net2net"] = "mango"
    """mango, ligo: trained operators (an operator phase first); fpi, aki (bert2BERT), stackbert,
    gstack, net2net: copies; msg: masked, function-preserving growth with a ramp. See the card."""
    operator_steps: int | None = None
    """mango, ligo: the run's first N steps train the operator on the task loss (the target runs on
    its output; only the operator learns), then its output becomes the target's weights. null = 100.
    These are steps of the run: they count in max_steps, FLOPs and time."""
    operator_lr: float = 1e-3
    """mango, ligo: peak learning rate of the operator's own AdamW (not the run's)."""
    operator_warmup: int = 10
    """mango, ligo: linear warm-up steps of the operator's learning rate, then constant."""
    operator_weight_decay: float = 0.0
    """mango, ligo: AdamW weight decay on the operator (decay would shrink the copy the operator
    starts from, i.e. every target weight; LiGO's reference used 0.1)."""
    target_warmup: int | None = None
    """mango, ligo: after the operator phase the target starts with fresh AdamW moments, but the run's
    learning-rate warm-up was spent on the operator; the run's learning rate is therefore multiplied
    by a linear ramp from 0 to 1 over this many steps after the phase [ours]. null = train.warmup_steps;
    0 = none."""
    rank: int = 1
    """mango: ring rank R of the TR-MPO cores (R×n×m×R); operator parameters grow ≈ R², the
    contraction's cost ≈ R³ (R = 4 costs ≈ 4 target steps per operator step at 4×64 → 8×128)."""
    init: Literal["copy", "function_preserving"] = "copy"
    """mango: the operator's initial output. copy: FPI width + StackBERT depth (every target layer l
    copies source layer l mod L₁; the papers' and our default — the growth sweep kept it: in none of
    its six Mango rows was function_preserving measurably lower, see benchmarks/growth/sweep.md);
    function_preserving: the same copy mapping, but the blocks that
    are not a source layer's first copy start as identities (their output projections gated to zero by
    a trainable gate), and the core noise touches only off-diagonal bond entries — with
    ``mapping: cyclic`` and an integer width factor the grown model computes the source's logits at
    step 0 (exactly at rank 1, up to O(noise²) at rank ≥ 2). function_preserving is gpt only: refused on
    an hf model (the role-based Mango starts from copy growth)."""
    noise: float | None = None
    """Init noise. mango: N(0, noise²) on every core entry (null = 0.001); ligo: U(0, noise) on the
    stackbert_noisy depth coefficients (null = 0.03); net2net: N(0, (noise·std W)²) on the new units'
    weights, to break the copies' symmetry (null = 0.01; 0 keeps the function exactly)."""
    mapping: Literal["random", "cyclic"] = "random"
    """mango, fpi, aki, net2net: which source unit (head, MLP unit, dimension) each new one copies:
    uniform at random (the papers), or i mod n (with the width a multiple, FPI is then exact even
    with LayerNorm)."""
    depth_init: Literal["stackbert", "stackbert_noisy", "interlace", "rand"] = "stackbert_noisy"
    """ligo: initial depth coefficients (stackbert_noisy is the reference's default)."""
    width_init: Literal["rand", "sel"] = "rand"
    """ligo: initial width maps, rand (rows uniform, normalised; the reference's) or sel (one-hot copies)."""
    new_blocks: Literal["copy", "random"] = "copy"
    """msg: new blocks start as copies of grown source blocks (MSG's default) or random; masked either way."""
    init_std: float = 0.02
    """msg: std of the new entries' N(0, std²) init."""
    ramp_steps: int = 100
    """msg: the masks rise linearly from 0 (the source's function, exactly) to 1 over this many steps."""
    g: int | None = None
    """gstack: how many copies of the source stack make the target; null = model.n_layer / the source's
    n_layer (given, it must agree)."""
    optimizer_state: Literal["reset", "carry"] = "reset"
    """AdamW moments of the target: reset (fresh; the default: the target restarts its own LR schedule,
    and most operators mix or divide weights, so old moments would not fit them) or carry the source's
    moments into the entries that copy a source entry (msg: the old slice, as MSG does; stackbert,
    gstack: every copy). Only msg, stackbert and gstack can carry."""
    eval_after_growth: bool = True
    """Score the grown target on the whole validation split and log grow/val_loss_after_growth (and,
    for mango and ligo, grow/val_loss_at_init before the operator phase)."""

    def validate(self) -> None:
        op = self.operator
        check(self.source is None or self.source.strip() != "", "source", "must name a run or checkpoint directory")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, users in APPLIES.items():
            check(getattr(self, key) == defaults[key] or op in users, key,
                  f"only {', '.join(users)} read{'s' if len(users) == 1 else ''} it (operator: {op})")
        check(self.operator_steps is None or self.operator_steps >= 1, "operator_steps",
              f"must be ≥ 1, got {self.operator_steps}")
        check(self.operator_lr > 0, "operator_lr", f"must be positive, got {self.operator_lr}")
        check(self.operator_warmup >= 0, "operator_warmup", f"must be ≥ 0, got {self.operator_warmup}")
        check(self.operator_weight_decay >= 0, "operator_weight_decay", "must be ≥ 0")
        check(self.target_warmup is None or self.target_warmup >= 0, "target_warmup",
              f"must be ≥ 0, got {self.target_warmup}")
        check(self.rank >= 1, "rank", f"must be ≥ 1, got {self.rank}")
        check(self.noise is None or self.noise >= 0, "noise", f"must be ≥ 0, got {self.noise}")
        check(self.init_std > 0, "init_std", f"must be positive, got {self.init_std}")
        check(self.ramp_steps >= 1, "ramp_steps", f"must be ≥ 1, got {self.ramp_steps}")
        check(self.g is None or self.g >= 2, "g", f"must be ≥ 2, got {self.g}")
        check(self.optimizer_state == "reset" or op in CARRY, "optimizer_state",
              f"carry needs target entries that copy single source entries ({', '.join(CARRY)}); {op} mixes "
              "or divides weights, so use reset")

    @property
    def phase_steps(self) -> int:
        """Steps of the operator phase (0 for operators that are not trained)."""
        if self.operator not in TRAINED:
            return 0
        return DEFAULT_OPERATOR_STEPS if self.operator_steps is None else self.operator_steps

    @property
    def init_noise(self) -> float:
        return NOISE[self.operator] if self.noise is None else self.noise


# ------------------------------------------------------------------------------------ the source
def growable(model: torch.nn.Module) -> bool:
    """Whether growth can map into / out of ``model``: it declares ordered blocks, replacing them and
    its weights' roles (the operators address parameters by the names ``weight_roles()`` gives)."""
    return protocol.supports(model, "blocks", "depth_change", "weight_roles")


def read_source(path: str, state: State) -> tuple[torch.nn.Module, dict, dict[str, torch.Tensor]]:
    """The source model (on the run's device, eval mode), its record (provenance and training cost)
    and its optimizer tensors; every problem is a one-line ConfigError naming methods.grow.source.

    A gpt run grows a gpt; any other model (``hf``) grows from a leantrain run of the same model name
    or — for ``hf`` — a plain ``save_pretrained`` directory (no training cost or vocabulary is known
    for it; the token-id space is checked by shape)."""
    from ...core.loading import load_trained

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"methods.grow.source: {msg}")
    ours = state.recipe.model_name
    if ours != "gpt" and (Path(path) / "config.json").is_file() and not checkpoint_like(path):
        return read_pretrained_source(path, state)
    try:
        meta = checkpoint.read_meta(path)
    except LeantrainError as e:
        raise bad(str(e)) from None
    recipe = meta.get("recipe", {})
    family = recipe.get("model", {}).get("name", "gpt")
    if family != ours:
        into = "a gpt into a gpt" if ours == "gpt" else f"a model into one of the same kind ({ours!r})"
        raise bad(f"{path} holds a {family!r} model; grow maps {into}")
    data = recipe.get("data", {}).get("name", "text")
    if data != state.recipe.data_name:
        raise bad(f"{path} was trained on data {data!r}, this run uses {state.recipe.data_name!r}")
    ours_vocab, theirs = state.data.meta().get("vocab"), meta.get("vocab")
    if ours_vocab != theirs:
        n = lambda v: "no" if v is None else len(v)  # noqa: E731
        raise bad(f"{path} was trained on another vocabulary ({n(theirs)} symbols; this run's data has "
                  f"{n(ours_vocab)}, and the token ids must mean the same)")
    try:
        with torch.random.fork_rng(devices=[]):  # rebuilding the source does not move the run's random stream
            trained = load_trained(path)
    except LeantrainError as e:
        raise bad(str(e)) from None
    if not growable(trained.model):
        raise bad(f"{path} holds a {type(trained.model).__name__}, not a plain {ours}")
    if not by_roles(trained.model):
        check_layout(trained.model, "methods.grow.source")
    device = next(state.model.parameters()).device
    record = {"path": str(trained.ckpt.path), "step": meta["step"], "model_sha256": meta["sha256"]["model"],
              "config": source_config(trained.model),
              "train_flops": meta["flops"] * meta.get("world_size", 1), "wall_seconds": meta["seconds"]}
    return trained.model.to(device), record, trained.ckpt.optimizer


def by_roles(model: torch.nn.Module) -> bool:
    """Whether growth addresses ``model`` through its weight roles (every model but leantrain's gpt,
    whose operators keep their own tensor layout and so their committed numbers)."""
    return not isinstance(model, GPT)


def checkpoint_like(path: str) -> bool:
    """Whether ``path`` is a leantrain run or checkpoint directory (rather than a save_pretrained one)."""
    try:
        checkpoint.resolve(path)
    except LeantrainError:
        return False
    return True


def source_config(model: torch.nn.Module) -> dict:
    """The source's config as the run's state keeps it: a gpt's GPTConfig; an hf model's leantrain
    config with the transformers config inlined (rebuilding it never needs the source directory)."""
    cfg = to_dict(model.config)
    hf = getattr(model, "hf", None)
    if hf is not None:
        cfg |= {"path": None, "config": {k: v for k, v in hf.config.to_diff_dict().items()
                                          if k != "transformers_version"}}
    return cfg


def read_pretrained_source(path: str, state: State):
    """An ``hf`` source from a plain save_pretrained directory."""
    from ...models.hf import HFConfig, HFModel, build_hf_model
    cfg = HFConfig(path=str(path), block_size=state.model.config.block_size,
                   attn_implementation=state.model.config.attn_implementation)
    try:
        cfg.validate()
        if cfg.task != state.model.config.task:
            raise ConfigError(f"{path} holds a {cfg.model_type} ({cfg.task.replace('_', ' ')}) model, the run's "
                              f"model is a {state.model.config.task.replace('_', ' ')} model")
        with torch.random.fork_rng(devices=[]):
            model = HFModel(build_hf_model(cfg), cfg)
    except LeantrainError as e:
        raise ConfigError(f"methods.grow.source: {str(e).removeprefix('methods.grow.source: ')}") from None
    import hashlib
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    device = next(state.model.parameters()).device
    record = {"path": str(path), "step": None, "model_sha256": digest.hexdigest(), "config": source_config(model),
              "train_flops": 0.0, "wall_seconds": 0.0}
    return model.to(device).eval(), record, {}


def rebuild_source(record: dict, tensors: dict[str, torch.Tensor], device) -> torch.nn.Module:
    """The source model from its record and saved weights (a resumed operator phase)."""
    from ...models.hf import HFConfig, HFModel, build_hf_model
    cfg = HFConfig(**record["config"])
    with torch.random.fork_rng(devices=[]):
        model = HFModel(build_hf_model(cfg), cfg).to(device)
    load_tensors(model, tensors)
    return model.eval()


def source_moments(tensors: dict[str, torch.Tensor], path: str) -> dict[str, dict[str, torch.Tensor]]:
    """The source checkpoint's optimizer tensors as {parameter: {slot: tensor}} (AdamW needed)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        name, slot = key.rsplit("/", 1)
        out.setdefault(name, {})[slot] = v
    if not out or any("exp_avg" not in s for s in out.values()):
        raise ConfigError(f"methods.grow.optimizer_state: carry needs the source's AdamW moments; {path} "
                          "has none (trained with sgd, or saved without them)")
    return out


# ------------------------------------------------------------------------------------ the method
@register_method
class Grow(Method):
    """Grow the recipe's model (gpt, or hf through its weight roles) from a trained smaller one: Mango, LiGO,
    FPI/AKI, StackBERT, G_stack, MSG, Net2Net."""
    name = "grow"
    Config = GrowConfig
    kind = "surgery"
    replaces_steps = True
    """mango and ligo train their operator in the first steps; the other operators never take a step."""
    accumulates = True  # the operator phase accumulates micro-batches; its AdamW steps on the last
    precisions = ("fp32", "bf16")  # the operator's own AdamW has no fp16 loss scaler

    def __init__(self, cfg: GrowConfig | None = None):
        super().__init__(cfg)
        op = self.cfg.operator
        self.replaces_steps = op in TRAINED  # per instance: a copy operator combines with any step strategy
        # MSG's masks are hooks on the projection modules, which RaPTr's width slicing bypasses.
        self.exclusive_group = "depth" if op == "msg" else None
        self.source: dict | None = None
        """The source's record (path, step, SHA-256, config, cost) once a fresh run has read it."""
        self.grown = False
        """The target's weights are the grown ones (for mango/ligo: after the operator phase)."""
        self.phase: OperatorPhase | None = None
        self.msg_blocks: list[int] | None = None
        self.masks: MSGMasks | None = None
        self.mask_value: float | None = None
        """MSG: the mask value the model computes with (None: no masks)."""
        self._model: GPT | None = None
        self._options: dict = {}  # the operator phase's optimizer settings (from the run's recipe)
        self._carried: dict[str, dict[str, torch.Tensor]] | None = None  # moments for the first step

    # -- lifecycle -----------------------------------------------------------------------------
    def check(self, state: State) -> None:
        cfg, t = self.cfg, state.recipe.train
        if not growable(state.model):
            view = protocol.adapt(state.model)
            reason = next((r for c in ("blocks", "depth_change", "weight_roles") if c not in view.capabilities()
                           for r in [view.why_not(c)] if r), None)
            raise ConfigError("methods.grow: grows a gpt, or a model that declares blocks, depth changes and "
                              f"weight roles (hf); the recipe's model {state.recipe.model_name!r} does not"
                              + (f" ({reason})" if reason else ""))
        if by_roles(state.model):
            if cfg.optimizer_state == "carry":
                raise ConfigError(f"methods.grow.optimizer_state: carry is implemented for gpt only; use reset on "
                                  f"a {state.recipe.model_name!r} model")
            if cfg.init != "copy":
                raise ConfigError(f"methods.grow.init: {cfg.init} is implemented for gpt only; the role-based "
                                  f"Mango on a {state.recipe.model_name!r} model starts from copy growth")
        else:
            check_layout(state.model, "methods.grow")
        if cfg.source is None:
            raise ConfigError("methods.grow.source: give the run or checkpoint directory of the trained "
                              "smaller model to grow from")
        if cfg.phase_steps >= t.max_steps:
            raise ConfigError(f"methods.grow.operator_steps: {cfg.phase_steps} operator steps leave none of "
                              f"train.max_steps={t.max_steps} to train the grown target")
        if cfg.operator == "msg" and cfg.ramp_steps >= t.max_steps:
            raise ConfigError(f"methods.grow.ramp_steps: a ramp of {cfg.ramp_steps} steps does not end within "
                              f"train.max_steps={t.max_steps}")
        if cfg.optimizer_state == "carry" and t.optimizer != "adamw":
            raise ConfigError("methods.grow.optimizer_state: carry moves AdamW moments; train.optimizer is "
                              f"{t.optimizer}")

    def setup(self, state: State) -> None:
        self._model, self._options = state.model, self._phase_options(state)
        if self.source is not None:
            return  # resumed or loaded: the checkpoint holds the target (and any phase: load_tensors)
        cfg, target = self.cfg, state.model.config
        source, self.source, moments = read_source(cfg.source, state)
        gen = torch.Generator().manual_seed(state.recipe.train.seed)
        if by_roles(state.model):
            self._setup_by_roles(state, source, gen)
            return
        if cfg.operator in TRAINED:
            device = next(state.model.parameters()).device
            self.phase = OperatorPhase(self._operator(source, target, gen).to(device), source_tensors(source),
                                       **self._options)
            self.phase.sync(state.model)  # the step-0 evaluation scores the operator's initial target
        elif cfg.operator == "msg":
            tensors, growth = msg_grow(source, target, std=cfg.init_std, new_blocks=cfg.new_blocks, generator=gen)
            load_tensors(state.model, tensors)
            self.msg_blocks = growth.block_source
            self._attach_masks(state.model, 0.0)
            if cfg.optimizer_state == "carry":
                self._carried = carry_adam_state(source_moments(moments, cfg.source), growth, tensors)
        else:
            load_tensors(state.model, self._copy(source, target, gen))
            if cfg.optimizer_state == "carry":
                self._carried = self._copied_moments(source_moments(moments, cfg.source), source.config, target)
        self.grown = cfg.operator not in TRAINED

    def _setup_by_roles(self, state: State, source: torch.nn.Module, gen: torch.Generator) -> None:
        """Any other growable model (hf): the operators through its weight roles (``roles.py``)."""
        cfg = self.cfg
        src, tgt = role_growth.role_layout(source, "methods.grow"), role_growth.role_layout(state.model, "methods.grow")
        self.source["roles"] = src.summary()
        tensors = role_growth.source_tensors(source)
        if cfg.operator in TRAINED:
            device = next(state.model.parameters()).device
            self.phase = OperatorPhase(self._role_operator(src, tgt, tensors, gen).to(device), tensors,
                                       **self._options)
            self.phase.sync(state.model)
        elif cfg.operator == "msg":
            out, self.msg_blocks = role_growth.msg_grow(src, tgt, tensors, std=cfg.init_std,
                                                        new_blocks=cfg.new_blocks, generator=gen)
            load_tensors(state.model, out)
            self._attach_masks(state.model, 0.0)
        else:
            load_tensors(state.model, role_growth.grow_copy(cfg.operator, src, tgt, tensors, mapping=cfg.mapping,
                                                            noise=cfg.init_noise if cfg.operator == "net2net" else 0.0,
                                                            g=cfg.g, generator=gen))
        self.grown = cfg.operator not in TRAINED

    def _role_operator(self, src, tgt, tensors, gen):
        cfg = self.cfg
        if cfg.operator == "mango":
            return role_growth.RoleMango(src, tgt, tensors, rank=cfg.rank, noise=cfg.init_noise, mapping=cfg.mapping,
                                         generator=gen)
        return role_growth.RoleLiGO(src, tgt, tensors, depth_init=cfg.depth_init, width_init=cfg.width_init,
                                    noise=cfg.init_noise, generator=gen)

    def restore(self, state: State) -> None:
        if self.mask_value is not None:  # MSG's ramp was running: the same masks at the same value
            self._attach_masks(state.model, self.mask_value)

    def _operator(self, source: GPT, target: GPTConfig, gen: torch.Generator) -> GrowthOperator:
        cfg = self.cfg
        if cfg.operator == "mango":
            return MangoOperator(source, target, rank=cfg.rank, noise=cfg.init_noise, mapping=cfg.mapping,
                                 generator=gen, init=cfg.init)
        return LiGOOperator(source, target, depth_init=cfg.depth_init, width_init=cfg.width_init,
                            noise=cfg.init_noise, generator=gen)

    def _phase_options(self, state: State) -> dict:
        t = state.recipe.train
        return {"lr": self.cfg.operator_lr, "warmup": self.cfg.operator_warmup,
                "weight_decay": self.cfg.operator_weight_decay, "betas": (t.beta1, t.beta2), "grad_clip": t.grad_clip}

    def _copy(self, source: GPT, target: GPTConfig, gen: torch.Generator) -> Tensors:
        cfg = self.cfg
        if cfg.operator == "gstack" and cfg.g is not None and cfg.g * source.config.n_layer != target.n_layer:
            raise ConfigError(f"methods.grow.g: {cfg.g} copies of the source's {source.config.n_layer} blocks "
                              f"make {cfg.g * source.config.n_layer}, the target has model.n_layer={target.n_layer}")
        grow = {"fpi": lambda: fpi(source, target, cfg.mapping, generator=gen),
                "aki": lambda: aki(source, target, cfg.mapping, generator=gen),
                "stackbert": lambda: stackbert(source, target),
                "gstack": lambda: gstack(source, target),
                "net2net": lambda: net2net(source, target, noise=cfg.init_noise, mapping=cfg.mapping, generator=gen)}
        return grow[cfg.operator]()

    @staticmethod
    def _copied_moments(old: dict, src: GPTConfig, target: GPTConfig) -> dict[str, dict[str, torch.Tensor]]:
        """Stacking: every target entry copies one source entry, and so do its moments."""
        out = {}
        for name in old:
            if not name.startswith(f"{PREFIX}."):
                out[name] = old[name]
        for j in range(target.n_layer):
            prefix = f"{PREFIX}.{j % src.n_layer}."
            out |= {f"{PREFIX}.{j}.{k[len(prefix):]}": v for k, v in old.items() if k.startswith(prefix)}
        return {k: {slot: v.clone() for slot, v in s.items()} for k, s in out.items()}

    def _attach_masks(self, model: GPT, value: float) -> None:
        if by_roles(model):
            self.masks = role_growth.RoleMasks(self.source["roles"], value)
            self.masks.attach(model)
            self.mask_value = value
            return
        growth = MSGGrowth(GPTConfig(**self.source["config"]), model.config, list(self.msg_blocks))
        self.masks = MSGMasks(growth, value)
        self.masks.attach(model)
        self.mask_value = value

    # -- events --------------------------------------------------------------------------------
    def on_event(self, event: Event, state: State) -> None:
        if event is Event.FIT_START:
            self._start(state)
        elif event is Event.STEP_START:
            self._step_start(state)
        elif event is Event.AFTER_BACKWARD:
            self._rewarm(state)
        elif event in (Event.EVAL_START, Event.FIT_END) and self.phase is not None:
            self.phase.sync(state.model)  # evaluations (and the final checkpoint) see the operator's target

    def _start(self, state: State) -> None:
        if self._carried is not None:  # carry: the moments the first step starts from
            for name, p in state.model.named_parameters():
                if name in self._carried:
                    state.optimizer.state[p] = {k: v.to(p.device) if k != "step" else v
                                                for k, v in self._carried[name].items()}
            self._carried = None
        state.say(self.describe(state))
        if state.step != 0:
            return
        src = self.source
        state.log("grow/source_train_flops", src["train_flops"])
        state.log("grow/source_wall_seconds", src["wall_seconds"])
        if self.phase is not None:
            state.log("grow/operator_parameters", self.phase.operator.num_parameters())
        if self.cfg.eval_after_growth and state.evaluate is not None:
            key = "grow/val_loss_at_init" if self.phase is not None else "grow/val_loss_after_growth"
            self._log_eval(state, key)

    def _log_eval(self, state: State, key: str) -> None:
        r = state.evaluate("val", whole=True)
        state.log(key, r.loss)
        state.log(key + "_se", r.loss_se)

    def _step_start(self, state: State) -> None:
        if self.phase is not None and state.step >= self.cfg.phase_steps:
            self._end_phase(state)
        if self.phase is not None:
            state.log("grow/phase", "operator")
            state.log("grow/operator_lr", self.phase.lr_at(state.step))
        elif self.masks is not None:
            c = ramp_value(state.step, self.cfg.ramp_steps)  # grown at step 0
            if c >= 1.0:  # the masks are the identity now: remove them (they would only cost)
                self.masks.detach()
                self.masks, self.mask_value = None, None
            else:
                self.masks.set_value(c)
                self.mask_value = c
                state.log("grow/phase", "ramp")
                state.log("grow/mask", c)
        if self.phase is None and self.masks is None:
            state.log("grow/phase", "target")

    def target_lr_scale(self, state: State) -> float:
        """The factor on the run's learning rate at this step: the target's warm-up after the phase."""
        k = self.cfg.phase_steps
        warm = state.recipe.train.warmup_steps if self.cfg.target_warmup is None else self.cfg.target_warmup
        if self.cfg.operator not in TRAINED or not k <= state.step < k + warm:
            return 1.0
        return (state.step - k + 1) / (warm + 1)

    def _rewarm(self, state: State) -> None:
        # The trainer set this step's learning rate before the forward and steps the optimizer after
        # this event; it sets the rate afresh every step, so the factor never accumulates.
        scale = self.target_lr_scale(state)
        if scale < 1.0:
            for group in state.optimizer.param_groups:
                group["lr"] *= scale
            state.log("grow/lr_scale", scale)

    def _end_phase(self, state: State) -> None:
        """Write the operator's output into the target; drop the operator, its optimizer and the source;
        the target trains from here with a fresh optimizer."""
        self.phase.sync(state.model)
        self.phase, self.grown = None, True
        for p in state.model.parameters():  # no moments survive (e.g. from zero gradients a schedule set)
            state.optimizer.state.pop(p, None)
        state.request_rebuild()
        if self.cfg.eval_after_growth and state.evaluate is not None:
            self._log_eval(state, "grow/val_loss_after_growth")

    # -- the operator phase --------------------------------------------------------------------
    def takes_step(self, state: State) -> bool:
        return self.phase is not None

    def training_step(self, state: State, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.phase.step(state, x, y)

    def flop_key(self, state: State):
        return "operator" if self.phase is not None else None

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"source": self.source, "grown": self.grown, "msg_blocks": self.msg_blocks,
                "mask_value": self.mask_value}

    def load_state_dict(self, state: dict) -> None:
        self.source, self.grown = state["source"], state["grown"]
        self.msg_blocks, self.mask_value = state["msg_blocks"], state["mask_value"]

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.phase.tensors() if self.phase is not None else {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        model = self._model
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(0)  # any init: the saved parameters replace it
        if by_roles(model):
            source_part = {k[len("source/"):]: v.to(device) for k, v in tensors.items() if k.startswith("source/")}
            source = rebuild_source(self.source, source_part, device)
            src, tgt = role_growth.role_layout(source), role_growth.role_layout(model)
            self.phase = OperatorPhase.from_tensors(
                tensors, None, device, lambda _: self._role_operator(src, tgt, source_part, gen).to(device),
                source_model=source, **self._options)
            self.phase.sync(model)
            return
        self.phase = OperatorPhase.from_tensors(
            tensors, GPTConfig(**self.source["config"]), device,
            lambda source: self._operator(source, model.config, gen).to(device), **self._options)
        self.phase.sync(model)  # a loaded model (sample, evaluate) is the operator's current target

    # -- reporting -----------------------------------------------------------------------------
    def describe(self, state: State) -> str:
        what = f"grow: {self.cfg.operator}"
        if self.cfg.operator == "mango":
            what += f" R={self.cfg.rank}" + (", function-preserving init" if self.cfg.init != "copy" else "")
        if "roles" in self.source:
            s, t = self.source["roles"], role_growth.role_layout(state.model).summary()
            shape = lambda r: f"{r['n_layer']}×{r['width']} ({r['n_head'][0]} heads)"  # noqa: E731
            step = "save_pretrained" if self.source["step"] is None else f"step {self.source['step']}"
            what += f" from {self.source['path']} ({step}): {shape(s)} → {shape(t)}"
        else:
            s, t = self.source["config"], state.model.config
            what += (f" from {self.source['path']} (step {self.source['step']}): {s['n_layer']}×{s['n_embd']} "
                     f"({s['n_head']} heads) → {t.n_layer}×{t.n_embd} ({t.n_head} heads)")
        if self.cfg.operator in TRAINED:
            n = f"{self.phase.operator.num_parameters():,} parameters, " if self.phase is not None else ""
            what += (f"; operator ({n}{self.cfg.phase_steps} steps, lr {self.cfg.operator_lr:g}, "
                     f"warm-up {self.cfg.operator_warmup})")
        elif self.cfg.operator == "msg":
            what += f"; masks ramp over {self.cfg.ramp_steps} steps"
        return what + f"; source cost {self.source['train_flops']:.3e} FLOPs, {self.source['wall_seconds']:.1f}s"
