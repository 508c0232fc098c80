"""One adapter per Hugging Face layout (not per checkpoint): where a family keeps its blocks, its
dropout sites, its final head and the per-layer facts a depth change must keep consistent.

| layout | blocks | dropout sites (absent: why) | head after the blocks |
|---|---|---|---|
| gpt2 | ``transformer.h`` | embedding, attention, residual, mlp | ``ln_f`` + ``lm_head`` (tied) |
| llama (Llama, Mistral, Qwen2) | ``model.layers`` | attention only (no nn.Dropout modules) | ``norm`` + ``lm_head`` |
| bert | ``bert.encoder.layer`` | embedding, attention, residual, mlp | ``cls`` (MLM head, tied decoder) |
| vit | ``vit.layers`` | embedding, attention, residual (= the MLP's too) | ``layernorm``, [CLS], ``classifier`` |

Traps handled in ``after_depth_change`` (shared/specs/models.md): Llama's loop runs only
``layers[:config.num_hidden_layers]``; Qwen2 picks each layer's mask by ``config.layer_types[i]``
(each attention keeps its own ``layer_type``, so copies bring theirs); copied blocks keep the
source's ``layer_idx``, which indexes the KV cache, so blocks are renumbered by position.
"""
from __future__ import annotations

import operator

import torch.nn as nn

from .protocol import SITES, BlockRoles, Weight, WeightRoles


class Layout:
    name = ""
    blocks_path = ""
    layers_key = "num_hidden_layers"
    # site -> path inside a block (or inside the model for "embedding"), attribute ("p" of an
    # nn.Dropout, or a float attribute); None = absent, with the reason in ``absent``.
    sites: dict[str, tuple[str, str]] = {}
    absent: dict[str, str] = {}
    head_paths: tuple[str, ...] = ()
    """Modules after the blocks, in order (the last is the output layer)."""
    embedding_path = ""
    """The module whose output enters the first block (the embedding unit's cut point)."""
    token_embedding = ""
    """The input embedding's weight (empty: the model's ``get_input_embeddings()``)."""
    position_embedding: str | None = None
    positions_key = "max_position_embeddings"
    final_norm_path: str | None = None
    """The norm whose output the output layer reads (None: ``head_paths[0]``)."""

    # -- blocks
    def blocks(self, hf: nn.Module) -> nn.ModuleList:
        return operator.attrgetter(self.blocks_path)(hf)

    def set_blocks(self, hf: nn.Module, blocks: nn.ModuleList) -> None:
        parent, _, name = self.blocks_path.rpartition(".")
        setattr(operator.attrgetter(parent)(hf) if parent else hf, name, nn.ModuleList(blocks))

    def after_depth_change(self, hf: nn.Module, blocks: nn.ModuleList) -> None:
        for i, block in enumerate(blocks):
            for module in block.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = i
        setattr(hf.config, self.layers_key, len(blocks))
        types = [getattr(getattr(b, "self_attn", None), "layer_type", None) for b in blocks]
        if getattr(hf.config, "layer_types", None) is not None and None not in types:
            hf.config.layer_types = types

    def max_positions(self, hf_config) -> int:
        return getattr(hf_config, self.positions_key)

    def width(self, hf_config) -> int:
        return hf_config.hidden_size

    # -- dropout
    def dropout_absent(self) -> dict[str, str]:
        return {s: self.absent.get(s, "not in this layout") for s in SITES if s not in self.sites}

    def _targets(self, hf: nn.Module, site: str, block: int | None):
        path, attr = self.sites[site]
        if site == "embedding":
            return [(operator.attrgetter(path)(hf), attr)]
        blocks = self.blocks(hf)
        chosen = blocks if block is None else [blocks[block]]
        return [(operator.attrgetter(path)(b) if path else b, attr) for b in chosen]

    def get_rate(self, hf: nn.Module, site: str):
        values = [float(getattr(obj, attr)) for obj, attr in self._targets(hf, site, None)]
        return values[0] if site == "embedding" else values

    def set_rate(self, hf: nn.Module, site: str, p: float, block: int | None) -> None:
        if site == "embedding" and block is not None:
            return
        for obj, attr in self._targets(hf, site, block):
            setattr(obj, attr, p)

    # -- head (the unit after the last block)
    def head_modules(self, hf: nn.Module) -> list[nn.Module]:
        return [operator.attrgetter(p)(hf) for p in self.head_paths]

    def head(self, hf: nn.Module, h):
        for m in self.head_modules(hf):
            h = m(h)
        return h

    def embedding_output(self, hf: nn.Module) -> nn.Module:
        return operator.attrgetter(self.embedding_path)(hf)

    def tied_weight(self, hf: nn.Module):
        """The token-embedding matrix if the output layer shares it, else None."""
        emb = hf.get_input_embeddings().weight
        out = hf.get_output_embeddings()
        return emb if out is not None and out.weight is emb else None

    # -- weight roles
    def weight_roles(self, hf: nn.Module, prefix: str) -> WeightRoles:
        c = hf.config
        tied = self.tied_weight(hf) is not None
        out = hf.get_output_embeddings()
        names = {id(p): n for n, p in hf.named_parameters(remove_duplicate=False)}
        emb = f"hf.{self.token_embedding}" if self.token_embedding else "hf." + names[id(hf.get_input_embeddings().weight)]
        out_name = None if out is None else "hf." + [n for n, p in hf.named_parameters(remove_duplicate=False)
                                                      if p is out.weight][-1]
        return WeightRoles(block_prefix=prefix, blocks=tuple(self.block_roles(c) for _ in self.blocks(hf)),
                           width=self.width(c), token_embedding=emb,
                           position_embedding=self.position_embedding and f"hf.{self.position_embedding}",
                           final_norm=f"hf.{self.final_norm_path or self.head_paths[0]}", output=out_name, tied=tied)

    def block_roles(self, c) -> BlockRoles:
        raise NotImplementedError

    def width_attrs(self, block: nn.Module, q_channels: int | None, hidden: int | None) -> list[tuple]:
        """(object, attribute, value) to set while a block runs on ``q_channels`` query channels and
        ``hidden`` MLP units (None: not sliced) — attributes that size a projection instead of
        reading the size from its weights."""
        return []


