"""Greedy local learning with context supply — the ``local`` step strategy and its variants.

A model's ordered units are cut into K gradient-isolated modules. One training step runs module 1
on the batch, computes its local loss through a local head, backpropagates it at once (its graph is
freed), detaches its output, feeds module 2, and so on; the last module ends with the model's own
head and loss. Only one module's activations are alive at a time. Variants are named
configurations of this machinery (``VARIANTS``): greedy SL, DGL, InfoPro, ContSup, AugLocal. K = 1
is end-to-end training on the same code path (bit-identical to a plain run).

Functional pieces live next door: ``units.py`` (units, cuts), ``heads.py`` (local heads, InfoPro's
decoder, SupCon), ``context.py`` (ContSup's encoders). :class:`LocalModel` is the trained network as
deployed (units + context encoders; the local heads train only) and :class:`LocalLearning` the thin
trainer-facing method.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import check
from ...core import Event, Method, State, distributed
from ...errors import ConfigError
from ...measure import forward_flops
from ...models.protocol import ModelProtocol, adapt, require
from ...registry import register_method
from .context import FeatureEncoder, InputEncoder, TokenMap, parse_context
from .heads import Decoder, LMLocalHead, TokenClassHead, auglocal_head, conv_head, dgl_head, linear_head, pyramidal_depth, supcon_loss
from .pipeline import Pipeline
from .units import (UnitView, balanced_cuts, check_cuts, equal_cuts, unit_activation_bytes, unit_seconds,
                    unit_view)

Variant = Literal["greedy", "dgl", "infopro", "contsup", "auglocal"]

# What each variant sets when its options are left at "auto" (shared/specs/local_learning.md).
VARIANTS: dict[str, dict] = {
    "greedy": {"head": "linear", "loss": "cross_entropy", "context": "none", "reconstruction": False,
               "update": "end"},
    "dgl": {"head": "dgl", "loss": "cross_entropy", "context": "none", "reconstruction": False,
            "update": "immediate"},
    "infopro": {"head": "1c2f", "loss": "contrast", "context": "none", "reconstruction": True, "update": "end"},
    "contsup": {"head": "1c2f", "loss": "cross_entropy", "context": "E", "reconstruction": False, "update": "end"},
    "auglocal": {"head": "augmented", "loss": "cross_entropy", "context": "none", "reconstruction": False,
                 "update": "end"},
}
# InfoPro's weights (ResNet-32, CIFAR-10, contrast; its comand.sh): K → (λ1 first, λ2 first, λ1 last,
# λ2 last) for the reconstruction (λ1) and task (λ2) terms, interpolated linearly over the cuts.
INFOPRO_WEIGHTS = {2: (5.0, 1.0, 0.0, 0.0), 4: (6.0, 0.0, 1.0, 2.0), 8: (5.0, 0.0, 0.0, 2.0),
                   16: (5.0, 0.05, 0.2, 0.5)}


@dataclass
class LocalConfig:
    variant: Variant = "greedy"
    """greedy (GAP+linear heads, CE), dgl (DGL heads, each module updated at once), infopro (1c2f heads +
    reconstruction decoder, contrastive), contsup (1c2f heads + context supply E), auglocal (heads copied
    from later layers). Options left at auto take the variant's setting."""
    modules: int | None = None
    """K, the number of gradient-isolated modules (1 = end to end); null = 2, or one more than the
    explicit cuts."""
    cuts: str | list[int] = "equal"
    """equal (equal numbers of units, the reference split), memory (balanced by measured activation
    bytes per unit), compute (balanced by measured forward + backward time per unit: for pipelines),
    or the unit indices after which modules end (increasing)."""
    head: Literal["auto", "linear", "1c2f", "dgl", "augmented"] = "auto"
    """Local head: linear (GAP + FC), 1c2f (conv + BN + ReLU, GAP, two FC), dgl (DGL's auxiliary net),
    augmented (AugLocal: copies of later layers). A GPT always uses LayerNorm + LM head."""
    loss: Literal["auto", "cross_entropy", "contrast"] = "auto"
    """Local loss: cross-entropy on class logits, or supervised contrastive on feature_dim embeddings."""
    feature_dim: int = 128
    """Width of the 1c2f hidden layer and of the contrastive embedding."""
    temperature: float = 0.07
    """Supervised contrastive loss temperature."""
    context: str = "auto"
    """Context supply (ContSup): none, E (the input), R<n> (the inputs of the last n modules), R<n>E."""
    cheap_e: bool = False
    """[ours] Pool the input to the feature size before E's convolutions (cheaper at inference)."""
    reconstruction: Literal["auto", "on", "off"] = "auto"
    """InfoPro's reconstruction decoder in every local loss (on for infopro)."""
    recon_weights: list[float] | None = None
    """[λ1 at the first cut, λ1 at the last cut] for the reconstruction term; null = InfoPro's table."""
    task_weights: list[float] | None = None
    """[λ2 at the first cut, λ2 at the last cut] for the task term; null = InfoPro's table with
    reconstruction, else 1."""
    aux_depth: int = 2
    """AugLocal: d, blocks in the first local module's auxiliary network."""
    aux_tau: float = 0.5
    """AugLocal: τ of the pyramidal depth d_k = max(1, round(d(1 − kτ/(M−2)) + kτ/(M−2)))."""
    update: Literal["auto", "end", "immediate"] = "auto"
    """end: one optimizer step after every module's backward (InfoPro's code); immediate: each module
    steps right after its own backward (DGL). With AdamW/SGD both give the same result; immediate frees
    each module's gradients early."""
    tie_head: bool = False
    """GPT: tie the local LM heads to the token embedding (then the embedding is shared by every module)."""
    parallel: Literal["data", "modules"] = "data"
    """Under torchrun: data (every rank runs every module on its shard of the data) or modules (a
    pipeline: each rank runs a group of modules and sends its output forward; see pipeline.py)."""
    replicas: int = 1
    """parallel: modules — D, the number of data-parallel copies of the pipeline (world = D × stages)."""
    in_flight: int = 2
    """parallel: modules — sends a stage may have waiting before it blocks (the pipeline's queue)."""

    def resolved(self, key: str):
        value = getattr(self, key)
        return VARIANTS[self.variant][key] if value == "auto" else value

    def validate(self) -> None:
        check(self.modules is None or self.modules >= 1, "modules", f"must be ≥ 1, got {self.modules}")
        if isinstance(self.cuts, str):
            check(self.cuts in ("equal", "memory", "compute"), "cuts",
                  f"must be equal, memory, compute or a list of unit indices, got {self.cuts!r}")
        else:
            check(self.modules in (None, len(self.cuts) + 1), "modules",
                  f"{self.modules} modules, but cuts lists {len(self.cuts)} cut(s) ({len(self.cuts) + 1} modules)")
        check(self.feature_dim > 0, "feature_dim", "must be positive")
        check(self.temperature > 0, "temperature", "must be positive")
        check(self.aux_depth >= 1, "aux_depth", "must be ≥ 1")
        check(self.replicas >= 1, "replicas", "must be ≥ 1")
        check(self.in_flight >= 1, "in_flight", "must be ≥ 1")
        check(0 <= self.aux_tau <= 1, "aux_tau", "must be in [0, 1]")
        for key in ("recon_weights", "task_weights"):
            w = getattr(self, key)
            check(w is None or (len(w) == 2 and min(w) >= 0), key, "give two weights ≥ 0: [first cut, last cut]")
        parse_context(self.resolved("context"))

    @property
    def k(self) -> int:
        if not isinstance(self.cuts, str):
            return len(self.cuts) + 1
        return self.modules or 2


