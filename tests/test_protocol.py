"""The model protocol: declared capabilities, refusals of look-alike models (issue 18, bug 7), the
adapter registry, and the native implementations of gpt / resnet / stitched_gpt."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from leantrain import ConfigError, Recipe, Trainer
from leantrain.models import GPT, GPTConfig, ResNet, ResNetConfig, StitchedGPT, StitchedGPTConfig, protocol
from leantrain.registry import MODELS, MODEL_TASKS, register_model

from .conftest import tiny


# ----------------------------------------------------------------------- a look-alike user module
@dataclass
class LookAlikeConfig:
    n_layer: int = 4
    """Blocks."""
    n_embd: int = 16
    """Width."""
    n_head: int = 2
    """Heads (read by nothing: a look-alike)."""
    block_size: int = 16
    """Context length."""
    vocab_size: int | None = None
    """From the data."""
    dropout: float = 0.0
    """Unused."""

    def adapt_to_data(self, info):
        self.vocab_size = self.vocab_size or info.vocab_size


class LookAlike(nn.Module):
    """Has every attribute name methods used to duck-type on — ``blocks``, ``plan = None``,
    ``set_dropout``, ``units``, ``embed``/``head``, ``config`` — but declares no capability, and its
    forward ignores the plan and the dropout rates: a method acting on it would change nothing."""

    def __init__(self, cfg: LookAlikeConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(nn.Linear(cfg.n_embd, cfg.n_embd) for _ in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size)
        self.plan = None
        self.rate = 0.0

    def set_dropout(self, p, site=None, block=None):
        self.rate = p

    def embed(self, idx):
        return self.wte(idx)

    def head(self, h):
        return self.lm_head(h)

    @property
    def units(self):
        return [*self.blocks]

    def unit_shapes(self, shape):
        return [(self.config.block_size, self.config.n_embd)] * len(self.blocks)

    def forward(self, idx, targets=None):
        h = self.embed(idx)
        for b in self.blocks:
            h = h + torch.tanh(b(h))
        logits = self.head(h)
        return logits, None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def shape_key(self):
        return (len(self.blocks),)


@pytest.fixture
def lookalike():
    register_model("lookalike", config=LookAlikeConfig)(LookAlike)
    yield
    MODELS.pop("lookalike")
    MODEL_TASKS.pop("lookalike")


LOOKALIKE_REFUSALS = [
    ({"name": "raptr", "stages": [{"path_len": 3}, {"path_len": 4}]}, "methods.raptr: skips blocks through a block plan"),
    ({"name": "stochastic_depth"}, "methods.stochastic_depth: skips blocks through a block plan"),
    ({"name": "pld"}, "methods.pld: skips blocks through a block plan"),
    ({"name": "stacking", "depths": [2, 4]}, "methods.stacking: stacking grows depth by copying blocks"),
    ({"name": "dynamic_dropout"}, "methods.dynamic_dropout: schedules dropout rates, but model LookAlike has no"),
    ({"name": "local", "modules": 2}, "methods.local: local learning needs a model made of ordered units"),
    ({"name": "grow", "source": "runs/nowhere", "operator": "fpi"}, "methods.grow: grows a gpt"),
]


@pytest.mark.parametrize("method, message", LOOKALIKE_REFUSALS, ids=[m["name"] for m, _ in LOOKALIKE_REFUSALS])
def test_a_look_alike_module_is_refused_with_the_reason(lookalike, tmp_path, method, message):
    """Bug 7: a module with the attribute names but no declared support used to pass the checks (RaPTr
    printed "expected fraction 0.750") and train exactly as a plain run."""
    recipe = Recipe.from_dict(tiny(model={"name": "lookalike"}, methods=[method]))
    with pytest.raises(ConfigError) as e:
        Trainer(recipe, tmp_path / "out", verbose=False, progress=False)
    text = str(e.value)
    assert message in text and "\n" not in text
    if method["name"] != "grow":  # grow refuses by the recipe's model name first
        assert "declares no capabilities" in text and "register an adapter" in text
    assert not (tmp_path / "out").exists()


def test_a_look_alike_trains_plainly_and_is_refused_as_an_snnet_anchor(lookalike, tmp_path):
    from leantrain.methods.stitching import snnet_family
    from leantrain.methods.stitching.methods import plain_stack
    run = tmp_path / "anchor"
    Trainer(Recipe.from_dict(tiny(model={"name": "lookalike"}, train={"max_steps": 2, "eval_interval": 2})),
            run, verbose=False, progress=False).fit()
    recipe = Recipe.from_dict(tiny(methods=[{"name": "snnet", "anchors": [str(run), str(run)]}]))
    with pytest.raises(ConfigError, match="anchors must be gpt runs"):
        Trainer(recipe, tmp_path / "out", verbose=False, progress=False)
    a = LookAlike(LookAlikeConfig(vocab_size=5))
    assert not plain_stack(a) and plain_stack(GPT(GPTConfig(vocab_size=5)))
    with pytest.raises(ConfigError, match="stack w16: needs ordered blocks, which model LookAlike does not declare"):
        snnet_family([a, LookAlike(LookAlikeConfig(vocab_size=5, n_embd=32))])


def test_a_gpt_whose_class_declares_nothing_is_refused_too(monkeypatch, tmp_path):
    """Capabilities are what a model declares, not what its attributes suggest."""
    monkeypatch.setattr(GPT, "CAPABILITIES", frozenset())
    for method in ({"name": "raptr"}, {"name": "dynamic_dropout"}, {"name": "local"}):
        with pytest.raises(ConfigError, match=f"methods.{method['name']}: .*(does not declare|has no dropout sites)"):
            Trainer(Recipe.from_dict(tiny(methods=[method])), tmp_path / "out", verbose=False, progress=False)


# ----------------------------------------------------------------------------------- the registry
class LookAlikeDropout(protocol.Adapter):
    """An adapter declaring one dropout site of a module leantrain does not own."""
    CAPABILITIES = frozenset({"dropout"})

    def dropout_sites(self):
        return {"mlp": tuple(range(len(self.model.blocks)))}

    def dropout_rates(self):
        return {"mlp": [self.model.rate] * len(self.model.blocks)}

    def set_dropout(self, p, site=None, block=None):
        protocol.check_dropout_site(self, site or "mlp")
        self.model.rate = p


def test_a_registered_adapter_supplies_the_capabilities(lookalike, tmp_path):
    protocol.register_adapter(LookAlike, LookAlikeDropout)
    try:
        model = LookAlike(LookAlikeConfig(vocab_size=5))
        view = protocol.adapt(model)
        assert isinstance(view, LookAlikeDropout) and protocol.adapt(model) is view
        assert protocol.capabilities(model) == {"dropout"} and not protocol.supports(model, "plan")
        with pytest.raises(KeyError, match="no 'attention' dropout site"):
            view.set_dropout(0.1, "attention")
        recipe = Recipe.from_dict(tiny(model={"name": "lookalike"}, train={"max_steps": 4},
                                       methods=[{"name": "dynamic_dropout", "p0": 0.3, "schedule": "constant"}]))
        t = Trainer(recipe, tmp_path / "out", verbose=False, progress=False)
        t.fit()
        assert t.state.model.rate == 0.3  # the adapter set the rate on the module
        with pytest.raises(ConfigError, match="methods.dynamic_dropout.sites.attention: model LookAlike has no "
                                              "attention dropout site"):
            Trainer(Recipe.from_dict(tiny(model={"name": "lookalike"}, methods=[
                {"name": "dynamic_dropout", "sites": {"attention": {"p0": 0.1}}}])), tmp_path / "o2")
    finally:
        protocol.ADAPTERS.pop(LookAlike)
    assert not protocol.supports(LookAlike(LookAlikeConfig(vocab_size=5)), "dropout")


def test_require_names_the_method_the_capability_and_the_models_reason():
    gpt = GPT(GPTConfig(vocab_size=5))
    assert protocol.require(gpt, "plan", "methods.x") is gpt
    with pytest.raises(ConfigError) as e:
        protocol.require(gpt, "pipeline", "methods.local.parallel")
    assert str(e.value) == ("methods.local.parallel: needs units that split into sequential stages on different "
                            "processes, which model GPT does not declare: its output head shares the token "
                            "embedding with the first unit")
    with pytest.raises(KeyError, match="unknown capability"):
        protocol.require(gpt, "teleport", "x")


# ---------------------------------------------------------------------------- native implementations
def test_native_models_declare_what_they_implement():
    gpt = GPT(GPTConfig(vocab_size=7, n_layer=3, n_embd=32, n_head=2, block_size=8))
    resnet = ResNet(ResNetConfig(depth=8, dims=1, in_channels=1, num_classes=3))
    stitched = StitchedGPT(StitchedGPTConfig(vocab_size=7, block_size=8))
    methods = {"blocks": ["blocks", "always_run", "block_prefix"], "plan": ["plan"],
               "plan_width": ["width_units", "width_unused_slices"], "dropout": ["dropout_sites", "set_dropout"],
               "units": ["local_units"], "pipeline": ["local_units"], "stages": ["embed", "run_blocks", "head"],
               "depth_change": ["set_blocks"], "weight_roles": ["weight_roles"]}
    for model in (gpt, resnet, stitched):
        for cap in protocol.capabilities(model):
            assert all(hasattr(model, m) for m in methods[cap]), (type(model).__name__, cap)
        for cap in set(protocol.CAPABILITIES) - protocol.capabilities(model) - {"unit_hooks", "export"}:
            assert model.why_not(cap), (type(model).__name__, cap)  # every gap says why
    assert protocol.capabilities(gpt) == {"blocks", "plan", "plan_width", "dropout", "units", "stages",
                                          "depth_change", "weight_roles"}
    assert protocol.capabilities(resnet) == {"blocks", "plan", "units", "pipeline"}
    units = gpt.local_units((8,))
    x = torch.randint(0, 7, (2, 8))
    h = x
    for m in units.modules:
        h = m(h)
    assert torch.equal(h, gpt(x)[0]) and units.shapes[-1] == (8, 7) and units.tied_head_weight is gpt.wte.weight
    roles = gpt.weight_roles()
    params = dict(gpt.named_parameters())
    b = roles.blocks[0]
    for w in (b.qkv, b.attn_out, b.mlp_in, b.mlp_out):
        assert f"{roles.block_prefix}.0.{w.name}" in params
    assert params[f"blocks.0.{b.qkv.name}"].shape[b.qkv.out_axis] == 3 * roles.width and b.kv_groups == 1
    assert gpt.get_parameter(roles.token_embedding) is gpt.get_parameter(roles.output) and roles.tied
    assert isinstance(gpt.blocks[0].get_submodule(b.attention), nn.Module)


# ------------------------------------------------------------- local learning on units cut by hooks
@dataclass
class MaskedLMConfig:
    n_layer: int = 4
    """Blocks."""
    n_embd: int = 16
    """Width."""
    n_head: int = 2
    """Unused (the tiny recipe sets it)."""
    block_size: int = 16
    """Context length."""
    vocab_size: int | None = None
    """From the data."""

    def adapt_to_data(self, info):
        self.vocab_size = self.vocab_size or info.vocab_size


class MaskedBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, h, *, mask):
        return h + torch.tanh(self.fc(mask @ h))  # causal mixing by a matrix only the model's forward makes


class MaskedLM(nn.Module):
    """Like a Hugging Face model: its forward computes what the blocks need (a causal averaging mask)
    between them, so the blocks cannot run alone."""

    def __init__(self, cfg: MaskedLMConfig):
        super().__init__()
        self.config = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(MaskedBlock(cfg.n_embd) for _ in range(cfg.n_layer))
        self.lm = nn.Linear(cfg.n_embd, cfg.vocab_size)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        mask = torch.tril(torch.ones(T, T, device=idx.device))
        mask = mask / mask.sum(1, keepdim=True)
        h = self.emb(idx)
        for layer in self.layers:
            h = layer(h, mask=mask)
        logits = self.lm(h)
        return logits, None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def shape_key(self):
        return ()


class HookedMaskedLM(MaskedLM):
    pass


class CallableMaskedLM(MaskedLM):
    pass


class WithMask(nn.Module):
    """A block that makes its own mask: callable alone (the callable reference for the hook path)."""

    def __init__(self, block):
        super().__init__()
        self.block = [block]

    def forward(self, h):
        T = h.size(1)
        mask = torch.tril(torch.ones(T, T, device=h.device))
        return self.block[0](h, mask=mask / mask.sum(1, keepdim=True))


class MaskedLMUnits(protocol.Adapter):
    CAPABILITIES = frozenset({"unit_hooks"})

    def local_units(self, input_shape):
        m, (T,) = self.model, input_shape
        C, V = m.config.n_embd, m.config.vocab_size
        units = [m.emb, *m.layers, m.lm] if not self.callable_units else [m.emb, *map(WithMask, m.layers), m.lm]
        return protocol.Units(units, [(T, C)] * (len(units) - 1) + [(T, V)], "tokens",
                              [list(u.parameters()) for u in (m.emb, *m.layers, m.lm)], callable=self.callable_units)

    callable_units = False


class MaskedLMCallable(MaskedLMUnits):
    CAPABILITIES = frozenset({"units"})
    callable_units = True


@pytest.fixture
def masked_models():
    protocol.register_adapter(HookedMaskedLM, MaskedLMUnits)
    protocol.register_adapter(CallableMaskedLM, MaskedLMCallable)
    register_model("masked_hooked", config=MaskedLMConfig)(HookedMaskedLM)
    register_model("masked_callable", config=MaskedLMConfig)(CallableMaskedLM)
    yield
    for name in ("masked_hooked", "masked_callable"):
        MODELS.pop(name)
        MODEL_TASKS.pop(name)
    protocol.ADAPTERS.pop(HookedMaskedLM)
    protocol.ADAPTERS.pop(CallableMaskedLM)


@pytest.mark.parametrize("local", [{"modules": 3}, {"variant": "contsup", "modules": 3, "context": "R1E"}],
                         ids=["greedy", "contsup"])
def test_local_learning_through_hooks_equals_callable_units(masked_models, tmp_path, local):
    """unit_hooks: the model's own forward runs (it makes the mask), hooks cut it into gradient-isolated
    modules; the losses are bit-identical to running the same units one by one."""
    from .conftest import read_metrics
    runs = {}
    for name in ("masked_hooked", "masked_callable"):
        recipe = Recipe.from_dict(tiny(model={"name": name}, train={"max_steps": 6, "log_interval": 1},
                                       methods=[{"name": "local", **local}]))
        t = Trainer(recipe, tmp_path / name, verbose=False, progress=False)
        summary = t.fit()
        runs[name] = ([{k: v for k, v in r.items() if "loss" in k} for r in read_metrics(tmp_path / name)], summary)
    (hooked, s1), (called, s2) = runs["masked_hooked"], runs["masked_callable"]
    assert hooked == called and s1["final_val_loss"] == s2["final_val_loss"]
    assert any("local/loss1" in r for r in hooked)
    with pytest.raises(ConfigError, match="cut by hooks"):
        Trainer(Recipe.from_dict(tiny(model={"name": "masked_hooked"},
                                      methods=[{"name": "local", "modules": 2, "cuts": "memory"}])), None)


def test_hooked_units_are_gradient_isolated(masked_models):
    from leantrain.methods.local.local import LocalConfig, build_local_model
    torch.manual_seed(0)
    base = HookedMaskedLM(MaskedLMConfig(vocab_size=7))
    lm = build_local_model(base, LocalConfig(modules=2), (16,), [1], 7, False)
    x = torch.randint(0, 7, (2, 16))
    seen = {}

    def on_cut(k, out, inputs, memo):
        seen["out"] = out
        return out.detach()
    logits = lm.cut_forward(x, on_cut)
    logits.sum().backward()
    assert all(p.grad is None for p in base.emb.parameters()) and base.layers[0].fc.weight.grad is None
    assert base.layers[1].fc.weight.grad is not None and seen["out"].requires_grad
    lm.eval()
    assert torch.equal(lm(x)[0], base(x)[0])  # no contexts: the deployed network is the base model


def test_depth_changes_go_through_set_blocks_and_its_renumbering_hook():
    """Stacking changes depth only through the protocol's set_blocks, so a model whose blocks carry
    their index (as Hugging Face attention layers carry layer_idx) and whose config counts them stays
    consistent after every cut and copy."""
    from leantrain.methods.progressive.stacking import cut_blocks, moment_map, stack_blocks

    class Indexed(nn.Module):
        def __init__(self, i):
            super().__init__()
            self.layer_idx, self.fc = i, nn.Linear(2, 2)

    class Net(nn.Module, protocol.ModelProtocol):
        CAPABILITIES = frozenset({"blocks", "depth_change"})
        block_prefix = "layers"

        def __init__(self):
            super().__init__()
            self.n_layer = 4
            self.layers = nn.ModuleList(Indexed(i) for i in range(4))

        @property
        def blocks(self):
            return self.layers

        def set_blocks(self, blocks):
            self.layers = nn.ModuleList(blocks)
            for i, b in enumerate(self.layers):  # the after-depth-change hook
                b.layer_idx = i
            self.n_layer = len(self.layers)

    net = Net()
    cut_blocks(net, 2)
    assert net.n_layer == 2 and [b.layer_idx for b in net.layers] == [0, 1]
    copies = stack_blocks(net, 4, "copy_top")
    assert net.n_layer == 4 and [b.layer_idx for b in net.layers] == [0, 1, 2, 3] and copies == {2: 0, 3: 1}
    assert net.layers[2] is not net.layers[0] and torch.equal(net.layers[2].fc.weight, net.layers[0].fc.weight)
    assert moment_map(net, copies)["layers.2.fc.weight"] == "layers.0.fc.weight"


def test_an_adapted_class_without_shape_key_trains(lookalike, tmp_path, monkeypatch):
    """The trainer keys its FLOP cache by the protocol's shape_key, so a class one does not own (no
    ``shape_key`` of its own) trains through its registered adapter."""
    monkeypatch.delattr(LookAlike, "shape_key")
    protocol.register_adapter(LookAlike, LookAlikeDropout)
    try:
        recipe = Recipe.from_dict(tiny(model={"name": "lookalike"}, train={"max_steps": 2},
                                       methods=[{"name": "dynamic_dropout", "p0": 0.3, "schedule": "constant"}]))
        assert Trainer(recipe, tmp_path / "out", verbose=False, progress=False).fit()["steps"] == 2
    finally:
        protocol.ADAPTERS.pop(LookAlike)
