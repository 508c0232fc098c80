"""``hf``: a Hugging Face ``transformers`` model as a leantrain model.

    model: {name: hf, path: DIR}                                  # a save_pretrained directory
    model: {name: hf, config: {model_type: llama, hidden_size: 64, num_hidden_layers: 4, ...}}

``path`` loads a local directory written by ``save_pretrained`` (``local_files_only``: never the
network); ``config`` builds a fresh, seeded model from a config dict. The task follows the
architecture: causal LM (GPT-2 and the Llama layout: Llama, Mistral, Qwen2), masked LM (BERT: the
data's windows are masked 15% / 80-10-10 by :mod:`leantrain.data.masking`) and image
classification (ViT). ``transformers`` is imported only when an ``hf`` model is built.

One adapter per layout (``hf_layouts.py``) tells where the blocks, the dropout sites, the final head
and the layer indices are. HF's own forward runs (its masks, rotary embeddings and caches stay its
own); each block's ``forward`` is rebound *on the object* (parameter names never change) to skip
or rescale it according to ``model.plan`` in training mode, or to run it on the kept slices of its
weights (RaPTr's width: heads by key/value group, MLP units). Local learning's units run HF's forward
up to the first block, recording what it hands each block, and then the blocks with those.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check
from ..errors import ConfigError, LeantrainError
from ..registry import register_model
from .protocol import ModelProtocol, Units, WeightRoles, check_dropout_site, sample_next

# model_type -> (layout, task). Mistral and Qwen2 use the Llama layout (``model.layers``).
FAMILIES = {
    "gpt2": ("gpt2", "causal_lm"),
    "llama": ("llama", "causal_lm"),
    "mistral": ("llama", "causal_lm"),
    "qwen2": ("llama", "causal_lm"),
    "bert": ("bert", "masked_lm"),
    "vit": ("vit", "image_classification"),
}
CONSUMES = {"causal_lm": "lm", "masked_lm": "lm", "image_classification": "classification"}


def register_hf_family(model_type: str, layout, task: str) -> None:
    """Let ``model: {name: hf}`` take another ``model_type``: ``layout`` is the name of a layout in
    ``hf_layouts.LAYOUTS`` (e.g. ``"llama"`` for a decoder with ``model.layers``) or a
    :class:`~leantrain.models.hf_layouts.Layout` subclass of one's own; ``task`` one of causal_lm,
    masked_lm, image_classification."""
    from .hf_layouts import LAYOUTS, Layout
    if task not in CONSUMES:
        raise ConfigError(f"register_hf_family: task {task!r} is not one of {', '.join(CONSUMES)}")
    if isinstance(layout, type) and issubclass(layout, Layout):
        LAYOUTS[layout.name] = layout
        layout = layout.name
    if layout not in LAYOUTS:
        raise ConfigError(f"register_hf_family: no layout {layout!r} (known: {', '.join(sorted(LAYOUTS))})")
    FAMILIES[model_type] = (layout, task)


def transformers_module():
    """``import transformers`` (≈ 4 s), only when an hf model is used; a one-line error without it."""
    try:
        import transformers
    except ImportError:
        raise LeantrainError("model.name: hf needs the `transformers` package: pip install 'leantrain[hf]'") from None
    return transformers


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' advisory warnings and progress bars while leantrain builds, loads or
    saves a model (leantrain's own output says what happens)."""
    logging = transformers_module().logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


