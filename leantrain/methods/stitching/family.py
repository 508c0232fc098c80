"""A stitched model family: stacks of GPT blocks (anchors or pool instances) with their embeddings
and heads, stitch layers keyed by (stack pair, position window), and the list of configurations.

Training runs one configuration per step through :meth:`StitchedFamily.forward_config` on the
family's own weights; :meth:`StitchedFamily.materialize` copies one configuration out as a plain
:class:`~leantrain.models.stitched.StitchedGPT`, which computes exactly the same logits.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import build, to_dict
from ...errors import ConfigError, LeantrainError
from ...measure import forward_flops
from ...models import protocol
from ...models.gpt import GPT, GPTConfig
from ...models.stitched import StitchedGPT, StitchedGPTConfig
from .routes import (V2_KINDS, Route, Segment, learngene_routes, parse_stitch_key, snnet_v1_routes,
                     snnet_v2_routes)


class StitchLayer(nn.Module):
    """Token-wise ``Linear(C_a → C_b)`` with bias. With ``rank > 0`` (SN-Net v2) the weight is frozen
    (it holds the least-squares init) and a low-rank update ``scale·B·A`` is trained, B starting at 0."""

    def __init__(self, c_in: int, c_out: int, rank: int = 0, alpha: float = 1.0):
        super().__init__()
        linear = nn.Linear(c_in, c_out)  # PyTorch's default init until a stitch init overwrites it
        self.weight, self.bias = linear.weight, linear.bias
        self.rank = rank
        if rank > 0:
            self.weight.requires_grad_(False)
            self.lora_a = nn.Parameter(torch.empty(rank, c_in))
            self.lora_b = nn.Parameter(torch.zeros(c_out, rank))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear (and loralib) init
            self.scale = alpha / rank

    def merged_weight(self) -> torch.Tensor:
        """The weight a deployed Linear carries: W, or W + scale·B·A."""
        if self.rank == 0:
            return self.weight
        return self.weight + self.scale * (self.lora_b @ self.lora_a)

    def forward(self, x):
        # The update is merged into the weight (not x·Aᵀ·Bᵀ on the side) so that an exported Linear
        # holding merged_weight() computes bit-identical outputs.
        return F.linear(x, self.merged_weight(), self.bias)

    @torch.no_grad()
    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Initialise (least squares, learned init): W, b; a LoRA update restarts at zero."""
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        if self.rank > 0:
            self.lora_b.zero_()

    def deployed_numel(self) -> int:
        return self.weight.numel() + self.bias.numel()


@dataclass
class ConfigRow:
    """One configuration of a family, as ``leantrain pool list`` prints it."""
    id: int
    kind: str
    route: str
    params: int
    """Parameters of the exported standalone model (all of them, embeddings included)."""
    flops: int
    """Matmul FLOPs of one inference forward on one sequence of ``block_size`` tokens (measured)."""