class GPT2Layout(Layout):
    name = "gpt2"
    blocks_path = "transformer.h"
    sites = {"embedding": ("transformer.drop", "p"), "attention": ("attn.attn_dropout", "p"),
             "residual": ("attn.resid_dropout", "p"), "mlp": ("mlp.dropout", "p")}
    head_paths = ("transformer.ln_f", "lm_head")
    embedding_path = "transformer.drop"
    position_embedding = "transformer.wpe.weight"
    positions_key = "n_positions"

    def width(self, c) -> int:
        return c.n_embd

    def width_attrs(self, block, q_channels, hidden):
        # Conv1D shapes its output by ``nf``; c_attn's output is split into q, k, v by ``split_size``
        attrs = [] if q_channels is None else [(block.attn, "split_size", q_channels),
                                               (block.attn.c_attn, "nf", 3 * q_channels)]
        return attrs + ([] if hidden is None else [(block.mlp.c_fc, "nf", hidden)])

    def block_roles(self, c) -> BlockRoles:
        # Conv1D stores weights (in, out): the output axis is 1.
        hidden = c.n_inner or 4 * c.n_embd
        return BlockRoles(qkv=Weight("attn.c_attn.weight", 1, ("q", "k", "v"), "attn.c_attn.bias"),
                          attn_out=Weight("attn.c_proj.weight", 1, bias="attn.c_proj.bias"),
                          mlp_in=Weight("mlp.c_fc.weight", 1, bias="mlp.c_fc.bias"),
                          mlp_out=Weight("mlp.c_proj.weight", 1, bias="mlp.c_proj.bias"),
                          norms=("ln_1", "ln_2"), n_head=c.n_head, head_size=c.n_embd // c.n_head,
                          n_hidden=hidden, attention="attn", mlp="mlp")


