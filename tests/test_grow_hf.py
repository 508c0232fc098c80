"""``grow`` on Hugging Face models through the protocol's weight roles (issue 22): function
preservation per family (FPI width, Net2Net, MSG at mask 0 — fp64), LiGO's one-hot init equal to copy
growth, the rules that differ from leantrain's GPT one by one (whole heads at a fixed head size,
grouped-query ratio, SwiGLU gate and up together, Conv1D storage, untied / tied heads, RMSNorm and
LayerNorm, BERT post-norm, ViT class token and patch embedding), renumbering after depth growth
(cached generate == uncached), and the trainer: every operator on every family grows, trains, resumes
bit-exactly and exports a directory ``from_pretrained`` loads with the same logits; under torchrun (2
gloo ranks) the replicas stay identical and resume exactly."""
import dataclasses
import math
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from leantrain import ConfigError, Recipe, Trainer  # noqa: E402
from leantrain.cli import main  # noqa: E402
from leantrain.core.loading import load_trained  # noqa: E402
from leantrain.methods.growth import roles as R  # noqa: E402
from leantrain.methods.growth.layout import load_tensors  # noqa: E402
from leantrain.models.hf import HFConfig, hf  # noqa: E402

from .conftest import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
V = 40


def family_config(family: str, d: int, layers: int, heads: int, **extra) -> dict:
    c = {"gpt2": {"model_type": "gpt2", "n_embd": d, "n_layer": layers, "n_head": heads, "n_positions": 32},
         "llama": {"model_type": "llama", "hidden_size": d, "intermediate_size": 2 * d, "num_hidden_layers": layers,
                   "num_attention_heads": heads, "num_key_value_heads": heads // 2, "max_position_embeddings": 32},
         "qwen2": {"model_type": "qwen2", "hidden_size": d, "intermediate_size": 2 * d, "num_hidden_layers": layers,
                   "num_attention_heads": heads, "num_key_value_heads": heads // 2, "max_position_embeddings": 32},
         "bert": {"model_type": "bert", "hidden_size": d, "intermediate_size": 2 * d, "num_hidden_layers": layers,
                  "num_attention_heads": heads, "max_position_embeddings": 32},
         "vit": {"model_type": "vit", "hidden_size": d, "intermediate_size": 2 * d, "num_hidden_layers": layers,
                 "num_attention_heads": heads, "patch_size": 4, "image_size": 8, "num_channels": 3,
                 "num_labels": 3}}[family]
    if family != "vit":
        c["vocab_size"] = V
    return c | extra


def build(family: str, d: int, layers: int, heads: int, seed: int = 0, trained: bool = True, **extra):
    """A tiny fp64 model; ``trained``: norms and biases moved off their init (so copies of them matter)."""
    torch.manual_seed(seed)
    m = hf(HFConfig(config=family_config(family, d, layers, heads, **extra), block_size=16)).double().eval()
    if trained:
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() == 1:
                    p.add_(0.2 * torch.randn_like(p))
    return m


def inputs(family: str):
    g = torch.Generator().manual_seed(1)
    if family == "vit":
        return torch.rand(2, 3, 8, 8, generator=g).double()
    return torch.randint(0, V, (2, 12), generator=g)


def logits(model, x):
    with torch.no_grad():
        return model(x)[0]


FAMILIES = ["gpt2", "llama", "qwen2", "bert", "vit"]
# Llama/Qwen2's RMSNorm computes in float32 whatever the model's dtype: agreement to float32 precision
TOL = {"llama": 1e-6, "qwen2": 1e-6}


def grown(op, family, src_shape=(16, 2, 2), tgt_shape=(32, 4, 4), **kw):
    src, tgt = build(family, *src_shape), build(family, *tgt_shape, seed=1)
    ls, lt = R.role_layout(src), R.role_layout(tgt)
    if op == "msg":
        out, order = R.msg_grow(ls, lt, R.source_tensors(src), generator=torch.Generator().manual_seed(0))
    else:
        out = R.grow_copy(op, ls, lt, R.source_tensors(src), mapping="cyclic", **kw)
    load_tensors(tgt, out)
    return src, tgt, ls


# ------------------------------------------------------------------------ function preservation
@pytest.mark.parametrize("family", FAMILIES)
def test_fpi_width_net2net_and_msg_at_mask_0_equal_the_source(family):
    x = inputs(family)
    tol = TOL.get(family, 1e-10)
    src, wide, _ = grown("fpi", family, tgt_shape=(32, 2, 4))  # FPI: width (then depth by stacking, not exact)
    assert (logits(wide, x) - logits(src, x)).abs().max() < tol
    _, net, _ = grown("net2net", family)  # Net2Net wider and deeper (identity blocks)
    if family != "bert":  # post-norm: a zero-output block is LN(x), not x (only MSG's form is exact there)
        assert (logits(net, x) - logits(src, x)).abs().max() < tol
    _, msg, ls = grown("msg", family)
    masks = R.RoleMasks(ls.summary(), 0.0)
    masks.attach(msg)
    assert (logits(msg, x) - logits(src, x)).abs().max() < tol
    masks.set_value(0.5)  # the new structure enters: the function moves (so the check above can fail)
    assert (logits(msg, x) - logits(src, x)).abs().max() > 1e-4
    masks.detach()
    _, deep, _ = grown("fpi", family)
    assert (logits(deep, x) - logits(src, x)).abs().max() > 1e-4  # stacked depth is not function-preserving


def test_net2net_deeper_on_post_norm_bert_is_not_the_identity():
    src, net, _ = grown("net2net", "bert")
    x = inputs("bert")
    assert (logits(net, x) - logits(src, x)).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_ligo_one_hot_init_equals_copy_growth(family):
    src, tgt = build(family, 16, 2, 2), build(family, 32, 4, 4, seed=1)
    ls, lt = R.role_layout(src), R.role_layout(tgt)
    op = R.RoleLiGO(ls, lt, R.source_tensors(src), depth_init="stackbert", width_init="sel", noise=0.0,
                    generator=torch.Generator().manual_seed(0))
    out, maps = op.materialize(), R.Maps(op.copy_maps())
    tensors = R.source_tensors(src)
    probe = dataclasses.replace(ls, axes=dict(ls.axes), shapes=dict(ls.shapes))
    for name, v in out.items():
        if name in lt.block_of:  # target block j: source block j mod 2 through block j's maps
            j, inner = lt.block_of[name]
            sname = ls.block_name(j % 2, inner)
            probe.axes[name] = tuple(R.Axis(a.spaces, None if a.block is None else j, a.is_in)
                                     for a in ls.axes[sname])
            probe.shapes[name] = ls.shapes[sname]
            want = R.widen(probe, name, tensors[sname], maps)
        else:
            want = R.widen(ls, name, tensors[name], maps)
        assert torch.equal(v, want), name
    # the default init mixes: not a copy
    mixed = R.RoleLiGO(ls, lt, tensors, generator=torch.Generator().manual_seed(0)).materialize()
    assert any(not torch.equal(mixed[n], out[n]) for n in out)


@pytest.mark.parametrize("family", FAMILIES)
def test_mango_init_is_fpi_plus_stacking_and_rank_1_is_its_mode_products(family):
    src, tgt = build(family, 16, 2, 2), build(family, 32, 4, 4, seed=1)
    ls, lt = R.role_layout(src), R.role_layout(tgt)
    tensors = R.source_tensors(src)
    for rank in (1, 2):
        op = R.RoleMango(ls, lt, tensors, rank=rank, noise=0.0, generator=torch.Generator().manual_seed(0))
        got, want = op.materialize(), R.grow_copy("fpi", ls, lt, tensors, maps=op.maps)
        assert set(got) == set(want)
        assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-8
    op = R.RoleMango(ls, lt, tensors, rank=1, generator=torch.Generator().manual_seed(0))  # noisy cores
    for gk in op.groups:
        ins, outs = gk.split("__")
        m = lambda c: c[0, ..., 0]  # noqa: E731 — a rank-1 core is a matrix
        modes = torch.einsum("bIOL,bc,Ii,Oo,Ll->ciol",
                             getattr(op, f"m1_{gk}"), m(op.s_b[gk]), m(op._core(op.s_in, ins, True)),
                             m(op._core(op.s_out, outs, False)), m(op.s_l))
        assert (op._m2(gk) - modes).abs().max() < 1e-10, gk
    assert all(not torch.equal(op.materialize()[k], want[k]) for k in want if k in lt.block_of and
               lt.kinds[k] == "linear")


# ------------------------------------------------------------------------------ the rules
def test_roles_cover_conv1d_storage_gqa_swiglu_and_module_kinds():
    gpt2 = R.role_layout(build("gpt2", 16, 1, 2))
    qkv = gpt2.axes["hf.transformer.h.0.attn.c_attn.weight"]
    assert qkv[0] == R.Axis(("embd",), 0, True) and qkv[1].spaces == ("q", "k", "v")  # Conv1D: (in, out)
    llama = R.role_layout(build("llama", 16, 1, 2))
    assert llama.dims[0].n_kv_head == 1 and llama.dims[0].groups == 2
    assert llama.axes["hf.lm_head.weight"] == (R.Axis(), R.Axis(("embd",), is_in=True))  # untied head
    vit = R.role_layout(build("vit", 16, 1, 2))
    assert vit.axes["hf.vit.embeddings.cls_token"][-1].spaces == ("embd",)
    patch = vit.axes["hf.vit.embeddings.patch_embeddings.projection.weight"]
    assert patch[0].spaces == ("embd",) and not patch[1].spaces  # output channels grow, image channels stay


def test_gqa_grows_query_and_kv_heads_in_their_ratio_and_swiglu_gate_and_up_together():
    src, tgt, ls = grown("fpi", "llama", tgt_shape=(32, 2, 4))
    hs = 8
    s, t = R.source_tensors(src), R.source_tensors(tgt)
    p = "hf.model.layers.0."
    # cyclic map: target kv head 1 copies source kv head 0, and its two query heads source query heads 0, 1
    assert torch.equal(t[p + "self_attn.k_proj.weight"][hs:2 * hs, :16], s[p + "self_attn.k_proj.weight"][:hs] / 2)
    assert torch.equal(t[p + "self_attn.q_proj.weight"][2 * hs:4 * hs, :16], s[p + "self_attn.q_proj.weight"] / 2)
    assert torch.equal(t[p + "mlp.gate_proj.weight"][32:, :16], s[p + "mlp.gate_proj.weight"] / 2)
    assert torch.equal(t[p + "mlp.up_proj.weight"][32:, :16], s[p + "mlp.up_proj.weight"] / 2)
    lt = R.role_layout(build("llama", 32, 2, 4, num_key_value_heads=4))  # ratio 4:4 ≠ the source's 2:1
    with pytest.raises(ConfigError, match="ratio 2:1"):
        R.grow_copy("fpi", ls, lt, s)
    lt = R.role_layout(build("llama", 32, 2, 2))  # head size 16 ≠ 8
    with pytest.raises(ConfigError, match="fixed|head size 8"):
        R.grow_copy("fpi", ls, lt, s)
    with pytest.raises(ConfigError, match="depth only"):
        R.grow_copy("gstack", ls, R.role_layout(build("llama", 32, 4, 4)), s)
    with pytest.raises(ConfigError, match="axis 0"):  # another vocabulary
        R.grow_copy("fpi", ls, R.role_layout(build("llama", 32, 2, 4, vocab_size=V + 1)), s)
    with pytest.raises(ConfigError, match="same family"):
        R.grow_copy("fpi", ls, R.role_layout(build("gpt2", 32, 2, 4)), s)


def test_tied_head_keeps_the_function_through_the_divided_final_norm():
    src, tgt = build("llama", 16, 2, 2, tie_word_embeddings=True), build("llama", 32, 2, 4, 1, tie_word_embeddings=True)
    ls, lt = R.role_layout(src), R.role_layout(tgt)
    assert ls.roles.tied and "hf.lm_head.weight" not in ls.shapes
    load_tensors(tgt, R.grow_copy("fpi", ls, lt, R.source_tensors(src), mapping="cyclic"))
    x = inputs("llama")
    assert (logits(tgt, x) - logits(src, x)).abs().max() < 1e-6


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_after_depth_growth_layers_are_renumbered_and_cached_generate_equals_uncached(family):
    extra = {"use_sliding_window": True, "sliding_window": 4, "layer_types": ["full_attention", "sliding_attention"]}
    src = build(family, 16, 2, 2, **(extra if family == "qwen2" else {}))
    tgt = build(family, 16, 4, 2, seed=1, **({**extra, "layer_types": extra["layer_types"] * 2}
                                            if family == "qwen2" else {}))
    load_tensors(tgt, R.grow_copy("gstack", R.role_layout(src), R.role_layout(tgt), R.source_tensors(src)))
    assert tgt.hf.config.num_hidden_layers == 4
    assert [b.self_attn.layer_idx for b in tgt.blocks] == [0, 1, 2, 3]
    prompt = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(0))
    a = tgt.generate(prompt, 6, generator=torch.Generator().manual_seed(3))
    b = tgt.generate(prompt, 6, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ the trainer
TEXT = (ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt").read_text()[:20000]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    f = tmp_path_factory.mktemp("text") / "small.txt"
    f.write_text(TEXT)
    return f


def recipe(text, cfg: dict, grow: dict | None = None, steps: int = 6) -> dict:
    return {"data": {"path": str(text)}, "model": {"name": "hf", "config": cfg, "block_size": 16},
            "train": {"max_steps": steps, "batch_size": 4, "warmup_steps": 1, "eval_interval": 3, "eval_iters": 2,
                      "log_interval": 1},
            "methods": [] if grow is None else [{"name": "grow", **grow}]}


def fit(d, out, until=None, resume=None):
    return Trainer(Recipe.from_dict(d), out, resume=resume, overwrite=resume is None, verbose=False,
                   progress=False).fit(until=until)


def text_config(family, d, layers, heads):
    c = family_config(family, d, layers, heads)
    c.pop("vocab_size", None)  # the data's
    return c


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory, text):
    run = tmp_path_factory.mktemp("src") / "llama"
    fit(recipe(text, text_config("llama", 16, 1, 2), steps=4), run)
    return run


def assert_same_run(a: Path, b: Path, what: str) -> None:
    """Bit for bit: every logged train / val loss and the final weights."""
    for key in ("train_loss", "val_loss"):
        assert [r.get(key) for r in read_metrics(a)] == [r.get(key) for r in read_metrics(b)], f"{what}: {key}"
    wa, wb = load_trained(a).model.state_dict(), load_trained(b).model.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"{what}: the final weights differ"


GROW = {"mango": {"operator_steps": 2}, "fpi": {}, "aki": {}, "net2net": {}, "msg": {"ramp_steps": 3},
        "ligo": {"operator_steps": 2},
        "stackbert": {}, "gstack": {}}


@pytest.mark.parametrize("op", list(GROW))
def test_every_operator_grows_a_llama_run_trains_resumes_and_exports(op, llama_source, text, tmp_path):
    import transformers
    depth_only = op in ("stackbert", "gstack")
    tgt = text_config("llama", 16 if depth_only else 32, 2, 2 if depth_only else 4)
    d = recipe(text, tgt, {"operator": op, "source": str(llama_source), **GROW[op]})
    full = fit(d, tmp_path / "full")
    fit(d, tmp_path / "part", until=3)
    resumed = fit(d, tmp_path / "part", resume=tmp_path / "part")  # the source is not read again
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert resumed["train_flops"] == full["train_flops"] > 0
    assert_same_run(tmp_path / "full", tmp_path / "part", op)
    out = tmp_path / "exported"
    assert main(["export", "--ckpt", str(tmp_path / "full"), "--format", "hf", "--out", str(out)]) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ours = load_trained(tmp_path / "full").model
    x = torch.randint(0, ours.hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, ours(x)[0])
    assert loaded.config.num_hidden_layers == 2


def test_function_preserving_growth_starts_at_the_source_loss(llama_source, text, tmp_path):
    from leantrain.cli import evaluate_checkpoint
    src = evaluate_checkpoint(llama_source)["val_loss"]  # the whole split, as grow scores the grown model
    d = recipe(text, text_config("llama", 32, 2, 4), {"operator": "msg", "source": str(llama_source),
                                                        "ramp_steps": 3, "eval_after_growth": True}, steps=4)
    fit(d, tmp_path / "msg")
    rows = [json.loads(line) for line in (tmp_path / "msg" / "metrics.jsonl").read_text().splitlines()]
    after = next(r["grow/val_loss_after_growth"] for r in rows if "grow/val_loss_after_growth" in r)
    assert after == pytest.approx(src, abs=2e-5)


@pytest.mark.parametrize("family,op", [("gpt2", "fpi"), ("gpt2", "msg"), ("qwen2", "net2net"), ("bert", "aki"),
                                       ("bert", "ligo")])
def test_other_families_grow_in_the_trainer(family, op, text, tmp_path):
    fit(recipe(text, text_config(family, 16, 1, 2), steps=3), tmp_path / "src")
    d = recipe(text, text_config(family, 32, 2, 4), {"operator": op, "source": str(tmp_path / "src"), **GROW[op]},
               steps=4)
    s = fit(d, tmp_path / "grown")
    assert s["final_val_loss"] < 10


def test_a_save_pretrained_directory_is_a_source_and_carry_is_refused(text, tmp_path):
    src = build("gpt2", 16, 1, 2, trained=False)
    src.hf.config.vocab_size = V
    vocab = len(set(TEXT[: int(0.9 * len(TEXT))]) | set(TEXT))
    model = hf(HFConfig(config=family_config("gpt2", 16, 1, 2, vocab_size=vocab), block_size=16))
    model.hf.save_pretrained(tmp_path / "pretrained")
    d = recipe(text, text_config("gpt2", 32, 2, 4), {"operator": "fpi", "source": str(tmp_path / "pretrained")},
               steps=3)
    s = fit(d, tmp_path / "grown")
    assert s["final_val_loss"] < 10
    with pytest.raises(ConfigError, match="carry is implemented for gpt only"):
        fit(recipe(text, text_config("gpt2", 16, 2, 2), {"operator": "stackbert", "optimizer_state": "carry",
                                                         "source": str(tmp_path / "pretrained")}), tmp_path / "carry")
    assert not (tmp_path / "carry").exists()
    # Mango's function-preserving init (issue 21) is gpt-only too: refused before anything is written
    with pytest.raises(ConfigError, match="init: function_preserving is implemented for gpt only"):
        fit(recipe(text, text_config("gpt2", 32, 2, 4), {"operator": "mango", "init": "function_preserving",
                                                         "mapping": "cyclic", "operator_steps": 1,
                                                         "source": str(tmp_path / "pretrained")}), tmp_path / "fp")
    assert not (tmp_path / "fp").exists()


# ------------------------------------------------------------------ the table: family × operator
AUTO = {"bert": "AutoModelForMaskedLM", "vit": "AutoModelForImageClassification"}
OPERATORS = ["mango", "ligo", "fpi", "aki", "stackbert", "gstack", "msg", "net2net"]
TABLE_GROW = {**GROW, "mango": {"operator_steps": 1}, "ligo": {"operator_steps": 1}, "msg": {"ramp_steps": 1}}


def family_recipe(family, text, tmp, cfg, grow=None, steps=2):
    from .hf_settings import image_npz
    d = recipe(text, cfg, grow, steps)
    d["train"] |= {"eval_interval": steps, "eval_iters": 1}
    if family == "vit":
        d["data"] = {"name": "npz", "path": image_npz(tmp / "img.npz")}
        d["model"]["config"] = {k: v for k, v in cfg.items() if k not in ("image_size", "num_channels", "num_labels")}
    return d


@pytest.fixture(scope="module")
def family_sources(tmp_path_factory, text):
    """Per family: a narrow source (width operators) and a same-width shallow one (depth operators)."""
    out = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(family)
        for name, shape in (("narrow", (16, 1, 2)), ("shallow", (32, 1, 4))):
            fit(family_recipe(family, text, root, text_config(family, *shape), steps=2), root / name)
        out[family] = root
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_operator_on_every_family_grows_trains_resumes_exactly_and_exports(family, family_sources, text,
                                                                                 tmp_path):
    """The issue's table: (GPT-2, Llama, Qwen2, BERT, ViT) × every operator. Each run is also stopped
    after step 1 and resumed — for LiGO and Mango from a checkpoint inside the operator phase, which
    ends as the resumed run starts (BERT × LiGO drifted by one ulp until checkpointed method tensors
    were loaded into fresh, aligned memory: ``checkpoint.method_tensors``) — and must equal the
    uninterrupted run bit for bit."""
    import transformers
    auto = getattr(transformers, AUTO.get(family, "AutoModelForCausalLM"))
    root = family_sources[family]
    for op in OPERATORS:
        source = root / ("shallow" if op in ("stackbert", "gstack") else "narrow")
        d = family_recipe(family, text, root, text_config(family, 32, 2, 4),
                          {"operator": op, "source": str(source), **TABLE_GROW[op]}, steps=3)
        s = fit(d, tmp_path / op)
        assert math.isfinite(s["final_val_loss"]), op
        fit(d, tmp_path / f"{op}_part", until=1)
        resumed = fit(d, tmp_path / f"{op}_part", resume=tmp_path / f"{op}_part")
        assert resumed["final_val_loss"] == s["final_val_loss"] and resumed["train_flops"] == s["train_flops"], op
        assert_same_run(tmp_path / op, tmp_path / f"{op}_part", f"{family}/{op}")
        out = tmp_path / f"{op}_hf"
        assert main(["export", "--ckpt", str(tmp_path / op), "--format", "hf", "--out", str(out)]) == 0
        loaded = auto.from_pretrained(out, local_files_only=True).eval()
        ours = load_trained(tmp_path / op).model
        x = (torch.rand(2, 3, 8, 8) if family == "vit" else
             torch.randint(0, ours.hf.config.vocab_size - 1, (2, 12), generator=torch.Generator().manual_seed(0)))
        kwargs = {"pixel_values": x} if family == "vit" else {"input_ids": x}
        with torch.no_grad():
            assert torch.equal(loaded(**kwargs).logits, ours(x)[0]), op
        assert loaded.config.num_hidden_layers == 2


@pytest.mark.parametrize("case, message", [
    ("gpt_source", "holds a 'gpt' model; grow maps a model into one of the same kind ('hf')"),
    ("other_family", "the source's blocks are hf.model.layers, the target's hf.transformer.h"),
    ("head_size", "at the source's head size 8"),
    ("shrink", "cannot shrink the source's width 32 to 16"),
])
def test_bad_growth_input_is_one_line_exit_2_before_anything_is_written(case, message, llama_source, text, tmp_path,
                                                                         capsys):
    import yaml
    source, target = str(llama_source), text_config("llama", 32, 2, 4)
    if case == "gpt_source":
        fit({"data": {"path": str(text)}, "model": {"n_layer": 1, "n_head": 1, "n_embd": 16, "block_size": 16},
             "train": {"max_steps": 1, "eval_interval": 1, "eval_iters": 1, "batch_size": 2}}, tmp_path / "gpt")
        source = str(tmp_path / "gpt")
    elif case == "other_family":
        target = text_config("gpt2", 32, 2, 4)
    elif case == "head_size":
        target = text_config("llama", 32, 2, 2)
    elif case == "shrink":
        fit(recipe(text, text_config("llama", 32, 1, 4), steps=1), tmp_path / "wide")
        source, target = str(tmp_path / "wide"), text_config("llama", 16, 2, 2)
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(recipe(text, target, {"operator": "fpi", "source": source})))
    out = tmp_path / "out"
    code = main(["train", "--recipe", str(f), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_grow_on_hf_under_ddp_keeps_replicas_identical_and_resumes_exactly(llama_source, text, tmp_path):
    """One 2-rank gloo launch: a tiny Llama grown 16×1 → 32×2 by two trained operators (stopped inside
    their phase) and a copy operator with noise (Net2Net; stopped after the growth). The ranks draw
    different batches, so equal digests before DDP's broadcast show the operator's gradients were
    averaged and the copy drew the same noise on every rank."""
    import os
    import subprocess
    import sys
    target = text_config("llama", 32, 2, 4)
    ops = {"mango": (2, 1), "ligo": (2, 1), "net2net": (None, 2)}  # operator: (phase steps, stop step)
    specs = {op: {"phase": phase, "stop": stop,
                  "recipe": recipe(text, target, {"operator": op, "source": str(llama_source),
                                                  **({"operator_steps": phase} if phase else {})}, steps=4)}
             for op, (phase, stop) in ops.items()}
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "tests" / "ddp_grow_worker.py"), str(tmp_path), str(tmp_path / "specs.json")],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    hashes = [json.loads((tmp_path / f"hashes_rank{r}.json").read_text()) for r in (0, 1)]
    for op in ops:
        grown, end, resumed_end = hashes[0][op]
        assert hashes[0][op] == hashes[1][op], f"{op}: the replicas differ"
        assert resumed_end == end, f"{op}: the resumed run's weights differ"
        assert_same_run(tmp_path / op / "full", tmp_path / op / "part", op)
        summary = json.loads((tmp_path / op / "full" / "summary.json").read_text())
        assert summary["world_size"] == 2
