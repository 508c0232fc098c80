"""Model growth's functional core: function preservation (FPI, Net2Net, MSG), the copy operators'
structure (StackBERT, G_stack, AKI), Mango's TR-MPO against independent references, LiGO's copy
init, operator sizes, gradients through functional_call, and bad shapes."""
import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from leantrain import ConfigError
from leantrain.methods.growth import (LiGOOperator, MangoOperator, MSGMasks, WidthMaps, aki, build_model,
                                      carry_adam_state, copy_maps, copy_width, dense_operator_size, fpi,
                                      from_blocks, gstack, mango_maps, masked_layer_norm, msg_grow, net2net,
                                      ramp_value, source_tensors, stack_depth, stack_order, stackbert,
                                      to_blocks, tr_mpo)
from leantrain.methods.growth.copying import _in_expand
from leantrain.methods.growth.ligo import depth_coefficients
from leantrain.models.gpt import GPT, GPTConfig, LayerNorm

V, T = 11, 8


def cfg(n_layer=2, n_head=2, n_embd=16, bias=False) -> GPTConfig:
    return GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=T, vocab_size=V, bias=bias)


def source(bias=False, seed=0, **kw) -> GPT:
    """A source whose weights are far from init (GPT init ± 0.3 noise), so its function is not trivial."""
    torch.manual_seed(seed)
    model = GPT(cfg(bias=bias, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tokens(n=3, seed=1):
    return torch.randint(0, V, (n, T), generator=gen(seed))


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


def affine_only(model: GPT) -> GPT:
    """The documented 'without LayerNorm' variant: every LayerNorm keeps its affine γ·x + β but
    normalises by nothing, so only the growth operator is under test."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, LayerNorm):
            m.forward = types.MethodType(lambda ln, x: x * ln.weight + (0 if ln.bias is None else ln.bias), m)
    return model


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------------- function preservation
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("grow", [fpi, net2net])
def test_fpi_and_net2net_width_preserve_the_function_exactly_without_layernorm(grow, bias):
    src = source(bias)
    target = cfg(n_head=5, n_embd=40, bias=bias)  # head size 8 kept, 2 -> 5 heads, random map
    grown = build_model(target, grow(src, target, generator=gen()))
    x = tokens()
    # float64: without normalisation the logits reach ~20, where float32 summation order alone
    # (which differs between CPUs' kernels) moves them by ~1e-5; the map itself is exact
    close(logits(affine_only(grown).double(), x), logits(affine_only(src).double(), x))
    assert (logits(grown, x) - logits(src, x)).abs().max() > 1e-3  # the LayerNorm case is only approximate


def trained_source(seed=0) -> tuple[GPT, torch.Tensor, torch.Tensor]:
    """A 2×16 GPT trained 40 AdamW steps on arithmetic sequences, and a held-out batch."""
    g = gen(seed)

    def batch(n):
        seq = (torch.randint(0, V, (n, 1), generator=g) + torch.randint(1, 3, (n, 1), generator=g)
               * torch.arange(T + 1)) % V
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    torch.manual_seed(seed)
    model = GPT(cfg())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(*batch(8))[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), *batch(32)


def test_fpi_with_layernorm_is_within_the_stated_tolerance():
    # A random map changes LayerNorm's statistics (copied units count twice), so FPI is approximate:
    # on this trained model |Δloss| ≈ 0.02 nats and max |Δp| ≈ 0.08 over seeds (README); a plain
    # copy without FPI's division is far off.
    src, x, y = trained_source()
    target = cfg(n_head=5, n_embd=40)
    grown = build_model(target, fpi(src, target, generator=gen()))
    with torch.no_grad():
        (a, la), (b, lb) = src(x, y), grown(x, y)
        plain = build_model(target, stack_depth(copy_width(source_tensors(src), 2, copy_maps(src.config, target,
                                                                                           generator=gen()),
                                                           divide=False), [0, 1]))
        lc = plain(x, y)[1]
    assert abs(lb - la) < 0.05 and (a.softmax(-1) - b.softmax(-1)).abs().max() < 0.15
    assert abs(lc - la) > 10 * abs(lb - la)


def test_fpi_with_the_cyclic_map_is_exact_with_layernorm():
    # Doubling with g(i) = i mod D: every unit is copied equally often, LayerNorm statistics are kept.
    src = source()
    target = cfg(n_head=4, n_embd=32)
    close(logits(build_model(target, fpi(src, target, mapping="cyclic")), tokens()), logits(src, tokens()))


def test_net2net_deeper_inserts_identity_blocks_and_noise_touches_only_new_units():
    src = source()
    target = cfg(n_layer=4, n_head=4, n_embd=32)
    exact = net2net(src, target, mapping="cyclic")
    close(logits(build_model(target, exact), tokens()), logits(src, tokens()))  # LayerNorm too: cyclic map
    wide = fpi(src, cfg(n_head=4, n_embd=32), mapping="cyclic")
    names = ("ln_1.weight", "attn.c_attn.weight", "mlp.c_fc.weight", "attn.c_proj.weight", "mlp.c_proj.weight")
    for j, (i, new) in enumerate([(0, False), (0, True), (1, False), (1, True)]):  # new blocks follow sources
        for name in names:
            got, want = exact[f"blocks.{j}.{name}"], wide[f"blocks.{i}.{name}"]
            assert torch.equal(got, torch.zeros_like(want) if new and name.endswith("c_proj.weight") else want)
    noisy = net2net(src, target, noise=0.1, mapping="cyclic", generator=gen())
    w, w0 = noisy["blocks.0.mlp.c_fc.weight"], exact["blocks.0.mlp.c_fc.weight"]
    assert torch.equal(w[:64, :16], w0[:64, :16]) and not torch.equal(w, w0)  # old units untouched
    assert not torch.allclose(logits(build_model(target, noisy), tokens()), logits(src, tokens()), atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("new_blocks", ["copy", "random"])
def test_msg_at_mask_zero_equals_the_source(bias, new_blocks):
    src = source(bias)
    target = cfg(n_layer=5, n_head=3, n_embd=24, bias=bias)  # hidden, heads, MLP units and depth grow
    tensors, growth = msg_grow(src, target, new_blocks=new_blocks, generator=gen())
    model, x = build_model(target, tensors), tokens()
    assert (logits(model, x) - logits(src, x)).abs().max() > 1e-2  # unmasked, the new entries matter
    masks = MSGMasks(growth)
    masks.attach(model)
    torch.testing.assert_close(logits(model, x), logits(src, x), rtol=0, atol=1e-5)
    masks.set_value(0.5)
    half = logits(model, x)
    assert (half - logits(src, x)).abs().max() > 1e-2
    masks.set_value(1.0)
    full = logits(model, x)
    masks.detach()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    close(full, logits(model, x))  # at c = 1 the masks are the identity


def test_msg_keeps_the_source_in_the_old_slice_and_copies_new_blocks_in_msgs_order():
    src = source()
    target = cfg(n_layer=5, n_head=3, n_embd=24)
    tensors, growth = msg_grow(src, target, generator=gen())
    for name, old in source_tensors(src).items():
        index = growth.old_index(name)
        got = tensors[name][index[0]] if len(index) == 1 else tensors[name][index[0][:, None], index[1]]
        assert torch.equal(got, old), name
    q = tensors["blocks.0.attn.c_attn.weight"]
    assert torch.equal(q[24:40, :16], source_tensors(src)["blocks.0.attn.c_attn.weight"][16:32])  # k part
    assert growth.new_blocks == [2, 3, 4] and growth.block_source == [0, 1, 0, 1, 1]
    for j, i in ((2, 0), (3, 1), (4, 1)):
        assert torch.equal(tensors[f"blocks.{j}.mlp.c_fc.weight"], tensors[f"blocks.{i}.mlp.c_fc.weight"])


def test_msg_masked_layernorm_and_ramp():
    x = torch.randn(2, 3, 6)
    w, b = torch.randn(6), torch.randn(6)
    close(masked_layer_norm(x, torch.ones(6), w, b), F.layer_norm(x, (6,), w, b, 1e-5))
    m = torch.tensor([1.0, 1, 1, 1, 0, 0])
    close(masked_layer_norm(x, m, w, b)[..., :4], F.layer_norm(x[..., :4], (4,), w[:4], b[:4], 1e-5))
    assert masked_layer_norm(x, m, w, b)[..., 4:].abs().max() == 0
    assert [ramp_value(s, 4) for s in (0, 1, 4, 9)] == [0.0, 0.25, 1.0, 1.0] and ramp_value(0, 0) == 1.0


def test_msg_carries_adam_moments_into_the_old_slice():
    src = source()
    target = cfg(n_layer=3, n_head=3, n_embd=24)
    tensors, growth = msg_grow(src, target, generator=gen())
    old = {n: {"step": torch.tensor(7.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
           for n, p in source_tensors(src).items()}
    new = carry_adam_state(old, growth, tensors)
    assert set(new) == set(source_tensors(src))  # new block 2 starts fresh
    s = new["blocks.1.mlp.c_proj.weight"]
    assert s["step"] == 7 and s["exp_avg"].shape == tensors["blocks.1.mlp.c_proj.weight"].shape
    assert torch.equal(s["exp_avg"][:16, :64], old["blocks.1.mlp.c_proj.weight"]["exp_avg"])
    assert s["exp_avg"][16:].abs().sum() == 0 and s["exp_avg_sq"][:, 64:].abs().sum() == 0


# ------------------------------------------------------------------------------ copy structure
def test_stackbert_and_gstack_copy_the_right_blocks():
    src = source()
    s = source_tensors(src)
    for grow, n in ((stackbert, 4), (gstack, 6)):
        out = grow(src, cfg(n_layer=n))
        assert len({k.split(".")[1] for k in out if k.startswith("blocks.")}) == n
        for j in range(n):
            for name in ("ln_1.weight", "attn.c_attn.weight", "mlp.c_proj.weight"):
                assert torch.equal(out[f"blocks.{j}.{name}"], s[f"blocks.{j % 2}.{name}"])
        for name in ("wte.weight", "wpe.weight", "ln_f.weight"):
            assert torch.equal(out[name], s[name])
    assert stack_order(3, 7) == [0, 1, 2, 0, 1, 2, 0]


def test_aki_takes_new_rows_from_the_block_above():
    src = source(bias=True)
    s = source_tensors(src)
    target = cfg(n_head=4, n_embd=32, bias=True)
    maps = copy_maps(src.config, target, generator=gen())
    a, f = aki(src, target, maps=maps), fpi(src, target, maps=maps)
    e, hid = maps.embd, maps.hidden[0]
    for name, rows, cols, n in (("mlp.c_fc", hid, e, 64), ("attn.c_proj", e, maps.v[0], 16),
                                ("mlp.c_proj", e, hid, 16)):
        w, above = a[f"blocks.0.{name}.weight"], _in_expand(s[f"blocks.1.{name}.weight"], cols, True)
        assert torch.equal(w[:n], f[f"blocks.0.{name}.weight"][:n])  # old units: FPI's rows
        assert torch.allclose(w[n:], above[rows[n:]])  # new units: block 1's rows
        assert torch.equal(a[f"blocks.0.{name}.bias"][n:], s[f"blocks.1.{name}.bias"][rows[n:]])
        assert torch.equal(a[f"blocks.1.{name}.weight"], f[f"blocks.1.{name}.weight"])  # the top block uses itself
    q, q_above = a["blocks.0.attn.c_attn.weight"][:32], _in_expand(s["blocks.1.attn.c_attn.weight"][:16], e, True)
    assert torch.allclose(q[16:], q_above[maps.q[0][16:]])  # new heads' query rows from block 1
    for name in ("wte.weight", "blocks.0.ln_1.weight", "ln_f.weight"):  # embeddings and LayerNorms: FPI
        assert torch.equal(a[name], f[name])
    x = tokens()
    assert (logits(affine_only(build_model(target, a)), x) - logits(affine_only(src), x)).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------ Mango
def test_blocks_round_trip():
    s = source_tensors(source())
    m = to_blocks(s, cfg())
    assert m.shape == (12, 16, 16, 2)
    for l, layer in enumerate(from_blocks(m)):
        for name, w in layer.items():
            assert torch.equal(w, s[f"blocks.{l}.{name}"])


def test_mango_rank_one_equals_four_mode_products():
    torch.manual_seed(0)
    m1 = torch.randn(12, 4, 4, 2)
    cores = [torch.randn(1, 12, 12, 1), torch.randn(1, 4, 6, 1), torch.randn(1, 4, 6, 1), torch.randn(1, 2, 3, 1)]
    want = m1
    for mode, core in enumerate(cores):  # M ×_mode S: contract the mode, put the new index in its place
        want = torch.movedim(torch.tensordot(want, core[0, :, :, 0], dims=([mode], [0])), -1, mode)
    close(tr_mpo(m1, *cores), want, tol=1e-4)


def test_mango_contraction_equals_the_explicit_operator():
    torch.manual_seed(0)
    R, (d1, d2, l1, l2) = 2, (2, 3, 2, 3)
    m1 = torch.randn(12, d1, d1, l1)
    s_b, s_i, s_o, s_l = (torch.randn(R, n1, n2, R) for n1, n2 in ((12, 12), (d1, d2), (d1, d2), (l1, l2)))
    # S[b1,b2,i1,i2,o1,o2,l1,l2] = Tr(S_B[:,b1,b2,:] S_I[:,i1,i2,:] S_O[:,o1,o2,:] S_L[:,l1,l2,:]),
    # by explicit R×R matrix products and a trace
    prod = torch.eye(R)
    for k, c in enumerate((s_b, s_i, s_o, s_l)):  # broadcast core k over its own two axes of 8, then multiply
        n1, n2 = c.shape[1:3]
        prod = prod @ c.permute(1, 2, 0, 3).reshape([1] * (2 * k) + [n1, n2] + [1] * (6 - 2 * k) + [R, R])
    s = prod.diagonal(dim1=-2, dim2=-1).sum(-1)
    s = s.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(m1.numel(), -1)  # (b1 i1 o1 l1) x (b2 i2 o2 l2)
    dense = (m1.reshape(1, -1) @ s).reshape(12, d2, d2, l2)
    close(tr_mpo(m1, s_b, s_i, s_o, s_l), dense, tol=1e-4)
    assert s.numel() == dense_operator_size(cfg(l1, 1, d1), cfg(l2, 1, d2))


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_mango_init_is_fpi_plus_stacking(rank, bias):
    src = source(bias)
    target = cfg(n_layer=4, n_head=3, n_embd=24, bias=bias)
    op = MangoOperator(src, target, rank=rank, noise=0.0, generator=gen())
    want = fpi(src, target, maps=mango_maps(src.config, target, op.g))
    got = op()
    assert set(got) == set(want)
    for k in want:
        close(got[k], want[k])
    noisy = MangoOperator(src, target, rank=rank, generator=gen())()["blocks.3.attn.c_attn.weight"]
    assert 0 < (noisy - want["blocks.3.attn.c_attn.weight"]).abs().max() < 0.1


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_mango_function_preserving_init_computes_the_sources_logits(bias, depth):
    src = source(bias)  # 2 × 16, LayerNorm included: the cyclic map with an integer width factor is exact
    target = cfg(n_layer=depth, n_head=4, n_embd=32, bias=bias)
    op = MangoOperator(src, target, rank=1, mapping="cyclic", init="function_preserving", generator=gen())
    x = tokens()
    close(logits(build_model(target, op()), x), logits(src, x), tol=2e-5)
    assert op.new_blocks == list(range(2, depth))  # target layer l copies source layer l mod 2; the rest are new
    grown = op()
    for l in op.new_blocks:  # new blocks copy the input side, write nothing into the residual stream
        assert grown[f"blocks.{l}.attn.c_proj.weight"].abs().max() == 0
        assert grown[f"blocks.{l}.mlp.c_proj.weight"].abs().max() == 0
        assert grown[f"blocks.{l}.attn.c_attn.weight"].abs().max() > 0
    # rank 2: the noise sits on off-diagonal bonds only, so the logits move by O(noise²) only
    op2 = MangoOperator(src, target, rank=2, mapping="cyclic", init="function_preserving", generator=gen())
    close(logits(build_model(target, op2()), x), logits(src, x), tol=1e-3)
    assert (op2.s_b[0, :, :, 1]).abs().max() > 0  # the off-diagonal bonds do get noise (and so gradients)
    # the copy init is not function-preserving with new blocks: it is FPI + stacking (see above)
    copy = MangoOperator(src, target, rank=1, mapping="cyclic", noise=0.0, generator=gen())
    if depth > 2:
        assert (logits(build_model(target, copy()), x) - logits(src, x)).abs().max() > 1e-2


def test_mango_function_preserving_gate_gets_gradients():
    src = source()
    target = cfg(n_layer=3, n_head=4, n_embd=32)
    op = MangoOperator(src, target, rank=1, mapping="cyclic", init="function_preserving", generator=gen())
    x = tokens()
    _, loss = functional_call(GPT(target), op(), (x, x))
    loss.backward()
    from leantrain.methods.growth.mango import BLOCKS
    assert op.gate.grad[BLOCKS.index("o"), 2] != 0 and op.gate.grad[BLOCKS.index("out0"), 2] != 0
    with pytest.raises(ConfigError, match="init: must be one of"):
        MangoOperator(src, target, init="identity")


# ------------------------------------------------------------------------------------------- LiGO
def test_ligo_one_hot_init_equals_copy_growth():
    src = source(bias=True)
    target = cfg(n_layer=4, n_head=4, n_embd=24, bias=True)  # LiGO leaves the head size free
    op = LiGOOperator(src, target, depth_init="stackbert", width_init="sel", generator=gen())
    sel = lambda c, n: torch.cat([torch.arange(n), c.argmax(1)])  # noqa: E731 — the one-hot rows as a map
    maps = WidthMaps(sel(op.width_embd, 16), *([sel(c, n) for c in cs] for cs, n in
                     ((op.width_q, 16), (op.width_k, 16), (op.width_v, 16), (op.width_fc, 64))))
    deep = stack_depth(source_tensors(src), stack_order(2, 4))
    want = copy_width(deep, 4, maps, divide=False)  # per target block maps: widen after stacking
    got = op()
    assert set(got) == set(want)
    for k in want:
        close(got[k], want[k])


def test_ligo_depth_inits():
    g = gen()
    assert torch.equal(depth_coefficients(4, 2, "stackbert", 0.03, g).argmax(1), torch.tensor([0, 1, 0, 1]))
    assert torch.equal(depth_coefficients(4, 2, "interlace", 0.03, g).argmax(1), torch.tensor([0, 0, 1, 1]))
    for scheme in ("stackbert_noisy", "rand"):
        w = depth_coefficients(4, 2, scheme, 0.03, g)
        close(w.sum(1), torch.ones(4))
        assert (w > 0).all()


# ------------------------------------------------------------------ operator sizes and gradients
def test_operator_parameter_counts_mango_much_less_than_ligo_much_less_than_dense():
    src, target = source(), cfg(n_layer=4, n_head=4, n_embd=32)
    d1, d2, l1, l2 = 16, 32, 2, 4
    ligo = LiGOOperator(src, target).num_parameters()
    assert ligo == d1 * (d2 - d1) + l2 * 19 * d1 * (d2 - d1) + l2 * 8 * l1
    mango = {r: MangoOperator(src, target, rank=r).num_parameters() for r in (1, 2)}
    for r, n in mango.items():
        assert n == r ** 2 * (12 ** 2 + 2 * d1 * d2 + l1 * l2) + d1 * d2 + l1 * l2 + d2
    # LiGO ≈ 19·L₂·D₁(D₂−D₁), Mango ≈ 2R²·D₁D₂: the gap shrinks as R² grows (README)
    assert 10 * mango[1] < ligo and mango[2] < ligo
    assert 1000 * ligo < MangoOperator(src, target).dense_size() == dense_operator_size(src.config, target)


@pytest.mark.parametrize("make", [lambda s, t: MangoOperator(s, t, rank=2, generator=gen()),
                                  lambda s, t: LiGOOperator(s, t, generator=gen())], ids=["mango", "ligo"])
def test_operator_training_reaches_every_parameter_through_functional_call(make):
    src = source(bias=True)
    target = cfg(n_layer=3, n_head=3, n_embd=24, bias=True)
    op, model = make(src, target), GPT(target)
    x, y = tokens(4), tokens(4, seed=2)
    loss = functional_call(model, op(), (x, y))[1]
    loss.backward()
    for name, p in op.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if isinstance(op, MangoOperator):  # the ring couples modes: off-diagonal bond entries learn too
        assert op.s_i.grad[0, :, :, 1].abs().sum() > 0
    assert all(p.grad is None for p in src.parameters()) and all(p.grad is None for p in model.parameters())
    opt = torch.optim.AdamW(op.parameters(), lr=1e-3)
    first = loss.item()
    for _ in range(5):
        opt.zero_grad()
        loss = functional_call(model, op(), (x, y))[1]
        loss.backward()
        opt.step()
    assert loss.item() < first
    baked = op.materialize()
    assert not any(t.requires_grad for t in baked.values())
    with torch.no_grad():
        close(logits(build_model(target, baked), x), functional_call(model.eval(), op(), (x,))[0])


# ----------------------------------------------------------------------------------- bad shapes
@pytest.mark.parametrize("grow, target, key", [
    (fpi, cfg(n_head=4, n_embd=24), "model.n_head"),                  # head size 8 -> 6
    (fpi, cfg(n_embd=8, n_head=1), "model.n_embd"),                   # shrink
    (stackbert, cfg(n_layer=3), "model.n_layer"),                     # not a doubling
    (gstack, cfg(n_layer=5), "model.n_layer"),                        # not a multiple
    (gstack, cfg(n_layer=4, n_head=4, n_embd=32), "model.n_embd"),    # G_stack keeps the width
    (lambda s, t: msg_grow(s, t), cfg(n_embd=24, n_head=2), "model.n_head"),
    (lambda s, t: MangoOperator(s, t), cfg(n_embd=24, n_head=4), "model.n_head"),
    (lambda s, t: LiGOOperator(s, t), GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=T, vocab_size=V + 1),
     "model.vocab_size"),
])
def test_bad_shapes_raise_a_one_line_config_error(grow, target, key):
    with pytest.raises(ConfigError) as err:
        grow(source(), target)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_bad_options_raise_config_errors():
    src, target = source(), cfg(n_layer=4, n_head=4, n_embd=32)
    for make in (lambda: MangoOperator(src, target, rank=0), lambda: LiGOOperator(src, target, depth_init="x"),
                 lambda: LiGOOperator(src, target, width_init="x"), lambda: fpi(src, target, mapping="x"),
                 lambda: msg_grow(src, target, new_blocks="x")):
        with pytest.raises(ConfigError):
            make()