class LlamaLayout(Layout):
    name = "llama"
    blocks_path = "model.layers"
    sites = {"attention": ("self_attn", "attention_dropout")}
    absent = {s: "Llama-layout decoders have no nn.Dropout modules (only the attention probabilities' "
                 "attention_dropout)" for s in ("embedding", "residual", "mlp")}
    head_paths = ("model.norm", "lm_head")
    embedding_path = "model.embed_tokens"

    def block_roles(self, c) -> BlockRoles:
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        attn, mlp = getattr(c, "attention_bias", False), getattr(c, "mlp_bias", False)
        lin = lambda name, bias: Weight(f"{name}.weight", 0, bias=f"{name}.bias" if bias else None)  # noqa: E731
        # Qwen2 has q/k/v biases and no output bias
        qkv_bias = True if c.model_type == "qwen2" else attn
        return BlockRoles(q=lin("self_attn.q_proj", qkv_bias), k=lin("self_attn.k_proj", qkv_bias),
                          v=lin("self_attn.v_proj", qkv_bias), attn_out=lin("self_attn.o_proj", attn),
                          mlp_gate=lin("mlp.gate_proj", mlp), mlp_in=lin("mlp.up_proj", mlp),
                          mlp_out=lin("mlp.down_proj", mlp), norms=("input_layernorm", "post_attention_layernorm"),
                          n_head=c.num_attention_heads, head_size=hd, n_hidden=c.intermediate_size,
                          n_kv_head=c.num_key_value_heads, attention="self_attn", mlp="mlp")


class BertLayout(Layout):
    name = "bert"
    blocks_path = "bert.encoder.layer"
    sites = {"embedding": ("bert.embeddings.dropout", "p"), "attention": ("attention.self.dropout", "p"),
             "residual": ("attention.output.dropout", "p"), "mlp": ("output.dropout", "p")}
    head_paths = ("cls",)
    final_norm_path = "cls.predictions.transform.LayerNorm"  # post-norm blocks: the MLM head's norm
    embedding_path = "bert.embeddings"
    position_embedding = "bert.embeddings.position_embeddings.weight"

    def block_roles(self, c) -> BlockRoles:
        lin = lambda name: Weight(f"{name}.weight", 0, bias=f"{name}.bias")  # noqa: E731
        return BlockRoles(q=lin("attention.self.query"), k=lin("attention.self.key"), v=lin("attention.self.value"),
                          attn_out=lin("attention.output.dense"), mlp_in=lin("intermediate.dense"),
                          mlp_out=lin("output.dense"), norms=("attention.output.LayerNorm", "output.LayerNorm"),
                          n_head=c.num_attention_heads, head_size=c.hidden_size // c.num_attention_heads,
                          n_hidden=c.intermediate_size, attention="attention.self", mlp="output")


class ViTLayout(Layout):
    name = "vit"
    blocks_path = "vit.layers"
    sites = {"embedding": ("vit.embeddings.dropout", "p"), "attention": ("attention", "attention_dropout"),
             "residual": ("dropout", "p")}
    absent = {"mlp": "ViT's block applies one nn.Dropout after both the attention and the MLP branch: "
                     "the residual site sets it"}
    head_paths = ("vit.layernorm", "classifier")
    embedding_path = "vit.embeddings"
    token_embedding = "vit.embeddings.patch_embeddings.projection.weight"
    position_embedding = "vit.embeddings.position_embeddings"

    def tied_weight(self, hf: nn.Module):
        return None

    def block_roles(self, c) -> BlockRoles:
        qkv = getattr(c, "qkv_bias", True)
        lin = lambda name, bias=True: Weight(f"{name}.weight", 0, bias=f"{name}.bias" if bias else None)  # noqa: E731
        return BlockRoles(q=lin("attention.q_proj", qkv), k=lin("attention.k_proj", qkv),
                          v=lin("attention.v_proj", qkv), attn_out=lin("attention.o_proj"), mlp_in=lin("mlp.fc1"),
                          mlp_out=lin("mlp.fc2"), norms=("layernorm_before", "layernorm_after"),
                          n_head=c.num_attention_heads, head_size=c.hidden_size // c.num_attention_heads,
                          n_hidden=c.intermediate_size, attention="attention", mlp="mlp")

    def head(self, hf: nn.Module, h):
        return hf.classifier(hf.vit.layernorm(h)[:, 0, :])  # the [CLS] token, as ViTForImageClassification


LAYOUTS = {cls.name: cls for cls in (GPT2Layout, LlamaLayout, BertLayout, ViTLayout)}


def layout_for(family: str) -> Layout:
    return LAYOUTS[family]()