def interpolated(first: float, last: float, k: int, n_cuts: int) -> float:
    """The weight at cut k of n (InfoPro: ratio k / (n − 1), 0 with one cut)."""
    ratio = k / (n_cuts - 1) if n_cuts > 1 else 0.0
    return first * (1 - ratio) + last * ratio


# ----------------------------------------------------------------------------------- the network
class LocalModel(nn.Module, ModelProtocol):
    """The model cut into modules: its units, a local head per cut (training only), optional
    reconstruction decoders, and the context encoders feeding each module after the first (deployed).
    ``forward`` is the deployed network (units + contexts). Unknown attributes fall through to the
    wrapped model (``set_dropout``, ``config``…); of the model protocol it offers only what still acts
    on the cut network — the base model's dropout sites — so dropout schedules compose with it and
    block plans (which its forward would ignore) are refused."""

    def __init__(self, base: nn.Module, view: UnitView, cuts: list[int], heads, decoders, contexts,
                 sources: list[list[int]], use_e: bool):
        super().__init__()
        self.base = base
        self.view = view
        self.cuts = cuts
        self.heads = nn.ModuleList(heads)
        self.decoders = nn.ModuleList(decoders)
        self.contexts = nn.ModuleList(contexts)
        self.sources = sources  # per cut: which module inputs feed R (module indices)
        self.use_e = use_e

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base"), name)

    def capabilities(self) -> frozenset[str]:
        return adapt(self.base).capabilities() & {"dropout"}

    def why_not(self, name: str) -> str | None:
        return "it is cut into local modules, which run the base model's units directly"

    @property
    def n_modules(self) -> int:
        return len(self.cuts) + 1

    def bounds(self, k: int) -> tuple[int, int]:
        """Unit indices [start, end) of module k."""
        start = 0 if k == 0 else self.cuts[k - 1] + 1
        end = self.cuts[k] + 1 if k < len(self.cuts) else len(self.view.modules)
        return start, end

    def run_module(self, k: int, h, memo: dict):
        start, end = self.bounds(k)
        for i in range(start, end):
            h = self.view.modules[i](h)
            if i == 0 and self.view.kind == "tokens":
                memo["embedding"] = h.detach()  # a GPT's context E is its embedding output
        return h

    def supply(self, k: int, out: torch.Tensor, x: torch.Tensor, inputs: list[torch.Tensor], memo: dict):
        """The input of module k + 1: sg(out) + E + Σ R (out of place; contexts detached)."""
        h = out.detach()
        ctx = self.contexts[k]
        if self.use_e:
            source = memo["embedding"] if self.view.kind == "tokens" else x
            h = h + ctx["E"](source.detach())
        for j, src in enumerate(self.sources[k]):
            h = h + ctx[f"R{j}"](inputs[src].detach())
        return h

    def cut_forward(self, x, on_cut) -> torch.Tensor:
        """Units cut by hooks (protocol ``unit_hooks``): run the base model's own forward — which
        computes its masks, positions, etc. between units — with a forward hook on the last unit of
        every module but the last; the hook hands that unit's output to ``on_cut(k, out, inputs,
        memo)`` and returns what it gives (module k + 1's input) in the output's place. The logits."""
        units, inputs, memo, handles = self.view, [x], {}, []

        def keep_embedding(module, args, output):
            memo["embedding"] = units.output(output).detach()

        def cut(k):
            def hook(module, args, output):
                return units.replace_output(output, on_cut(k, units.output(output), inputs, memo))
            return hook
        if units.kind == "tokens":
            handles.append(units.modules[0].register_forward_hook(keep_embedding))
        handles += [units.modules[c].register_forward_hook(cut(k)) for k, c in enumerate(self.cuts)]
        try:
            logits, _ = self.base(x)
        finally:
            for h in handles:
                h.remove()
        return logits

    def forward(self, x, targets=None):
        if not self.view.callable:
            def deployed(k, out, inputs, memo):
                h = self.supply(k, out, x, inputs, memo)
                inputs.append(h)
                return h
            h = self.cut_forward(x, deployed)
            return h, None if targets is None else F.cross_entropy(h.reshape(-1, h.size(-1)), targets.reshape(-1))
        h, inputs, memo = x, [x], {}
        for k in range(self.n_modules):
            h = self.run_module(k, h, memo)
            if k < self.n_modules - 1:
                h = self.supply(k, h, x, inputs, memo)
                inputs.append(h)
        if targets is None:
            return h, None
        return h, F.cross_entropy(h.reshape(-1, h.size(-1)), targets.reshape(-1))

    def shape_key(self) -> tuple:
        return (self.base.shape_key(), "local", tuple(self.cuts))

    def module_parameters(self, k: int) -> list[nn.Parameter]:
        """Module k's own parameters: its units', its local head's and decoder's, and the context
        encoders that make its input (parameters the GPT embedding shares are the first module's)."""
        start, end = self.bounds(k)
        params = [p for i in range(start, end) for p in self.view.params[i]]
        if k < len(self.heads):
            params += list(self.heads[k].parameters())
        if k < len(self.decoders):
            params += list(self.decoders[k].parameters())
        if k > 0:
            params += list(self.contexts[k - 1].parameters())
        return params

    def module_buffers(self, k: int) -> list[torch.Tensor]:
        """Module k's buffers (BatchNorm statistics): its units', head's, decoder's, input encoders'."""
        start, end = self.bounds(k)
        mods = [self.view.modules[i] for i in range(start, end)]
        mods += [self.heads[k]] if k < len(self.heads) else []
        mods += [self.decoders[k]] if k < len(self.decoders) else []
        mods += [self.contexts[k - 1]] if k > 0 else []
        return [b for m in mods for b in m.buffers()]

    def deployed_parameters(self) -> int:
        """Parameters of the network as deployed: the model and its context encoders (not the heads)."""
        return sum(p.numel() for p in self.base.parameters()) + sum(p.numel() for p in self.contexts.parameters())

    def generate(self, *args, **kwargs):  # a GPT with contexts generates through the deployed network
        return type(self.base).generate(self, *args, **kwargs)