class StitchedFamily(nn.Module):
    """Stacks (GPTs, ascending width; reached through the model protocol's ``blocks`` and ``stages``:
    ``embed``, ``blocks``, ``head``) + stitch layers + the allowed routes. Build it with
    :func:`snnet_family` or :func:`learngene_pool`; rebuild it from a checkpoint with :meth:`from_spec`."""

    def __init__(self, stacks: Sequence[GPT], routes: Sequence[Route], labels: Sequence[str] | None = None,
                 scheme: str = "", lora_rank: int = 0, lora_alpha: float = 1.0):
        super().__init__()
        self.labels = list(labels) if labels else [f"w{stack_width(s)}" for s in stacks]
        _check_compatible(stacks, self.labels)
        self.stacks = nn.ModuleList(stacks)
        self.routes = list(routes)
        self.scheme = scheme
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha
        self._check_routes()
        keys = list(dict.fromkeys(k for r in self.routes for k in r.stitches))  # first-use order
        self.stitches = nn.ModuleDict({k: self._stitch_layer(k) for k in keys})
        anchors = [i for i, r in enumerate(self.routes) if len(r.segments) == 1]
        # The configuration ``forward`` runs, set per step by the training side; the widest anchor
        # until then.
        self.active = max(anchors or [0], key=self.config_params)

    def _stitch_layer(self, key: str) -> StitchLayer:
        a, b, _ = parse_stitch_key(key)
        return StitchLayer(self.width(a), self.width(b), self.lora_rank, self.lora_alpha)

    def _check_routes(self) -> None:
        for i, r in enumerate(self.routes):
            ok = len(r.stitches) == len(r.segments) - 1 and all(
                0 <= s.stack < len(self.stacks) and 0 <= s.start < s.stop <= self.depth(s.stack)
                for s in r.segments)
            ok = ok and all(parse_stitch_key(k)[:2] == (a.stack, b.stack)
                            for k, a, b in zip(r.stitches, r.segments, r.segments[1:]))
            if not ok:
                raise LeantrainError(f"configuration {i} ({r}) does not fit the family's stacks")

    # -- the family's shape ----------------------------------------------------------------------
    def width(self, stack: int) -> int:
        return stack_width(self.stacks[stack])

    def depth(self, stack: int) -> int:
        return len(self.stacks[stack].blocks)

    @property
    def block_size(self) -> int:
        return self.stacks[0].config.block_size

    @property
    def num_configs(self) -> int:
        return len(self.routes)

    def route(self, config_id: int) -> Route:
        if not 0 <= config_id < len(self.routes):
            raise LeantrainError(f"configuration id {config_id} is out of range: the family has "
                                 f"{len(self.routes)} configurations (0..{len(self.routes) - 1})")
        return self.routes[config_id]

    def describe(self, config_id: int) -> str:
        """The route in words, e.g. ``w16[0:2] > w32[2:4]`` (blocks start:stop of each stack)."""
        segments = self.route(config_id).segments
        return " > ".join(f"{self.labels[s.stack]}[{s.start}:{s.stop}]" for s in segments)

    # -- training forward --------------------------------------------------------------------------
    def forward(self, idx, targets=None):
        return self.forward_config(idx, self.active, targets)

    def forward_config(self, idx, config_id: int, targets=None):
        """(logits, loss) of one configuration, on the family's own weights (gradients reach them)."""
        r = self.route(config_id)
        x = self.stacks[r.segments[0].stack].embed(idx)
        embedded = {r.segments[0].stack}
        for n, seg in enumerate(r.segments):
            if n > 0:
                x = self.stitches[r.stitches[n - 1]](x)
            stack = self.stacks[seg.stack]
            run_block = getattr(stack, "run_block", None)  # blocks that take the forward's context (hf)
            if run_block is None:
                for block in stack.blocks[seg.start:seg.stop]:
                    x = block(x)
                continue
            if seg.stack not in embedded:  # this stack's own masks / rotary embeddings for the batch
                stack.embed(idx)
                embedded.add(seg.stack)
            for i in range(seg.start, seg.stop):
                x = run_block(i, x)
        logits = self.stacks[r.segments[-1].stack].head(x)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def shape_key(self) -> tuple:
        """What determines a training step's FLOPs besides the batch shape: the active route."""
        return ("stitched", self.active)

    # -- export ----------------------------------------------------------------------------------
    @property
    def gpt_stacks(self) -> bool:
        """Whether the stacks are leantrain GPTs (a configuration then exports as a ``stitched_gpt``)."""
        return all(isinstance(s, GPT) for s in self.stacks)

    def model_config(self, config_id: int) -> StitchedGPTConfig:
        """The standalone model's recipe (``model:`` section of an exported checkpoint)."""
        if not self.gpt_stacks:
            raise LeantrainError(f"configuration {config_id}: a stitched_gpt holds GPT blocks; this family's "
                                 f"stacks are {type(self.stacks[0]).__name__}s")
        r = self.route(config_id)
        cfgs = [self.stacks[s.stack].config for s in r.segments]
        first = cfgs[0]
        return StitchedGPTConfig(n_layer=[s.stop - s.start for s in r.segments],
                                 n_head=[c.n_head for c in cfgs], n_embd=[c.n_embd for c in cfgs],
                                 block_size=first.block_size,
                                 vocab_size=first.vocab_size, dropout=0.0, bias=first.bias,
                                 tie_head=r.segments[0].stack == r.segments[-1].stack)

    @torch.no_grad()
    def materialize(self, config_id: int) -> StitchedGPT:
        """One configuration as a standalone model holding copies of its weights (LoRA merged)."""
        r = self.route(config_id)
        device = next(self.stacks[0].parameters()).device
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the RNG alone
            model = StitchedGPT(self.model_config(config_id)).to(device)
        model.load_route(self.stacks[r.segments[0].stack],
                         [self.stacks[s.stack].blocks[s.start:s.stop] for s in r.segments],
                         [(self.stitches[k].merged_weight(), self.stitches[k].bias) for k in r.stitches],
                         self.stacks[r.segments[-1].stack])
        return model

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample from the active configuration (after loading a run: its ``eval_config``) with
        leantrain's sampler (temperature, top-k, a generator). GPT stacks: through a standalone copy of
        the configuration. Other stacks (hf): a configuration that is one whole stack samples through
        that model's own ``generate`` (HF's KV cache); a stitched route, or part of a stack, reruns the
        family's forward on the last ``block_size`` tokens for every new token — no KV cache spans
        stacks of different widths joined by stitch layers."""
        if self.gpt_stacks:
            return self.materialize(self.active).eval().generate(idx, max_new_tokens, temperature, top_k, generator)
        r = self.route(self.active)
        seg, training = r.segments[0], self.training
        stack = self.stacks[seg.stack]
        self.eval()
        try:
            if len(r.segments) == 1 and (seg.start, seg.stop) == (0, self.depth(seg.stack)) and \
                    hasattr(stack, "generate"):
                return stack.generate(idx, max_new_tokens, temperature, top_k, generator)
            for _ in range(max_new_tokens):
                nxt = protocol.sample_next(self(idx[:, -self.block_size:])[0][:, -1, :], temperature, top_k, generator)
                idx = torch.cat((idx, nxt), dim=1)
            return idx
        finally:
            self.train(training)

    # -- accounting ------------------------------------------------------------------------------
    def config_params(self, config_id: int) -> int:
        """Parameters of the exported model of ``config_id`` (a tied head counted once)."""
        r = self.route(config_id)
        first, last = self.stacks[r.segments[0].stack], self.stacks[r.segments[-1].stack]
        params = [*first.embed_parameters(), *last.head_parameters()]
        params += [p for s in r.segments for b in self.stacks[s.stack].blocks[s.start:s.stop] for p in b.parameters()]
        unique = {id(p): p.numel() for p in params}
        return sum(unique.values()) + sum(self.stitches[k].deployed_numel() for k in r.stitches)

    def stored_params(self) -> dict[str, int]:
        """What the family stores for all its configurations at once: the stacks (embeddings, blocks,
        heads) and the stitch layers (LoRA factors included)."""
        stacks = sum(p.numel() for p in self.stacks.parameters())
        stitches = sum(p.numel() for p in self.stitches.parameters())
        return {"stacks": stacks, "stitches": stitches, "total": stacks + stitches}

    def config_flops(self, config_id: int, seq_len: int | None = None) -> int:
        """Measured inference FLOPs of one forward of the exported model on one sequence."""
        if not self.gpt_stacks:  # measured on the family itself, running only this configuration
            key = ("family", config_id, seq_len or self.block_size)
            if key not in self.__dict__.setdefault("_flops", {}):
                active, self.active = self.active, config_id
                try:
                    self._flops[key] = forward_flops(self, torch.zeros(1, key[2], dtype=torch.long,
                                                                       device=next(self.parameters()).device))
                finally:
                    self.active = active
            return self._flops[key]
        cfg = self.model_config(config_id)
        return _route_flops(tuple(cfg.n_layer), tuple(cfg.n_head), tuple(cfg.n_embd), cfg.block_size,
                            cfg.vocab_size, cfg.bias, cfg.tie_head, seq_len or cfg.block_size)

    def table(self, seq_len: int | None = None) -> list[ConfigRow]:
        return [ConfigRow(i, r.kind, self.describe(i), self.config_params(i), self.config_flops(i, seq_len))
                for i, r in enumerate(self.routes)]

    # -- what a checkpoint stores to rebuild the family ------------------------------------------
    def spec(self) -> dict:
        """JSON-serialisable structure: stacks' GPT configs, labels, routes, stitch options. With the
        family's tensors, :meth:`from_spec` rebuilds it exactly (configuration ids included)."""
        other = {} if self.gpt_stacks else {"stack_model": "hf"}
        return {"scheme": self.scheme, "labels": self.labels, "lora_rank": self.lora_rank, **other,
                "lora_alpha": self.lora_alpha, "stacks": [stack_config(s) for s in self.stacks],
                "routes": [{"kind": r.kind, "segments": [[s.stack, s.start, s.stop] for s in r.segments],
                            "stitches": list(r.stitches)} for r in self.routes]}

    @classmethod
    def from_spec(cls, spec: dict) -> "StitchedFamily":
        if spec.get("stack_model", "gpt") == "hf":
            from ...models.hf import HFConfig, HFModel, build_hf_model
            stacks = []
            for c in spec["stacks"]:
                cfg = HFConfig(**c)
                stacks.append(HFModel(build_hf_model(cfg), cfg))
        else:
            stacks = [GPT(build(GPTConfig, c, f"stacks[{i}]")) for i, c in enumerate(spec["stacks"])]
        routes = [Route(r["kind"], tuple(Segment(*s) for s in r["segments"]), tuple(r["stitches"]))
                  for r in spec["routes"]]
        return cls(stacks, routes, spec["labels"], spec["scheme"], spec["lora_rank"], spec["lora_alpha"])


