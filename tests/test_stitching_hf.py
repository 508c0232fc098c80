"""Stitched families of Hugging Face anchors (issue 22): SN-Net v1 / v2 of two tiny Llama anchors of
different widths train (least-squares init), resume, list, evaluate; a configuration that is a single
anchor exports with ``--format hf`` (``from_pretrained`` gives the family's logits), a stitched route
exports as a leantrain ``stitched_route`` checkpoint (same logits, evaluate loads it) and ``--format hf``
says why no transformers class holds it; resumes are bit-exact; ``sample`` works on any configuration."""
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from leantrain import ConfigError, Recipe, Trainer  # noqa: E402
from leantrain.cli import evaluate_checkpoint, main  # noqa: E402
from leantrain.core.loading import load_trained  # noqa: E402
from leantrain.methods.stitching import load_family, pool_list  # noqa: E402

from .conftest import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt").read_text()[:20000]
TRAIN = {"max_steps": 6, "batch_size": 4, "warmup_steps": 1, "eval_interval": 3, "eval_iters": 2, "log_interval": 1}


def llama(d, layers, heads):
    return {"model_type": "llama", "hidden_size": d, "intermediate_size": 2 * d, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": heads // 2}


def fit(d, out, until=None, resume=None):
    return Trainer(Recipe.from_dict(d), out, resume=resume, overwrite=resume is None, verbose=False,
                   progress=False).fit(until=until)


def same_rows(a: Path, b: Path) -> bool:
    """Bit for bit: every logged train / val loss of two runs (a resumed run against an unbroken one)."""
    return all([r.get(k) for r in read_metrics(a)] == [r.get(k) for r in read_metrics(b)]
               for k in ("train_loss", "val_loss"))


@pytest.fixture(scope="module")
def anchors(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchors")
    text = root / "small.txt"
    text.write_text(TEXT)
    for name, cfg in (("a16", llama(16, 2, 2)), ("a32", llama(32, 2, 4))):
        fit({"data": {"path": str(text)}, "model": {"name": "hf", "config": cfg, "block_size": 16},
             "train": {**TRAIN, "max_steps": 4}}, root / name)
    return text, [str(root / "a16"), str(root / "a32")]


def snnet(text, anchors, version, **extra):
    # the family replaces the recipe's model; its section gives the context length the anchors share
    return {"data": {"path": str(text)}, "model": {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 16},
            "train": TRAIN, "methods": [{"name": "snnet", "anchors": anchors, "version": version, "init_batch": 8,
                                         **extra}]}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_snnet_of_llama_anchors_trains_resumes_lists_and_evaluates(anchors, version, tmp_path):
    text, paths = anchors
    d = snnet(text, paths, version)
    full = fit(d, tmp_path / "full")
    fit(d, tmp_path / "part", until=3)
    resumed = fit(d, tmp_path / "part", resume=tmp_path / "part")
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert same_rows(tmp_path / "full", tmp_path / "part")
    listing = pool_list(tmp_path / "full")
    assert "w16[0:2]" in listing and "w32[0:2]" in listing and "> w32[" in listing
    if version == "v2":
        assert "> w16[" in listing  # large → small routes
    family = load_trained(tmp_path / "full").model
    assert family.num_configs >= 4 and family.config_flops(0) < family.config_flops(1)
    e = evaluate_checkpoint(tmp_path / "full")  # the eval configuration, whole split: as the family scored it
    assert e["val_loss"] == pytest.approx(load_family(tmp_path / "full").losses()[family.active], abs=1e-6)


def test_least_squares_init_fits_the_stitch_between_hf_anchors(anchors, tmp_path):
    """A least-squares stitch maps the small anchor's hidden states to what the large one expects
    better than the default Linear init (measured: the stitched route's val loss right after init)."""
    text, paths = anchors
    losses = {}
    for init in ("least_squares", "none"):
        d = snnet(text, paths, "v1", init=init, eval_config=2)
        d["train"] = {**TRAIN, "max_steps": 1}
        s = fit(d, tmp_path / init)
        losses[init] = s["final_val_loss"]
    assert losses["least_squares"] < losses["none"]


def test_exports_a_single_anchor_as_hf_and_a_route_as_leantrain(anchors, tmp_path):
    import transformers
    text, paths = anchors
    run = tmp_path / "family"
    fit(snnet(text, paths, "v1"), run)
    family = load_trained(run).model
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    anchor = next(i for i in range(family.num_configs) if family.describe(i) == "w32[0:2]")
    route = next(i for i in range(family.num_configs) if ">" in family.describe(i))
    out = tmp_path / "anchor_hf"
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--config", str(anchor), "--out", str(out)]) == 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    family.active = anchor
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, family(x)[0])
    assert transformers.AutoTokenizer.from_pretrained(out).decode([5, 6]) != ""
    bad = tmp_path / "route_hf"
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--config", str(route), "--out", str(bad)]) == 2
    assert not bad.exists()
    leantrain_out = tmp_path / "route"
    assert main(["export", "--ckpt", str(run), "--config", str(route), "--out", str(leantrain_out)]) == 0
    exported = load_trained(leantrain_out)
    assert exported.recipe.model_name == "stitched_route" and exported.model.num_configs == 1
    family.active = route
    with torch.no_grad():
        assert torch.equal(exported.model(x)[0], family(x)[0])
    assert evaluate_checkpoint(leantrain_out)["val_loss"] > 0


def test_anchors_of_two_families_are_refused(anchors, tmp_path):
    text, paths = anchors
    other = tmp_path / "gpt2"
    fit({"data": {"path": str(text)}, "model": {"name": "hf", "config": {"model_type": "gpt2", "n_embd": 32,
                                                                          "n_layer": 2, "n_head": 4}, "block_size": 16},
         "train": {**TRAIN, "max_steps": 2}}, other)
    with pytest.raises(ConfigError, match="one kind of model"):
        fit(snnet(text, [paths[0], str(other)], "v1"), tmp_path / "mixed")


def test_learngene_pool_from_a_llama_ancestry_distils_trains_lists_exports_and_evaluates(anchors, tmp_path):
    text, _ = anchors
    data = {"path": str(text)}
    fit({"data": data, "model": {"name": "hf", "config": llama(32, 3, 4), "block_size": 16},
         "train": {**TRAIN, "max_steps": 4}}, tmp_path / "ancestry")
    auxiliaries = []
    for width in (16, 24):
        run = tmp_path / f"aux{width}"
        fit({"data": data, "model": {"name": "hf", "config": llama(width, 3, 2), "block_size": 16},
             "train": {**TRAIN, "max_steps": 3},
             "methods": [{"name": "learngene_distill", "ancestry": str(tmp_path / "ancestry")}]}, run)
        rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if "hidden_mse" in line]
        assert rows  # the hidden-state and attention terms were computed on hf modules
        auxiliaries.append(str(run))
    d = {"data": data, "model": {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 16}, "train": TRAIN,
         "methods": [{"name": "learngene_pool", "auxiliaries": auxiliaries, "distill": True}]}
    full = fit(d, tmp_path / "pool")  # least-squares stitch init: the pool's default
    # the learned init through the distillation projections (W = P̄_end·pinv(P̄_front)) and a raised
    # stitch-layer LR work on hf instances too
    learned = {**d, "methods": [{**d["methods"][0], "init": "learned", "stitch_lr_scale": 2.0}]}
    assert math.isfinite(fit(learned, tmp_path / "learned")["final_val_loss"])
    fit(d, tmp_path / "part", until=3)
    assert fit(d, tmp_path / "part", resume=tmp_path / "part")["final_val_loss"] == full["final_val_loss"]
    assert same_rows(tmp_path / "pool", tmp_path / "part")
    listing = pool_list(tmp_path / "pool")
    assert "descendant" in listing and "w16[0:" in listing and "> w24[" in listing
    family = load_trained(tmp_path / "pool").model
    descendant = next(i for i, r in enumerate(family.routes) if r.kind == "descendant")
    out = tmp_path / "descendant"
    assert main(["export", "--ckpt", str(tmp_path / "pool"), "--config", str(descendant), "--out", str(out)]) == 0
    got = evaluate_checkpoint(out)["val_loss"]
    assert got == pytest.approx(load_family(tmp_path / "pool").losses()[descendant], abs=1e-6)
    with pytest.raises(ConfigError, match="smaller than its auxiliary"):
        fit({"data": data, "model": {"name": "hf", "config": llama(64, 3, 8), "block_size": 16}, "train": TRAIN,
             "methods": [{"name": "learngene_distill", "ancestry": str(tmp_path / "ancestry")}]}, tmp_path / "big")


