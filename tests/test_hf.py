"""model: {name: hf}: tiny offline transformers configs (GPT-2, Llama, Qwen2, BERT, ViT) as leantrain
models — the traps of shared/specs/models.md, the methods on every family, resume, export."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from leantrain import Recipe, Trainer  # noqa: E402
from leantrain.cli import evaluate_checkpoint, main, sample_text  # noqa: E402
from leantrain.data import DataInfo  # noqa: E402
from leantrain.data.masking import mask_tokens  # noqa: E402
from leantrain.errors import ConfigError, LeantrainError  # noqa: E402
from leantrain.measure import measure_step  # noqa: E402
from leantrain.methods.progressive.stacking import stack_blocks  # noqa: E402
from leantrain.models.hf import HFConfig, hf  # noqa: E402
from leantrain.models.protocol import BlockPlan, adapt  # noqa: E402

from .conftest import read_metrics  # noqa: E402
from .hf_settings import FAMILIES, METHODS, hf_recipe, image_npz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("gpt2", "llama", "qwen2", "bert")


def build(family: str, seed: int = 0, **changes):
    cfg = HFConfig(config={**copy.deepcopy(FAMILIES[family]), **changes}, block_size=16)
    cfg.validate()
    info = (DataInfo("classification", input_shape=(3, 8, 8), num_classes=4) if family == "vit"
            else DataInfo("lm", vocab_size=40))
    cfg.adapt_to_data(info)
    torch.manual_seed(seed)
    return hf(cfg)


def batch(family: str, seed: int = 1, B: int = 2):
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return torch.randn(B, 3, 8, 8, generator=g), torch.randint(4, (B,), generator=g)
    x = torch.randint(40, (B, 16), generator=g)
    return x, torch.randint(40, (B, 16), generator=g)


# ----------------------------------------------------------------------------------- building
def test_import_leantrain_does_not_import_transformers():
    code = ("import sys, leantrain; from leantrain.registry import list_models; "
            "assert 'hf' in list_models(); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_path_loads_a_save_pretrained_dir_offline_and_bad_configs_are_one_line_errors(tmp_path):
    model = build("llama")
    model.hf.save_pretrained(tmp_path / "llama")
    cfg = HFConfig(path=str(tmp_path / "llama"), block_size=16)
    cfg.validate()
    cfg.adapt_to_data(DataInfo("lm", vocab_size=40))
    loaded = hf(cfg)
    x, _ = batch("llama")
    assert torch.equal(loaded.eval()(x)[0], model.eval()(x)[0])
    with pytest.raises(ConfigError, match="vocab_size is 40, but the data's vocabulary needs ≥ 65"):
        cfg.adapt_to_data(DataInfo("lm", vocab_size=65))
    with pytest.raises(ConfigError, match="no config.json"):
        HFConfig(path=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="'t5' has no leantrain adapter"):
        HFConfig(config={"model_type": "t5"}).validate()
    with pytest.raises(ConfigError, match="exactly one of path"):
        HFConfig().validate()


def test_a_model_that_cannot_take_the_data_is_a_one_line_error(tmp_path, capsys):
    npz = image_npz(tmp_path / "img.npz")
    vit = {"name": "hf", "config": FAMILIES["vit"]}
    gpt2 = {"name": "hf", "config": FAMILIES["gpt2"]}
    for data, model, msg in (({}, vit, "model 'hf' consumes labelled arrays (classification), but data 'text' is token"),
                             ({"name": "npz", "path": npz}, gpt2, "model 'hf' consumes token sequences (language"),
                             ({"name": "mnist1d", "num_samples": 200}, vit, "classifies square images")):
        recipe = tmp_path / "r.json"
        recipe.write_text(json.dumps({"data": data, "model": model}))
        assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_a_new_model_type_joins_an_existing_layout(tmp_path):
    from leantrain.models.hf import FAMILIES as KNOWN
    from leantrain.models.hf import register_hf_family
    qwen3 = {"model_type": "qwen3", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
    recipe = lambda: Recipe.from_dict({**hf_recipe("llama", tmp_path, [METHODS["raptr_width"]], steps=4),  # noqa: E731
                                       "model": {"name": "hf", "config": dict(qwen3), "block_size": 16}})
    with pytest.raises(ConfigError, match="'qwen3' has no leantrain adapter"):
        recipe()
    register_hf_family("qwen3", "llama", "causal_lm")  # Qwen3: the Llama layout (+ q/k norms)
    try:
        assert Trainer(recipe(), None, verbose=False).fit()["train_flops"] > 0
    finally:
        del KNOWN["qwen3"]


def test_task_follows_the_architecture():
    assert [HFConfig(config=FAMILIES[f]).task for f in FAMILIES] == [
        "causal_lm", "causal_lm", "causal_lm", "masked_lm", "image_classification"]
    assert type(build("bert").hf).__name__ == "BertForMaskedLM"
    assert type(build("vit").hf).__name__ == "ViTForImageClassification"


# ----------------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("family", list(FAMILIES))
def test_empty_plan_is_the_untouched_model_and_skipped_blocks_get_no_gradient(family):
    model = build(family).train()
    reference = copy.deepcopy(model.hf)  # the same weights, as a plain transformers model
    x, y = batch(family)
    untouched = type(reference).forward  # the class forward: no rebinding involved
    kwargs = {"pixel_values": x} if family == "vit" else {"input_ids": x, "use_cache": False}
    for b in model.layout.blocks(reference):  # drop the rebound forwards the deepcopy carried
        b.__dict__.pop("forward", None)
    torch.manual_seed(0)
    ref = untouched(reference, **kwargs).logits
    torch.manual_seed(0)
    assert torch.equal(model(x)[0], ref)
    model.plan = [BlockPlan(i) for i in range(4)]  # every block, scale 1: the same
    torch.manual_seed(0)
    assert torch.equal(model(x)[0], ref)

    model.plan = [BlockPlan(0), BlockPlan(3, scale=2.0)]
    loss = model(x, y)[1]
    loss.backward()
    for i, block in enumerate(model.blocks):
        grads = [p.grad for p in block.parameters()]
        if i in (1, 2):
            assert all(g is None for g in grads), f"skipped block {i} got a gradient"
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()  # evaluation runs the full model whatever the plan
    assert torch.equal(model(x)[0], untouched(reference.eval(), **kwargs).logits)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_flops_and_saved_bytes_fall_with_the_kept_fraction(family):
    model = build(family).train()
    x, y = batch(family, B=4)

    def step():
        loss = model(x, y)[1]
        loss.backward()
        return loss
    full = measure_step(step, list(model.parameters()))
    model.plan = [BlockPlan(0), BlockPlan(3)]
    half = measure_step(step, list(model.parameters()))
    assert model.shape_key() != (4,)
    assert 0.3 < half[0] / full[0] < 0.75  # blocks halve; embedding and head stay
    assert half[1] < full[1]
    groups, hidden = model.width_units(0)
    model.plan = [BlockPlan(i, heads=torch.arange(groups // 2), hidden=torch.arange(hidden // 2)) for i in range(4)]
    narrow = measure_step(step, list(model.parameters()))
    assert 0.3 < narrow[0] / full[0] < 0.8  # the blocks' matmuls on half the heads and units


def test_qwen2_layer_types_follow_the_blocks_after_a_depth_change():
    model = build("qwen2").eval()
    x, _ = batch("qwen2")
    kept = [model.blocks[1], model.blocks[3]]  # both sliding-window layers
    adapt(model).set_blocks(kept)
    assert model.hf.config.layer_types == ["sliding_attention"] * 2
    assert model.hf.config.num_hidden_layers == 2
    # reference: a fresh 2-layer Qwen2 of sliding layers holding the same weights
    ref = build("qwen2", num_hidden_layers=2, layer_types=["sliding_attention"] * 2).eval()
    ref.load_state_dict(model.state_dict())
    assert torch.equal(model(x)[0], ref(x)[0])
    # the trap: the same blocks with the layer-type list left alone read the full-attention mask
    model.hf.config.layer_types = ["full_attention", "sliding_attention"]
    wrong = model.hf(input_ids=x, use_cache=False).logits
    assert not torch.allclose(wrong, ref(x)[0], atol=1e-3)


def test_llama_runs_appended_blocks_and_cached_generate_equals_uncached_after_stacking():
    for family in ("llama", "gpt2", "qwen2"):
        model = build(family)
        copies = stack_blocks(model, 6, "copy_top")
        assert copies == {4: 2, 5: 3}
        assert [b.self_attn.layer_idx if family != "gpt2" else b.attn.layer_idx for b in model.blocks] == list(range(6))
        assert model.hf.config.num_hidden_layers == 6
        ran = []
        hook = model.blocks[5].register_forward_hook(lambda *a: ran.append(1))
        x, _ = batch(family)
        model.eval()(x)
        hook.remove()
        assert ran, f"{family}: an appended block did not run"
        prompt = x[:1, :5]
        kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
        cached = model.hf.generate(prompt, use_cache=True, **kw)
        assert torch.equal(cached, model.hf.generate(prompt, use_cache=False, **kw)), family
        g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        assert torch.equal(model.generate(prompt, 8, generator=g()), model.generate(prompt, 8, generator=g(), use_cache=False))
        adapt(model).set_blocks([model.blocks[i] for i in (5, 1, 2)])  # cut and reordered
        assert torch.equal(model.hf.generate(prompt, use_cache=True, **kw), model.hf.generate(prompt, use_cache=False, **kw))


# ----------------------------------------------------------------------------------- protocol facts
def test_dropout_sites_are_reported_and_absent_ones_refused():
    llama, gpt2, vit = build("llama"), build("gpt2"), build("vit")
    assert list(adapt(llama).dropout_sites()) == ["attention"]
    assert set(llama.dropout_absent()) == {"embedding", "residual", "mlp"}
    assert "no nn.Dropout" in llama.dropout_absent()["mlp"]
    with pytest.raises(KeyError, match="no 'mlp' dropout site"):
        llama.set_dropout(0.1, "mlp")
    llama.set_dropout(0.2, "attention", 1)
    assert llama.dropout_rates()["attention"] == [0.0, 0.2, 0.0, 0.0]
    assert llama.blocks[1].self_attn.attention_dropout == 0.2
    gpt2.set_dropout(0.3)
    assert gpt2.hf.transformer.drop.p == 0.3 and gpt2.blocks[2].mlp.dropout.p == 0.3
    assert set(adapt(vit).dropout_sites()) == {"embedding", "attention", "residual"}
    x, _ = batch("gpt2")
    gpt2.train()
    assert not torch.equal(gpt2(x)[0], gpt2(x)[0])  # dropout reads the rate at call time


def test_weight_roles_describe_conv1d_transposed_storage_and_grouped_query_attention():
    g = build("gpt2").weight_roles()
    assert g.tied and g.blocks[0].qkv.transposed and g.blocks[0].qkv.parts == ("q", "k", "v")
    assert build("gpt2").blocks[0].attn.c_attn.weight.shape == (32, 96)  # (in, out)
    ll = build("llama")
    r = ll.weight_roles()
    assert not r.tied and r.blocks[0].kv_groups == 2 and r.blocks[0].mlp_gate is not None
    assert ll.blocks[0].self_attn.k_proj.weight.shape == (16, 32)  # 2 KV heads × head size 8
    for family in FAMILIES:
        m = build(family)
        roles, names = m.weight_roles(), dict(m.named_parameters(remove_duplicate=False))
        for i, b in enumerate(roles.blocks):
            for w in (b.qkv, b.q, b.k, b.v, b.attn_out, b.mlp_in, b.mlp_out, b.mlp_gate):
                for n in (w.name, w.bias) if w is not None else ():
                    assert n is None or f"{roles.block_prefix}.{i}.{n}" in names, (family, n)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_units_compose_to_the_forward_and_a_cut_isolates_gradients(family):
    model = build(family).eval()
    x, y = batch(family)
    units = adapt(model).local_units((3, 8, 8) if family == "vit" else (16,))
    h = x
    for unit in units.modules:
        h = unit(h)
    assert torch.equal(h, model(x)[0])  # masks, rotary embeddings reach every unit
    assert sum(map(len, units.params)) == len(list(model.parameters()))
    model.train()
    h = units.modules[0](x)
    h = units.modules[1](h).detach()  # a cut after block 0
    for unit in units.modules[2:]:
        h = unit(h)
    torch.nn.functional.cross_entropy(h.reshape(-1, h.size(-1)), y.reshape(-1)).backward()
    # (a tied output head trains the token table through the last module, as in leantrain's GPT)
    assert all(p.grad is None for p in units.params[0] + units.params[1] if p is not units.tied_head_weight)
    assert all(p.grad is not None for p in units.params[2])


# ----------------------------------------------------------------------------------- masked LM
def test_mlm_masking_is_bert_s_and_seeded():
    x = torch.randint(50, (400, 64), generator=torch.Generator().manual_seed(0))
    inputs, targets = mask_tokens(x, 0.15, 50, 50, torch.Generator().manual_seed(1))
    selected = targets != -100
    assert abs(selected.float().mean().item() - 0.15) < 0.01
    assert torch.equal(targets[selected], x[selected]) and selected.any(1).all()
    as_mask = (inputs == 50)[selected].float().mean().item()
    kept = (inputs == x)[selected].float().mean().item()
    assert abs(as_mask - 0.8) < 0.02 and 0.08 < kept < 0.13  # 10% kept (+ random draws of the same id)
    assert torch.equal(inputs[~selected], x[~selected])
    again = mask_tokens(x, 0.15, 50, 50, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)


# ----------------------------------------------------------------------------------- the table
CASES = [(f, m) for f in FAMILIES for m in METHODS]


@pytest.mark.parametrize("family,method", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_every_method_trains_and_resumes_exactly_on_every_family(family, method, tmp_path):
    recipe = lambda: Recipe.from_dict(hf_recipe(family, tmp_path, [METHODS[method]]))  # noqa: E731
    full = Trainer(recipe(), tmp_path / "full", verbose=False, progress=False).fit()
    Trainer(recipe(), tmp_path / "part", verbose=False, progress=False).fit(until=3)
    resumed = Trainer(recipe(), tmp_path / "part", resume=tmp_path / "part", verbose=False, progress=False).fit()
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert resumed["train_flops"] == full["train_flops"] > 0
    for key in ("train_loss", "val_loss"):
        assert [r.get(key) for r in read_metrics(tmp_path / "full")] == \
               [r.get(key) for r in read_metrics(tmp_path / "part")], f"{family}/{method}: {key}"


def test_depth_methods_save_flops_on_an_hf_model(tmp_path):
    base = Trainer(Recipe.from_dict(hf_recipe("llama", tmp_path, steps=4)), None, verbose=False).fit()
    sd = Trainer(Recipe.from_dict(hf_recipe("llama", tmp_path, [{"name": "raptr", "stages": [{"path_len": 2}],
                                                                  "allow_partial_final": True}], steps=4)),
                 None, verbose=False).fit()
    assert sd["train_flops"] < 0.8 * base["train_flops"]


def _narrow_llama_block(block, q_rows, kv_rows, hidden, scale):
    """A physically narrower copy of a Llama block: smaller Linear layers holding the kept slices."""
    import torch.nn as nn
    b = copy.deepcopy(block)
    b.__dict__.pop("forward", None)

    def lin(old, rows=None, cols=None, s=1.0):
        w = old.weight.detach()
        w = w[rows] if rows is not None else w
        w = w[:, cols] if cols is not None else w
        new = nn.Linear(w.shape[1], w.shape[0], bias=False)
        new.weight.data.copy_(w * s)
        return new
    a, m = b.self_attn, b.mlp
    a.q_proj, a.k_proj, a.v_proj = lin(a.q_proj, q_rows), lin(a.k_proj, kv_rows), lin(a.v_proj, kv_rows)
    a.o_proj = lin(a.o_proj, cols=q_rows, s=scale)
    m.gate_proj, m.up_proj, m.down_proj = lin(m.gate_proj, hidden), lin(m.up_proj, hidden), lin(m.down_proj, cols=hidden, s=scale)
    return b


def test_width_slicing_keeps_whole_kv_groups_and_equals_a_narrower_block():
    model = build("llama").train()
    x, y = batch("llama")
    assert model.width_units(0) == (2, 64)  # 2 key/value groups of 2 query heads, 64 MLP units
    hidden = torch.arange(0, 64, 2)
    plan = [BlockPlan(0, heads=torch.tensor([1]), hidden=hidden, width_scale=2.0), BlockPlan(1), BlockPlan(2),
            BlockPlan(3)]
    model.plan = plan
    got = model(x)[0]
    # reference: block 0 rebuilt with the kept slices: group 1 = KV head 1 (channels 8..15) and query
    # heads 2, 3 (channels 16..31); the output projections ×2 (width_scale)
    reference = copy.deepcopy(model.hf)
    for b in model.layout.blocks(reference):
        b.__dict__.pop("forward", None)
    reference.model.layers[0] = _narrow_llama_block(reference.model.layers[0], torch.arange(16, 32),
                                                    torch.arange(8, 16), hidden, 2.0)
    assert torch.allclose(got, type(reference).forward(reference, input_ids=x, use_cache=False).logits, atol=1e-6)
    model(x, y)[1].backward()
    left = {(id(p), d): i for p, d, i in model.width_unused_slices()}
    q = model.blocks[0].self_attn.q_proj.weight
    assert torch.equal(left[(id(q), 0)], torch.arange(16))  # query heads 0, 1 left out with their group
    assert q.grad[:16].abs().max() == 0 and q.grad[16:].abs().max() > 0
    assert model.blocks[0].mlp.down_proj.weight.grad[:, 1::2].abs().max() == 0


def test_gpt2_width_slices_conv1d_weights_along_their_transposed_axes():
    model = build("gpt2").train()
    model.set_dropout(0.0)
    x, y = batch("gpt2")
    model.plan = [BlockPlan(i, heads=torch.tensor([1, 3]), hidden=torch.arange(64)) for i in range(4)]
    model(x, y)[1].backward()
    c_attn = model.blocks[0].attn.c_attn.weight  # (in 32, out 96): q, k, v of 4 heads × 8 along dim 1
    dead = torch.cat([torch.arange(0, 8), torch.arange(16, 24)])
    for part in range(3):
        assert c_attn.grad[:, part * 32 + dead].abs().max() == 0
        assert c_attn.grad[:, part * 32 + dead + 8].abs().max() > 0
    assert model.blocks[0].attn.c_proj.weight.grad[dead].abs().max() == 0  # (in, out): rows are inputs
    assert model.blocks[0].mlp.c_proj.weight.grad[64:].abs().max() == 0
    assert model.blocks[0].attn.split_size == 32 and model.blocks[0].attn.c_attn.nf == 96  # put back


def test_refusals_say_why(tmp_path):
    from leantrain.models.protocol import require
    with pytest.raises(ConfigError, match="masks and rotary embeddings HF's forward computes"):
        require(build("llama"), "pipeline", "methods.local.parallel")
    with pytest.raises(ConfigError, match="variants greedy and contsup apply, not 'dgl'"):
        Trainer(Recipe.from_dict(hf_recipe("llama", tmp_path, [{"name": "local", "variant": "dgl"}])), None,
                verbose=False)
    with pytest.raises(ConfigError, match="immediate updates need modules that share no parameters"):
        Trainer(Recipe.from_dict(hf_recipe("gpt2", tmp_path, [{"name": "local", "update": "immediate"}])), None,
                verbose=False)
    run = tmp_path / "contsup"
    Trainer(Recipe.from_dict(hf_recipe("llama", tmp_path, [METHODS["contsup"]], steps=2)), run, verbose=False,
            progress=False).fit()
    with pytest.raises(LeantrainError, match="ContSup's context encoders"):
        from leantrain.export import export_hf
        export_hf(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- export
@pytest.mark.parametrize("family,method", [("gpt2", None), ("llama", "stacking"), ("bert", None), ("vit", None)])
def test_export_round_trips_through_from_pretrained(family, method, tmp_path):
    import transformers
    methods = [{**METHODS["stacking"], "depths": [2, 4]}] if method else []
    run = tmp_path / "run"
    Trainer(Recipe.from_dict(hf_recipe(family, tmp_path, methods, steps=4)), run, verbose=False, progress=False).fit()
    out = tmp_path / "exported"
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--out", str(out)]) == 0
    auto = {"vit": transformers.AutoModelForImageClassification, "bert": transformers.AutoModelForMaskedLM}.get(
        family, transformers.AutoModelForCausalLM)
    loaded = auto.from_pretrained(out, local_files_only=True).eval()
    from leantrain.core.loading import load_trained
    ours = load_trained(run).model
    x, _ = batch(family)
    kwargs = {"pixel_values": x} if family == "vit" else {"input_ids": x}
    with torch.no_grad():
        assert torch.equal(loaded(**kwargs).logits, ours(x)[0])
    assert loaded.config.num_hidden_layers == 4
    if family != "vit":
        tok = transformers.AutoTokenizer.from_pretrained(out)
        text = "To be, or not"
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text and len(ids) == len(text)
        if family == "bert":
            assert tok.mask_token_id == loaded.config.vocab_size - 1
    # an existing directory is refused and left alone
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--out", str(out)]) == 2


def test_evaluate_and_sample_on_hf_runs(tmp_path):
    run = tmp_path / "gpt2"
    s = Trainer(Recipe.from_dict(hf_recipe("gpt2", tmp_path, steps=3)), run, verbose=False, progress=False).fit()
    row = evaluate_checkpoint(run, "val")
    assert row["samples"] > 0 and row["val_loss"] == pytest.approx(s["final_val_loss"], abs=0.3)
    text = sample_text(run, "To be", 20, seed=1)
    assert text.startswith("To be") and len(text) == 25 and text == sample_text(run, "To be", 20, seed=1)
    bert = tmp_path / "bert"
    Trainer(Recipe.from_dict(hf_recipe("bert", tmp_path, steps=3)), bert, verbose=False, progress=False).fit()
    assert evaluate_checkpoint(bert, "val") == evaluate_checkpoint(bert, "val")  # fixed evaluation masks
    with pytest.raises(LeantrainError, match="only causal LMs generate"):
        sample_text(bert, "To be", 5)


def test_bench_hf_quick_writes_results_report_and_plots(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "hf", "--quick", "--models", "llama", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in rows if r["suite"] == "hf/llama"]
    assert methods == ["baseline", "raptr", "stochastic_depth", "contsup"]
    flops = {r["method"]: r["train_flops"] for r in rows if r["suite"] == "hf/llama"}
    assert flops["raptr"] < flops["baseline"] and flops["stochastic_depth"] < flops["baseline"]
    over = next(r for r in rows if r["suite"] == "hf/overhead")
    assert set(over["ms_per_step"]) == {"plain", "leantrain", "transformers_trainer"}
    report = (out / "report.md").read_text()
    assert "--quick" in report and "a smoke test, not for quoting" in report
    assert (out / "llama_val_loss_vs_flops.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["hf_llama_char", "hf_gpt2_char", "hf_bert_char", "hf_vit_cifar10"])
def test_bundled_hf_recipes_build(name, tmp_path):
    path = ROOT / "leantrain" / "recipes" / f"{name}.yaml"
    if name == "hf_vit_cifar10":  # needs CIFAR-10 on disk: its model is checked on images of that shape
        r = Recipe.load(path, ["data.path=/nowhere"])
        r.model.adapt_to_data(DataInfo("classification", input_shape=(3, 32, 32), num_classes=10))
        assert r.model.task == "image_classification"
        return
    r = Recipe.load(path, ["train.max_steps=4", "train.warmup_steps=0", "train.eval_interval=4", "train.eval_iters=1"])
    Trainer(r, None, verbose=False).fit()


@pytest.mark.parametrize("family", ["llama", "vit"])
def test_dgl_immediate_updates_on_untied_models(family, tmp_path):
    """Each module steps right after its own backward (DGL's update rule): possible where the output
    head shares no weight with the first module."""
    method = {"name": "local", "variant": "greedy", "modules": 2, "update": "immediate"}
    s = Trainer(Recipe.from_dict(hf_recipe(family, tmp_path, [method], steps=3)), None, verbose=False).fit()
    assert s["steps"] == 3 and s["final_val_loss"] < 10