@dataclass
class HFConfig:
    path: str | None = None
    """A local directory written by `save_pretrained` (config.json + safetensors), loaded with
    local_files_only — never the network. Give this or `config`. Resuming, evaluating or exporting
    the run reads its config from there again (the weights come from the checkpoint)."""
    config: dict | None = None
    """A transformers config as a mapping, e.g. {model_type: llama, hidden_size: 64, ...}: a fresh
    model, initialised from train.seed. Data-decided keys left out are filled in (vocab_size, the
    position range, image_size / num_channels / num_labels)."""
    block_size: int = 64
    """Text: tokens per training window (the context the model is trained on)."""
    mlm_probability: float = 0.15
    """Masked LM (BERT): share of each window's tokens selected for prediction (BERT's 15%; of them
    80% become the mask token, 10% a random token, 10% stay)."""
    mask_token_id: int | None = None
    """Masked LM: the mask token's id; null = one id appended after the data's vocabulary."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel transformers uses (sdpa: torch's scaled_dot_product_attention)."""

    def validate(self) -> None:
        check((self.path is None) != (self.config is None), "path", "give exactly one of path (a "
              "save_pretrained directory) and config (a transformers config mapping)")
        check(self.block_size > 0, "block_size", f"must be positive, got {self.block_size}")
        check(0 < self.mlm_probability < 1, "mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")
        if self.config is not None:
            mt = self.config.get("model_type")
            check(isinstance(mt, str), "config.model_type", "name the architecture, e.g. model_type: llama")
        self.family  # an unknown model_type is refused here

    # -- what the architecture decides (read from JSON: no transformers import)
    def hf_dict(self) -> dict:
        if self.config is not None:
            return self.config
        cfg_file = Path(self.path) / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"path: {self.path} is not a save_pretrained directory (no config.json)")
        try:
            return json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"path: {cfg_file} is not valid JSON ({e})") from None

    @property
    def model_type(self) -> str:
        mt = self.hf_dict().get("model_type")
        if not isinstance(mt, str):
            raise ConfigError("config: the transformers config names no model_type")
        return mt

    @property
    def family(self) -> str:
        mt = self.model_type
        if mt not in FAMILIES:
            raise ConfigError(f"config.model_type: {mt!r} has no leantrain adapter (known: "
                              f"{', '.join(sorted(FAMILIES))})")
        return FAMILIES[mt][0]

    @property
    def task(self) -> str:
        """causal_lm, masked_lm or image_classification."""
        return FAMILIES[self.model_type][1]

    @property
    def vocab_size(self) -> int | None:
        """Text models: the vocabulary (the config's, filled in from the data)."""
        return self.hf_dict().get("vocab_size")

    @property
    def consumes(self) -> str:
        """The data kind's task this model takes: ``lm`` or ``classification``."""
        return CONSUMES[self.task]

    def wrap_data(self, data):
        """The data as this model trains on it: BERT's windows masked, others unchanged."""
        if self.task == "masked_lm" and data.task == "lm":
            from ..data.masking import MaskedLMTask
            return MaskedLMTask(data, self.mlm_probability, self.mask_token_id)
        return data

    def adapt_to_data(self, info) -> None:
        """Fill in (config) or check (path) what the data decides; refuse data the model cannot take."""
        what = {"lm": "token sequences", "classification": "labelled arrays"}
        if info.task != self.consumes:
            raise ConfigError(f"model: hf {self.model_type} ({self.task.replace('_', ' ')}) consumes "
                              f"{what[self.consumes]}, but the data holds {what.get(info.task, info.task)}; "
                              "choose a model for this data")
        d = self.hf_dict()
        if info.task == "lm":
            self._fit(d, "vocab_size", info.vocab_size, "≥", "the data's vocabulary")
            pos = "n_positions" if self.model_type == "gpt2" else "max_position_embeddings"
            self._fit(d, pos, self.block_size, "≥", "model.block_size", default=max(self.block_size, 64))
            return
        shape = tuple(info.input_shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ConfigError(f"model: hf {self.model_type} classifies square images (C, H, H); the data's "
                              f"samples have shape {shape}")
        self._fit(d, "num_channels", shape[0], "=", "the data's channels")
        self._fit(d, "image_size", shape[1], "=", "the data's image size")
        patch = d.get("patch_size", 16)
        if shape[1] % patch:
            raise ConfigError(f"model.config.patch_size: {patch} does not divide the image size {shape[1]}")
        labels = len(d["id2label"]) if "id2label" in d else d.get("num_labels")
        if self.config is not None and labels is None:
            d["num_labels"] = info.num_classes
        elif labels != info.num_classes:
            raise ConfigError(f"model: the hf model has {labels} labels, the data {info.num_classes} classes")

    def _fit(self, d: dict, key: str, need: int, rel: str, what: str, default: int | None = None) -> None:
        if key not in d and self.config is not None:
            d[key] = need if default is None else default
            return
        have = d.get(key)
        ok = have is not None and (have >= need if rel == "≥" else have == need)
        if not ok:
            where = "model.config" if self.config is not None else f"the model in {self.path}"
            raise ConfigError(f"{where}: {key} is {have}, but {what} needs {rel} {need}")


# ----------------------------------------------------------------------------------- the model
CAPABILITIES = frozenset({"blocks", "plan", "plan_width", "dropout", "units", "stages", "depth_change",
                          "weight_roles", "export"})
WHY_NOT = {
    "unit_hooks": "its units are callable (capability units): HF's forward computes the masks and "
                  "position embeddings, recorded for the block units",
    "pipeline": "later pipeline stages would need the masks and rotary embeddings HF's forward computes "
                "on the first stage (and tied embeddings span the first and last module)",
}


class HFModel(ModelProtocol, nn.Module):
    """A transformers model with leantrain's controls: ``forward(x, y) -> (logits, loss)`` and the
    model protocol (capabilities in ``CAPABILITIES``; ``why_not`` explains the others). ``hf`` is the
    transformers model itself (``export_pretrained`` writes it with ``save_pretrained``)."""
    CAPABILITIES = CAPABILITIES

    def __init__(self, hf: nn.Module, cfg: HFConfig):
        super().__init__()
        from .hf_layouts import layout_for
        self.hf = hf
        self.config = cfg
        self.task = cfg.task
        self.layout = layout_for(cfg.family)
        self.plan = None
        self._recording: list | None = None
        self._context: list = []
        self.sync_depth()

    def why_not(self, name: str) -> str | None:
        return WHY_NOT.get(name)

    def _plan_index(self) -> dict:
        """{block index: its BlockPlan} of the current plan (rebuilt when the plan object changes)."""
        plan, cached = self.plan, self.__dict__.get("_plan_cache")
        if cached is None or cached[0] is not plan:
            cached = self.__dict__["_plan_cache"] = (plan, {b.index: b for b in plan})
        return cached[1]

    # -- blocks, depth changes ---------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        return self.layout.blocks(self.hf)

    @property
    def block_prefix(self) -> str:
        return f"hf.{self.layout.blocks_path}"

    def set_blocks(self, blocks) -> None:
        """Replace the blocks (where HF's forward reads them) and run the after-depth-change hook."""
        self.layout.set_blocks(self.hf, blocks)
        self.sync_depth()

    def __setattr__(self, name, value):
        if name == "blocks":  # ``model.blocks = ...`` lands where HF's forward reads the blocks
            self.set_blocks(value)
            return
        super().__setattr__(name, value)

    def sync_depth(self) -> None:
        """The after-depth-change hook, also run before every forward (idempotent, cheap): rebind
        each block's forward to this model's plan, number the blocks' ``layer_idx`` by position (it
        indexes the KV cache), and set the config's layer count and per-layer type list (Llama runs
        ``layers[:num_hidden_layers]``; Qwen2 picks each layer's mask by ``config.layer_types[i]``)."""
        blocks = self.blocks
        for i, block in enumerate(blocks):
            bound = block.__dict__.get("forward")
            if getattr(bound, "_leantrain_block", None) is not block:  # new, or a copy of another block
                _bind(self, block)
            block._leantrain_index = i
        self.layout.after_depth_change(self.hf, blocks)

    def check_plan(self, plan) -> None:
        if plan is None:
            return
        idx = [b.index for b in plan]
        if idx != sorted(set(idx)) or (idx and not 0 <= idx[0] <= idx[-1] < len(self.blocks)):
            raise ValueError(f"an hf model runs its blocks in order: plan indices {idx} must increase "
                             f"within 0..{len(self.blocks) - 1}")
        groups, hidden = self.width_units(0)
        for b in plan:
            for what, kept, n in (("heads", b.heads, groups), ("hidden", b.hidden, hidden)):
                if kept is not None and (len(kept) == 0 or int(kept.min()) < 0 or int(kept.max()) >= n):
                    raise ValueError(f"block {b.index}: {what} must be a non-empty subset of range({n})")

    # -- width (RaPTr): heads by key/value group, MLP hidden units, on sliced weights -------------
    def block_roles(self):
        """What each weight of a block is (every block of an HF model has the same roles)."""
        return self.layout.block_roles(self.hf.config)

    def width_units(self, i: int) -> tuple[int, int]:
        """(attention head groups, MLP hidden units) block ``i``'s plan can slice. With grouped-query
        attention a group is one key/value head with the query heads that read it: a kept group
        keeps all of them, so the attention keeps its query/key ratio."""
        r = self.block_roles()
        return r.n_kv_head or r.n_head, r.n_hidden

    def _width_indices(self, heads, hidden):
        """{weight role: (channel indices along its sliced axis)} for kept head groups / units."""
        r = self.block_roles()
        out = {}
        if heads is not None:
            per = r.kv_groups
            hd = r.head_size
            q_heads = (heads[:, None] * per + torch.arange(per, device=heads.device)).flatten()
            ch = lambda h: (h[:, None] * hd + torch.arange(hd, device=h.device)).flatten()  # noqa: E731
            out["q"], out["kv"] = ch(q_heads), ch(heads)
        if hidden is not None:
            out["hidden"] = hidden
        return out

    def _slices(self, params: dict, idx: dict):
        """The walk over a block's width-sliced weights for channel indices ``idx`` (see
        :meth:`_width_indices`): (weight role, channels, axis, bias sliced too, is an output
        projection). Output projections are sliced along their input axis and keep their bias."""
        r = self.block_roles()
        if "q" in idx:
            if r.qkv is not None:  # fused (GPT-2): q, k, v blocks of equal size along the output axis
                C = params[r.qkv.name].shape[r.qkv.out_axis] // 3
                yield r.qkv, torch.cat([idx["q"], idx["q"] + C, idx["q"] + 2 * C]), r.qkv.out_axis, True, False
            else:
                yield r.q, idx["q"], r.q.out_axis, True, False
                yield r.k, idx["kv"], r.k.out_axis, True, False
                yield r.v, idx["kv"], r.v.out_axis, True, False
            yield r.attn_out, idx["q"], r.attn_out.in_axis, False, True
        if "hidden" in idx:
            for w in (r.mlp_in, r.mlp_gate):
                if w is not None:
                    yield w, idx["hidden"], w.out_axis, True, False
            yield r.mlp_out, idx["hidden"], r.mlp_out.in_axis, False, True

    def _sliced(self, block: nn.Module, entry) -> tuple[dict[str, torch.Tensor], list]:
        """Block parameters (by name inside the block) replaced by their kept slices for ``entry``,
        the output projections' by ``entry.width_scale`` times theirs; and the attributes that must
        follow the narrower projections (GPT-2's ``split_size``)."""
        params = dict(block.named_parameters())
        idx = self._width_indices(entry.heads, entry.hidden)
        out: dict[str, torch.Tensor] = {}
        scale = entry.width_scale
        for w, channels, axis, bias_too, out_proj in self._slices(params, idx):
            kept = params[w.name].index_select(axis, channels)
            out[w.name] = kept * scale if out_proj and scale != 1.0 else kept
            if w.bias is not None and bias_too:
                out[w.bias] = params[w.bias].index_select(0, channels)
            if w.bias is not None and out_proj and scale != 1.0:
                out[w.bias] = params[w.bias] * scale
        attrs = self.layout.width_attrs(block, len(idx["q"]) if "q" in idx else None,
                                        len(idx["hidden"]) if "hidden" in idx else None)
        return out, attrs

    def width_unused_slices(self) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
        """(parameter, dim, indices) the current plan's width slicing leaves out (zero gradient this
        step); blocks the plan skips entirely are not listed."""
        result = []
        groups, hidden = self.width_units(0)
        for b in self.plan or ():
            params = dict(self.blocks[b.index].named_parameters())
            left = self._width_indices(None if b.heads is None else _left_out(groups, b.heads),
                                       None if b.hidden is None else _left_out(hidden, b.hidden))
            for w, channels, axis, bias_too, _ in self._slices(params, left):
                if len(channels):
                    result.append((params[w.name], axis, channels))
                    if w.bias is not None and bias_too:
                        result.append((params[w.bias], 0, channels))
        return result

    # -- forward ---------------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.sync_depth()
        if self.task == "image_classification":
            return self.hf(pixel_values=x).logits
        return self.hf(input_ids=x, use_cache=False).logits

    def forward(self, x, targets=None):
        logits = self.logits(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    # -- units (local learning) -------------------------------------------------------------------
    def local_units(self, input_shape) -> Units:
        """[embedding, every block, head] as callable units. The embedding unit runs HF's forward up
        to the first block and records what HF hands each block (masks — per layer type —, rotary
        position embeddings, ...); the block units run with those, so HF computes them as always."""
        hf, lay = self.hf, self.layout
        head = lay.head_modules(hf)
        blocks = list(self.blocks)
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        in_head = {id(p) for m in head for p in m.parameters()}
        tied = lay.tied_weight(hf)
        embed_params = [p for p in hf.parameters() if id(p) not in in_blocks and
                        (id(p) not in in_head or (tied is not None and p is tied))]
        seen = {id(p) for p in embed_params}
        head_params = list({id(p): p for m in head for p in m.parameters() if id(p) not in seen}.values())
        width = lay.width(hf.config)
        if self.task == "image_classification":
            tokens = (input_shape[1] // hf.config.patch_size) ** 2 + 1  # patches + [CLS]
            out = (hf.config.num_labels,)
        else:
            tokens = self.config.block_size
            out = (tokens, hf.config.vocab_size)
        modules = [_EmbedUnit(self), *[_BlockUnit(self, i) for i in range(len(blocks))], _HeadUnit(self)]
        shapes = [(tokens, width)] * (len(blocks) + 1) + [out]
        return Units(modules=modules, shapes=shapes, kind="tokens",
                     params=[embed_params, *[list(b.parameters()) for b in blocks], head_params],
                     tied_head_weight=tied)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The first block's input, from HF's own forward (stopped there); records every block's
        other arguments for :meth:`run_block`."""
        self.sync_depth()
        self._recording = []
        try:
            if self.task == "image_classification":
                self.hf(pixel_values=x)
            else:
                self.hf(input_ids=x, use_cache=False)
        except _Captured as c:
            return c.args[0]
        finally:
            self._context, self._recording = self._recording, None
        raise RuntimeError("the model's forward finished without reaching its blocks")

    def run_block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        args, kwargs = self._context[i]
        return _hidden_of(self.blocks[i](h, *args, **kwargs))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.layout.head(self.hf, h)

    # -- stages (stitched families): embed records every block's context, run_block(s) use it
    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.blocks)):
            h = self.run_block(i, h)
        return h

    def embed_parameters(self) -> list[nn.Parameter]:
        """Parameters before the first block (token / position / patch embeddings, embedding norm)."""
        return self.local_units(self._unit_shape()).params[0]

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters after the last block (final norm, head; a tied matrix is the embedding's too)."""
        units = self.local_units(self._unit_shape())
        tied = units.tied_head_weight
        return units.params[-1] + ([tied] if tied is not None else [])

    def _unit_shape(self) -> tuple[int, ...]:
        if self.task == "image_classification":
            c = self.hf.config
            return (c.num_channels, c.image_size, c.image_size)
        return (self.config.block_size,)

    # -- dropout sites ---------------------------------------------------------------------------
    def dropout_sites(self) -> dict[str, tuple[int, ...]]:
        """The sites this layout has: ``embedding`` -> (), block sites -> every block index."""
        n = tuple(range(len(self.blocks)))
        return {s: (() if s == "embedding" else n) for s in self.layout.sites}

    def dropout_absent(self) -> dict[str, str]:
        """The sites this layout lacks, each with the reason."""
        return self.layout.dropout_absent()

    def dropout_rates(self) -> dict[str, float | list[float]]:
        return {s: self.layout.get_rate(self.hf, s) for s in self.layout.sites}

    def set_dropout(self, p: float, site: str | None = None, block: int | None = None) -> None:
        assert 0.0 <= p < 1.0, f"dropout rate must be in [0, 1), got {p}"
        if site is not None:
            check_dropout_site(self, site)
        for s in ([site] if site is not None else list(self.layout.sites)):
            self.layout.set_rate(self.hf, s, p, block)

    # -- weights, export -------------------------------------------------------------------------
    def weight_roles(self) -> WeightRoles:
        return self.layout.weight_roles(self.hf, self.block_prefix)

    def export_pretrained(self, directory) -> None:
        self.sync_depth()
        with quiet_transformers():
            self.hf.save_pretrained(str(directory))

    # -- measurement, generation -----------------------------------------------------------------
    def shape_key(self) -> tuple:
        base = (len(self.blocks),)
        if self.plan is None:
            return base
        return base + tuple((b.index, None if b.heads is None else len(b.heads),
                             None if b.hidden is None else len(b.hidden)) for b in self.plan)

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True):
        """Sample ``max_new_tokens`` tokens (leantrain's sampler: temperature, top-k, a generator),
        through HF's KV cache while the sequence fits the model's positions."""
        if self.task != "causal_lm":
            raise LeantrainError(f"hf {self.config.model_type} is a {self.task.replace('_', ' ')} model; "
                                 "only causal LMs generate text")
        self.sync_depth()
        limit = self.layout.max_positions(self.hf.config)
        cache, fed = None, 0
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= limit:
                out = self.hf(input_ids=idx[:, fed:], cache=cache, use_cache=True)
                cache, fed = out.cache, idx.size(1)
            else:
                out = self.hf(input_ids=idx[:, -limit:], use_cache=False)
            nxt = sample_next(out.logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


class _Captured(Exception):
    """Stops HF's forward once every block's arguments are recorded (``HFModel.embed``)."""


class _Unit(nn.Module):
    def __init__(self, model: "HFModel", i: int = -1):
        super().__init__()
        self.model, self.i = [model], i  # a list: the model's parameters stay registered on it alone


class _EmbedUnit(_Unit):
    def forward(self, x):
        return self.model[0].embed(x)


class _BlockUnit(_Unit):
    def forward(self, h):
        return self.model[0].run_block(self.i, h)


class _HeadUnit(_Unit):
    def forward(self, h):
        return self.model[0].head(h)


def _hidden_of(out):
    return out[0] if isinstance(out, tuple) else out


def _with_hidden(out, h):
    return (h, *out[1:]) if isinstance(out, tuple) else h


def _bind(model: HFModel, block: nn.Module) -> None:
    """Rebind ``block.forward`` on the object: the original forward, skipped (identity) or rescaled
    (``h + s·(block(h) − h)``) as ``model.plan`` says in training mode. Parameter names, the block's
    class and HF's forward loop are unchanged."""
    original = type(block).forward.__get__(block)
    owner = [model]  # a list: no module reference cycle through nn.Module attributes

    def run(hidden_states, args, kwargs, entry=None):
        if entry is None or (entry.heads is None and entry.hidden is None):
            out = original(hidden_states, *args, **kwargs)
        else:
            out = _run_sliced(owner[0], block, entry, hidden_states, args, kwargs)
        # transformers 5 blocks return a tensor, older forks' a tuple: remember which, so that a
        # skipped block (the identity) hands its loop the same structure
        block.__dict__["_leantrain_outputs"] = len(out) if isinstance(out, tuple) else 0
        return out

    def identity(hidden_states):
        n = block.__dict__.get("_leantrain_outputs", 0)
        return (hidden_states, *[None] * (n - 1)) if n else hidden_states

    def forward(hidden_states, *args, **kwargs):
        m = owner[0]
        if m._recording is not None:  # HFModel.embed: record this block's arguments, skip it
            m._recording.append((args, kwargs))
            if len(m._recording) == 1:
                m._first_input = hidden_states
            if len(m._recording) == len(m.blocks):
                first, m._first_input = m._first_input, None
                raise _Captured(first)
            return identity(hidden_states)
        if m.plan is None or not m.training or block.__dict__.get("_leantrain_sliced"):
            return run(hidden_states, args, kwargs)  # (sliced: inside functional_call, below)
        entry = m._plan_index().get(block._leantrain_index)
        if entry is None:
            return identity(hidden_states)  # skipped: no compute, no gradient
        out = run(hidden_states, args, kwargs, entry)
        if entry.scale == 1.0:
            return out
        h = _hidden_of(out)
        return _with_hidden(out, hidden_states + entry.scale * (h - hidden_states))

    forward._leantrain_block = block
    block.forward = forward


def _left_out(n: int, kept: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool, device=kept.device)
    mask[kept] = False
    return mask.nonzero().flatten()


def _run_sliced(model: HFModel, block: nn.Module, entry, hidden_states, args, kwargs):
    """The block's own forward on its kept heads / units: its parameters swapped for their slices
    (``torch.func.functional_call``: the graph reaches the full parameters, so the left-out slices
    get exactly zero gradient) and the attributes that size the projections set to match."""
    sliced, attrs = model._sliced(block, entry)
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in attrs]
    for obj, name, value in attrs:
        setattr(obj, name, value)
    block.__dict__["_leantrain_sliced"] = True
    try:
        return torch.func.functional_call(block, sliced, (hidden_states, *args), kwargs, strict=False)
    finally:
        block.__dict__["_leantrain_sliced"] = False
        for obj, name, value in saved:
            setattr(obj, name, value)


def build_hf_model(cfg: HFConfig) -> nn.Module:
    """The transformers model a config names: loaded from ``path`` or built from ``config``."""
    tf = transformers_module()
    auto = {"causal_lm": tf.AutoModelForCausalLM, "masked_lm": tf.AutoModelForMaskedLM,
            "image_classification": tf.AutoModelForImageClassification}[cfg.task]
    with quiet_transformers():
        if cfg.path is not None:
            try:
                return auto.from_pretrained(cfg.path, local_files_only=True,
                                            attn_implementation=cfg.attn_implementation)
            except (OSError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise LeantrainError(f"model.path: cannot load {cfg.path}: {first}") from None
        d = dict(cfg.config)
        model_type = d.pop("model_type")
        if "vocab_size" in d:  # default special-token ids outside a small vocabulary: none
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                default = getattr(tf.AutoConfig.for_model(model_type), key, None)
                if key not in d and isinstance(default, int) and default >= d["vocab_size"]:
                    d[key] = None
        try:
            hf_cfg = tf.AutoConfig.for_model(model_type, **d)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.config: {str(e).strip().splitlines()[0]}") from None
        hf_cfg._attn_implementation = cfg.attn_implementation
        return auto.from_config(hf_cfg)


@register_model("hf", config=HFConfig, task="any")
def hf(cfg: HFConfig) -> HFModel:
    return HFModel(build_hf_model(cfg), cfg)