def build_local_model(base: nn.Module, cfg: LocalConfig, input_shape: tuple[int, ...], cuts: list[int],
                      n_classes: int, bce: bool) -> LocalModel:
    view = unit_view(base, input_shape)
    n_cuts = len(cuts)
    use_e, n_r = parse_context(cfg.resolved("context"))
    head, loss = cfg.resolved("head"), cfg.resolved("loss")
    out = cfg.feature_dim if loss == "contrast" else n_classes
    dims = 1 if view.kind == "conv1d" else 2
    net_dim = [view.channels(i) for i in range(view.n_cuttable)]
    widest = max(net_dim)
    heads, decoders, contexts, sources = [], [], [], []
    recon = cfg.resolved("reconstruction") in ("on", True)
    for k, c in enumerate(cuts):
        shape = view.shapes[c]
        C = view.channels(c)
        if view.kind == "tokens" and len(view.shapes[-1]) == 1:  # token states of a classifier (ViT)
            heads.append(TokenClassHead(C, n_classes))
        elif view.kind == "tokens":
            heads.append(LMLocalHead(C, n_classes, view.tied_head_weight if cfg.tie_head else None))
        elif head == "linear":
            heads.append(linear_head(C, out))
        elif head == "1c2f":
            heads.append(conv_head(dims, C, out, widest, cfg.feature_dim))
        elif head == "dgl":
            heads.append(dgl_head(dims, C, shape[1], out))
        else:
            depth = pyramidal_depth(cfg.aux_depth, k, n_cuts + 1, cfg.aux_tau)
            heads.append(auglocal_head(dims, net_dim, c, depth, out))
        if recon:
            decoders.append(Decoder(dims, C, input_shape[0], tuple(input_shape[1:]), bce))
        ctx = nn.ModuleDict()
        if use_e:
            ctx["E"] = TokenMap(C) if view.kind == "tokens" else InputEncoder(
                dims, input_shape[0], C, tuple(shape[1:]), cfg.cheap_e)
        # R<n>: the inputs of the last n modules (k, k − 1, ...); module 0's input is the raw input,
        # which E supplies when on (and which a GPT cannot map: token ids) — it is skipped then.
        srcs = [m for m in range(k, k - n_r, -1) if m >= 0 and not (m == 0 and (use_e or view.kind == "tokens"))]
        for j, m in enumerate(srcs):
            src_c = input_shape[0] if m == 0 else view.channels(cuts[m - 1])
            ctx[f"R{j}"] = TokenMap(C) if view.kind == "tokens" else FeatureEncoder(dims, src_c, C, tuple(shape[1:]))
        contexts.append(ctx)
        sources.append(srcs)
    return LocalModel(base, view, cuts, heads, decoders, contexts, sources, use_e)