def stack_width(stack: nn.Module) -> int:
    """A stack's residual width: its weight roles' (a model without them: its config's n_embd, so that
    the family's checks name the capability it lacks)."""
    if not protocol.supports(stack, "weight_roles") and hasattr(getattr(stack, "config", None), "n_embd"):
        return stack.config.n_embd
    return protocol.require(stack, "weight_roles", "stitched family").weight_roles().width


def stack_config(stack: nn.Module) -> dict:
    """What rebuilds a stack: a GPT's config; an hf model's with its transformers config inlined."""
    cfg = to_dict(stack.config)
    hf = getattr(stack, "hf", None)
    if hf is not None:
        cfg |= {"path": None, "config": {k: v for k, v in hf.config.to_diff_dict().items()
                                          if k != "transformers_version"}}
    return cfg


_FLOPS_CACHE: dict[tuple, int] = {}


def _route_flops(*shape) -> int:
    """FLOPs depend only on the route's shape: measure each shape once on a freshly built model."""
    if shape not in _FLOPS_CACHE:
        n_layer, n_head, n_embd, block_size, vocab, bias, tie, seq_len = shape
        with torch.random.fork_rng(devices=[]):  # measuring must not shift the training RNG
            model = StitchedGPT(StitchedGPTConfig(list(n_layer), list(n_head), list(n_embd), block_size,
                                                  vocab, 0.0, bias, tie))
        _FLOPS_CACHE[shape] = forward_flops(model, torch.zeros(1, seq_len, dtype=torch.long))
    return _FLOPS_CACHE[shape]