def test_snnet_anchors_may_be_save_pretrained_directories(anchors, tmp_path):
    text, paths = anchors
    dirs = []
    for i, run in enumerate(paths):
        out = tmp_path / f"pretrained{i}"
        assert main(["export", "--ckpt", run, "--format", "hf", "--out", str(out)]) == 0
        dirs.append(str(out))
    from_runs = fit(snnet(text, paths, "v1"), tmp_path / "runs")
    from_dirs = fit(snnet(text, dirs, "v1"), tmp_path / "dirs")  # the same weights: the same family
    assert from_dirs["final_val_loss"] == from_runs["final_val_loss"]
    fit(snnet(text, dirs, "v1"), tmp_path / "part", until=3)  # resume never reads the directories again
    for d in dirs:
        (Path(d) / "model.safetensors").rename(Path(d) / "moved.safetensors")
    resumed = fit(snnet(text, dirs, "v1"), tmp_path / "part", resume=tmp_path / "part")
    assert resumed["final_val_loss"] == from_dirs["final_val_loss"]


def test_sample_on_an_hf_family_an_anchor_through_hf_a_route_through_the_family(anchors, tmp_path, capsys):
    """``leantrain sample`` on a family of hf anchors: a configuration that is one whole anchor samples
    through that model's own (KV-cached) generate — greedy, it equals transformers' ``generate`` on the
    exported ``save_pretrained`` directory — and a stitched route reruns the family's forward per token
    (greedy: every token the argmax of the route's logits); an exported route samples as its family."""
    import transformers
    from leantrain.cli import sample_text
    text, paths = anchors
    run = tmp_path / "family"
    fit(snnet(text, paths, "v1"), run)
    family = load_trained(run).model
    anchor = next(i for i in range(family.num_configs) if family.describe(i) == "w32[0:2]")
    route = next(i for i in range(family.num_configs) if ">" in family.describe(i))
    prompt = torch.randint(0, 40, (1, 4), generator=torch.Generator().manual_seed(0))
    out = tmp_path / "anchor_hf"
    assert main(["export", "--ckpt", str(run), "--format", "hf", "--config", str(anchor), "--out", str(out)]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    family.active = anchor
    ours = family.generate(prompt, 8, top_k=1)
    theirs = hf_model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                               do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    family.active = route
    greedy = family.generate(prompt, 8, top_k=1)
    with torch.no_grad():
        expected = family(greedy[:, :-1])[0][0, 3:].argmax(-1)
    assert torch.equal(greedy[0, 4:], expected) and family.training is False
    sampled = family.generate(prompt, 20, 0.8, 40, torch.Generator().manual_seed(1))  # past block_size 16
    assert sampled.shape == (1, 24)
    exported = tmp_path / "route"
    assert main(["export", "--ckpt", str(run), "--config", str(route), "--out", str(exported)]) == 0
    again = load_trained(exported).model.generate(prompt, 20, 0.8, 40, torch.Generator().manual_seed(1))
    assert torch.equal(again, sampled)
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(exported), "--prompt", "RO", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("RO")
    assert sample_text(run, "RO", 5).startswith("RO")  # the family run: its eval configuration
