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

SITES = ("embedding", "attention", "residual", "mlp")


class Layout:
    name = ""
    blocks_path = ""
    layers_key = "num_hidden_layers"
    # site -> path inside a block (or inside the model for "embedding"), attribute ("p" of an
    # nn.Dropout, or a float attribute); None = absent, with the reason in ``absent``.
    sites: dict[str, tuple[str, str]] = {}
    absent: dict[str, str] = {}
    head_paths: tuple[str, ...] = ()
    positions_key = "max_position_embeddings"

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

    # -- dropout
    def dropout_sites(self) -> dict[str, str | None]:
        return {s: None if s in self.sites else self.absent.get(s, "not in this layout") for s in SITES}

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


class GPT2Layout(Layout):
    name = "gpt2"
    blocks_path = "transformer.h"
    sites = {"embedding": ("transformer.drop", "p"), "attention": ("attn.attn_dropout", "p"),
             "residual": ("attn.resid_dropout", "p"), "mlp": ("mlp.dropout", "p")}
    head_paths = ("transformer.ln_f", "lm_head")
    positions_key = "n_positions"


class LlamaLayout(Layout):
    name = "llama"
    blocks_path = "model.layers"
    sites = {"attention": ("self_attn", "attention_dropout")}
    absent = {s: "Llama-layout decoders have no nn.Dropout modules (only the attention probabilities' "
                 "attention_dropout)" for s in ("embedding", "residual", "mlp")}
    head_paths = ("model.norm", "lm_head")


class BertLayout(Layout):
    name = "bert"
    blocks_path = "bert.encoder.layer"
    sites = {"embedding": ("bert.embeddings.dropout", "p"), "attention": ("attention.self.dropout", "p"),
             "residual": ("attention.output.dropout", "p"), "mlp": ("output.dropout", "p")}
    head_paths = ("cls",)


class ViTLayout(Layout):
    name = "vit"
    blocks_path = "vit.layers"
    sites = {"embedding": ("vit.embeddings.dropout", "p"), "attention": ("attention", "attention_dropout"),
             "residual": ("dropout", "p")}
    absent = {"mlp": "ViT's block applies one nn.Dropout after both the attention and the MLP branch: "
                     "the residual site sets it"}
    head_paths = ("vit.layernorm", "classifier")

    def head(self, hf: nn.Module, h):
        return hf.classifier(hf.vit.layernorm(h)[:, 0, :])  # the [CLS] token, as ViTForImageClassification


LAYOUTS = {cls.name: cls for cls in (GPT2Layout, LlamaLayout, BertLayout, ViTLayout)}


def layout_for(family: str) -> Layout:
    return LAYOUTS[family]()