def _check_compatible(stacks: Sequence[GPT], labels: Sequence[str]) -> None:
    if len(labels) != len(stacks):
        raise ConfigError(f"{len(labels)} labels for {len(stacks)} stacks")
    if not stacks:
        raise ConfigError("a stitched family needs at least one stack")
    for label, s in zip(labels, stacks):
        for capability in ("blocks", "stages"):
            protocol.require(s, capability, f"stack {label}")
    c0 = stacks[0].config
    for label, s in zip(labels, stacks):
        if type(s) is not type(stacks[0]) or getattr(s.config, "model_type", None) != getattr(c0, "model_type", None):
            raise ConfigError(f"stitched stacks must be one kind of model: {labels[0]} is a "
                              f"{getattr(c0, 'model_type', type(stacks[0]).__name__)}, {label} a "
                              f"{getattr(s.config, 'model_type', type(s).__name__)}")
        for key, what in (("vocab_size", "one vocabulary"), ("block_size", "one context length"),
                          ("bias", "one bias setting")):
            if getattr(s.config, key, None) != getattr(c0, key, None):
                raise ConfigError(f"stitched stacks must share {what}: {labels[0]} has {key}="
                                  f"{getattr(c0, key, None)}, {label} has {key}={getattr(s.config, key, None)}")


def _by_width(stacks: Sequence[GPT], labels: Sequence[str] | None) -> tuple[list[GPT], list[str]]:
    labels = list(labels) if labels else [f"w{stack_width(s)}" for s in stacks]
    if len(labels) != len(stacks):
        raise ConfigError(f"{len(labels)} labels for {len(stacks)} stacks")
    order = sorted(range(len(stacks)), key=lambda i: stack_width(stacks[i]))  # stable for equal widths
    return [stacks[i] for i in order], [labels[i] for i in order]


def snnet_family(anchors: Sequence[GPT], version: str = "v1", window: int = 2, stride: int = 1,
                 v2_kinds: Sequence[str] = V2_KINDS, lora_rank: int = 0, lora_alpha: float = 1.0,
                 labels: Sequence[str] | None = None) -> StitchedFamily:
    """SN-Net over trained ``anchors`` (GPTs of different widths; v1: one depth, v2: depths that are
    multiples of each other). The anchors' modules become the family's stacks (not copied), in
    ascending width. Stitch layers keep PyTorch's default init until :func:`init_least_squares`."""
    stacks, labels = _by_width(anchors, labels)
    widths, depths = [stack_width(s) for s in stacks], [len(s.blocks) for s in stacks]
    if version == "v1":
        routes = snnet_v1_routes(widths, depths, window, stride, "nearest", labels)
    elif version == "v2":
        routes = snnet_v2_routes(widths, depths, v2_kinds, labels)
    else:
        raise ConfigError(f"unknown SN-Net version {version!r}; known: v1, v2")
    return StitchedFamily(stacks, routes, labels, f"snnet_{version}", lora_rank, lora_alpha)


def learngene_pool(instances: Sequence[GPT], window: int = 2, stride: int = 1, pairs: str = "all",
                   labels: Sequence[str] | None = None) -> StitchedFamily:
    """Learngene Pool over distilled auxiliary models (one depth, narrower than their ancestry): their
    blocks are the instances; descendants stitch a narrower model's first blocks to a wider one's
    last blocks. Initialise the stitches with :func:`init_learned` (or :func:`init_least_squares`)."""
    stacks, labels = _by_width(instances, labels)
    routes = learngene_routes([stack_width(s) for s in stacks], [len(s.blocks) for s in stacks],
                              window, stride, pairs, labels)
    return StitchedFamily(stacks, routes, labels, "learngene", 0, 1.0)