# ----------------------------------------------------------------------------------- the method
@register_method
class LocalLearning(Method):
    """Greedy local learning (greedy SL, DGL, InfoPro, ContSup, AugLocal): K gradient-isolated modules."""
    name = "local"
    Config = LocalConfig
    kind = "step_strategy"
    handles_gradients = True
    exclusive_group = "depth"  # it decides how the blocks run; a block plan would be ignored
    accumulates = True  # each module's gradients accumulate over the micro-batches; updates on the last
    precisions = ("fp32", "bf16")  # fp16's loss scaler does not follow its per-module optimizer steps

    def __init__(self, cfg: LocalConfig | None = None):
        super().__init__(cfg)
        self.cuts: list[int] | None = None  # resolved at setup (memory cuts are measured), then saved
        self.input_shape: list[int] | None = None
        self.n_classes = 0
        self.bce = False
        self.denormalise: tuple[torch.Tensor, torch.Tensor] | None = None  # (std, mean) for BCE targets
        self.pipeline: Pipeline | None = None  # parallel: modules

    # -- checks -----------------------------------------------------------------------------------
    def check(self, state: State) -> None:
        cfg, model, t = self.cfg, state.model, state.recipe.train
        if t.compile:
            raise ConfigError("train.compile: local learning runs its modules one by one (each with its own "
                              "backward), not through the model's forward, so torch.compile would not apply; "
                              "set compile: false")
        if t.autocast_precision == "fp16":
            raise ConfigError("train.precision: fp16: local learning clips and steps per module inside its "
                              "step, which the fp16 loss scaler does not follow; use bf16 or fp32")
        info = state.data.info()
        shape = info.input_shape if info.task == "classification" else (state.data.items_per_sample(state.recipe.model),)
        view = unit_view(model, shape)
        if not view.callable and (cfg.cuts in ("memory", "compute") or cfg.parallel == "modules"):
            raise ConfigError(f"methods.local: model {type(model).__name__}'s units run only inside its own "
                              "forward (cut by hooks), so they cannot be measured one by one (cuts: memory, "
                              "compute) or put on different ranks (parallel: modules); use cuts: equal or a list")
        n, K = view.n_cuttable, cfg.k
        if K > n:
            raise ConfigError(f"methods.local.modules: {K} modules, but the model has only {n} units to "
                              f"cut ({n} is the most)")
        if not isinstance(cfg.cuts, str):
            check_cuts(cfg.cuts, n)
        use_e, n_r = parse_context(cfg.resolved("context"))
        if n_r >= K:
            raise ConfigError(f"methods.local.context: R{n_r} takes the inputs of the last {n_r} modules, "
                              f"but there are only {K} (n must be < K)")
        if cfg.resolved("loss") == "contrast" and t.batch_size < 2:
            raise ConfigError("methods.local.loss: the supervised contrastive loss compares samples within "
                              "a batch; train.batch_size must be ≥ 2")
        if view.kind == "tokens":
            if cfg.variant not in ("greedy", "contsup") or cfg.head != "auto":
                raise ConfigError(f"methods.local.variant: on token states (gpt, hf models) the local head is "
                                  f"LayerNorm + LM head (a ViT's: LayerNorm + [CLS] + linear); variants greedy "
                                  f"and contsup apply, not {cfg.variant!r} / head {cfg.head!r}")
            if cfg.resolved("loss") != "cross_entropy" or cfg.resolved("reconstruction") in ("on", True):
                raise ConfigError("methods.local: a GPT's local loss is next-token cross-entropy "
                                  "(no contrastive loss, no reconstruction)")
            if cfg.resolved("update") == "immediate" and view.tied_head_weight is not None:
                raise ConfigError("methods.local.update: immediate updates need modules that share no "
                                  "parameters, but this model's output head is tied to its token embedding")
        if cfg.parallel == "modules" and state.world_size > 1:
            require(model, "pipeline", "methods.local.parallel",
                    f"modules on different ranks need units that split into sequential stages, which model "
                    f"{type(model).__name__} does not support")
        if cfg.parallel == "modules":
            world = state.world_size
            if world % cfg.replicas:
                raise ConfigError(f"methods.local.replicas: {cfg.replicas} does not divide the {world} processes")
            stages = world // cfg.replicas
            if stages > K:
                raise ConfigError(f"methods.local.parallel: {stages} pipeline stages (processes / replicas) "
                                  f"but only {K} modules; use at least one module per stage")

    # -- building -----------------------------------------------------------------------------------
    def setup(self, state: State) -> None:
        if self.cuts is None:  # a fresh run: resolve what depends on the data, then keep it
            info = state.data.info()
            if info.task == "classification":
                self.input_shape, self.n_classes = list(info.input_shape), info.num_classes
                self.bce = getattr(state.data, "x_train", torch.empty(0)).dtype == torch.uint8
            else:
                T = state.data.items_per_sample(state.recipe.model)
                self.input_shape, self.n_classes = [T], unit_view(state.model, (T,)).shapes[-1][-1]
            self.cuts = self._resolve_cuts(state)
        if self.bce and state.data is not None:  # training: BCE targets are the de-normalised input
            device = next(state.model.parameters()).device
            self.denormalise = (state.data.std.to(device), state.data.mean.to(device))
        state.model = build_local_model(state.model, self.cfg, tuple(self.input_shape), self.cuts,
                                        self.n_classes, self.bce)
        if self.cfg.parallel == "modules" and state.world_size > 1:
            stages = state.world_size // self.cfg.replicas
            device = next(state.model.parameters()).device
            self.pipeline = p = Pipeline(state.model.n_modules, stages, self.cfg.replicas, self.cfg.in_flight, device)
            state.data_rank, state.data_world = p.replica, self.cfg.replicas
            state.step_group, state.report_weight = p.group, 1.0 if p.last_stage else 0.0

    def _resolve_cuts(self, state: State) -> list[int]:
        cfg = self.cfg
        view = unit_view(state.model, tuple(self.input_shape))
        if not isinstance(cfg.cuts, str):
            return list(cfg.cuts)
        if cfg.cuts == "equal":
            return equal_cuts(view.n_cuttable, cfg.k)
        x, _ = state.data.eval_batches("train", state.recipe.train.batch_size, state.recipe.model,
                                       whole=False, n_batches=1)[0]
        x = x[: state.recipe.train.batch_size].to(next(state.model.parameters()).device)
        cost = unit_activation_bytes(view, x) if cfg.cuts == "memory" else unit_seconds(view, x)
        # measured costs can differ between ranks: every rank takes rank 0's cuts
        return distributed.broadcast(balanced_cuts(cost, cfg.k))

    # -- the step -----------------------------------------------------------------------------------
    def weights(self, k: int) -> tuple[float, float]:
        """(reconstruction, task) weights of the local loss at cut k."""
        n = self.cfg.k - 1
        recon = self.cfg.resolved("reconstruction") in ("on", True)
        table = INFOPRO_WEIGHTS[min(INFOPRO_WEIGHTS, key=lambda K: abs(math.log(K / max(self.cfg.k, 2))))]
        rw = self.cfg.recon_weights or (table[0], table[2])
        tw = self.cfg.task_weights or ((table[1], table[3]) if recon else (1.0, 1.0))
        return (interpolated(*rw, k, n) if recon else 0.0), interpolated(*tw, k, n)

    def local_loss(self, lm: LocalModel, k: int, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        recon_w, task_w = self.weights(k)
        z = lm.heads[k](out)
        if self.cfg.resolved("loss") == "contrast":
            task = supcon_loss(z, y, self.cfg.temperature)
        else:
            task = F.cross_entropy(z.reshape(-1, z.size(-1)), y.reshape(-1))
        loss = task_w * task
        if recon_w:
            target = x * self.denormalise[0] + self.denormalise[1] if self.bce else x
            loss = loss + recon_w * lm.decoders[k](out, target)
        return loss

    def training_step(self, state: State, model, x, y):
        lm: LocalModel = state.model
        if not lm.view.callable:
            return self._hooked_step(state, lm, x, y)
        immediate = self.cfg.resolved("update") == "immediate"
        K, pipe = lm.n_modules, self.pipeline
        first, end = (pipe.first, pipe.end) if pipe else (0, K)
        group = pipe.group if pipe else None
        h, inputs, memo = x, [x], {}
        if first > 0:  # a later pipeline stage: the previous stage's output (and what contexts read)
            out, *received = pipe.recv()
            if lm.use_e and lm.view.kind == "tokens":
                memo["embedding"] = received.pop()
            inputs += received
            h = lm.supply(first - 1, out, x, inputs, memo)
            inputs.append(h.detach())
        finite = True
        # grad_accum_steps: every micro-batch back-propagates loss / N; modules update on the last one,
        # and (immediate) only if none of their micro-batch losses was non-finite
        last = state.last_micro_batch
        if state.micro_batch == 0:
            self._micro_finite = [True] * K
        for k in range(first, end):
            with state.autocast():
                out = lm.run_module(k, h, memo)
                if k < K - 1:
                    loss = self.local_loss(lm, k, out, x, y)
                else:
                    loss = F.cross_entropy(out.reshape(-1, out.size(-1)).float(), y.reshape(-1))
            state.backward(loss)  # this module's graph is freed here
            state.log_mean(f"local/loss{k}", float(loss.detach()))
            if immediate:
                self._micro_finite[k] &= bool(torch.isfinite(loss.detach()))
                if last:
                    finite &= self._update(state, lm, k, loss, group, self._micro_finite[k])
            if k < end - 1:
                with state.autocast():
                    h = lm.supply(k, out, x, inputs, memo)
                inputs.append(h.detach())
        if end < K:  # send forward what the next stage needs, and go on
            pipe.send([out, *inputs[1:], *([memo["embedding"]] if "embedding" in memo and lm.use_e else [])])
        if not last:
            return loss.detach()
        if not immediate:
            mine = [p for k in range(first, end) for p in lm.module_parameters(k)]
            distributed.average_gradients(mine, group)
            for k in range(first, end):
                self._clip(state, lm.module_parameters(k))
        if distributed.active():  # BatchNorm statistics: the first replica's, as DDP keeps them
            buffers = [b for k in range(first, end) for b in lm.module_buffers(k)]
            distributed.broadcast_tensors(buffers, src=pipe.stage if pipe else 0, group=group)
        return loss.detach() if finite else loss.detach() * float("nan")

    def _hooked_step(self, state: State, lm: LocalModel, x, y):
        """The step on units cut by hooks: one forward of the base model; at each cut the hook
        computes the module's local loss, backpropagates it (freeing its graph), and hands on the
        detached output (+ contexts) — the same arithmetic as the callable path, module by module."""
        immediate, finite = self.cfg.resolved("update") == "immediate", True

        def on_cut(k, out, inputs, memo):
            nonlocal finite
            loss = self.local_loss(lm, k, out, x, y)
            loss.backward()
            state.log_mean(f"local/loss{k}", float(loss.detach()))
            if immediate:
                finite &= self._update(state, lm, k, loss)
            h = lm.supply(k, out, x, inputs, memo)
            inputs.append(h.detach())
            return h
        out = lm.cut_forward(x, on_cut)
        k = lm.n_modules - 1
        loss = F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        loss.backward()
        state.log_mean(f"local/loss{k}", float(loss.detach()))
        if immediate:
            finite &= self._update(state, lm, k, loss)
        else:
            distributed.average_gradients([p for j in range(lm.n_modules) for p in lm.module_parameters(j)])
            for j in range(lm.n_modules):
                self._clip(state, lm.module_parameters(j))
        if distributed.active():
            distributed.broadcast_tensors([b for j in range(lm.n_modules) for b in lm.module_buffers(j)], src=0)
        return loss.detach() if finite else loss.detach() * float("nan")

    def _clip(self, state: State, params) -> None:
        if state.recipe.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], state.recipe.train.grad_clip)

    def _update(self, state: State, lm: LocalModel, k: int, loss: torch.Tensor, group=None,
                earlier_finite: bool = True) -> bool:
        """DGL: average, clip and step module k's parameters now (the others have no gradients yet);
        nothing is stepped on a non-finite loss (every replica agrees), the trainer then stops or skips."""
        params = lm.module_parameters(k)
        distributed.average_gradients(params, group)
        bad = float(not (earlier_finite and torch.isfinite(loss)))
        ok = bool(distributed.sum_tensor(torch.tensor([bad]), group).item() == 0)
        # accumulating: later modules already hold their earlier micro-batches' gradients; set them
        # aside so that this step updates module k alone
        mine = {id(p) for p in params}
        stash = {p: p.grad for p in state.model.parameters() if id(p) not in mine and p.grad is not None} \
            if state.grad_accum_steps > 1 else {}
        for p in stash:
            p.grad = None
        if ok:
            self._clip(state, params)
            state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        for p, g in stash.items():
            p.grad = g
        return ok

    # -- reporting ----------------------------------------------------------------------------------
    def on_event(self, event: Event, state: State) -> None:
        if self.pipeline is not None and event in (Event.EVAL_START, Event.CHECKPOINT):
            # every rank gets the whole network (and for a checkpoint its optimizer state) from the owners
            self.pipeline.share_modules(state.model, state.optimizer if event is Event.CHECKPOINT else None)
        if event is Event.FIT_START:
            lm: LocalModel = state.model
            shape = self.input_shape
            ids = lm.view.kind == "tokens" and len(lm.view.shapes[-1]) > 1  # token ids, not arrays
            x = torch.zeros(1, shape[0], dtype=torch.long) if ids else torch.zeros(1, *shape)
            x = x.to(next(lm.parameters()).device)
            state.log("local/inference_params", lm.deployed_parameters())
            state.log("local/inference_flops", forward_flops(lm, x))
            state.log("local/e2e_params", sum(p.numel() for p in lm.base.parameters()))
            state.log("local/e2e_flops", forward_flops(lm.base, x))

    def state_dict(self) -> dict:
        return {"cuts": self.cuts, "input_shape": self.input_shape, "n_classes": self.n_classes, "bce": self.bce}

    def load_state_dict(self, state: dict) -> None:
        self.cuts, self.input_shape = state["cuts"], state["input_shape"]
        self.n_classes, self.bce = state["n_classes"], state["bce"]
