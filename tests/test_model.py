import pytest
import torch
import torch.nn.functional as F

from leantrain.models.gpt import GPT, SITES, BlockPlan, GPTConfig


def model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"n_layer": 3, "n_head": 4, "n_embd": 32, "block_size": 16, "vocab_size": 20, **kw}))


def test_forward_shapes_and_weight_tying():
    m = model()
    x, y = torch.randint(0, 20, (2, 2, 16))
    logits, loss = m(x, y)
    assert logits.shape == (2, 16, 20) and loss.ndim == 0
    assert m.lm_head.weight is m.wte.weight
    assert abs(loss.item() - torch.log(torch.tensor(20.0)).item()) < 0.3  # near-uniform at init


def test_plan_skips_blocks_exactly():
    m = model().train()
    x = torch.randint(0, 20, (2, 16))
    m.plan = [BlockPlan(0), BlockPlan(2, scale=0.5)]
    got = m(x)[0]
    h = m.embed(x)
    h = m.blocks[0](h)
    b = m.blocks[2]
    h = h + 0.5 * b.attn(b.ln_1(h))
    h = h + 0.5 * b.mlp(b.ln_2(h))
    assert torch.allclose(got, m.head(h), atol=1e-6)
    m.eval()  # evaluation always runs the full model, whatever the plan
    full = model().eval()(x)[0]
    assert torch.allclose(m(x)[0], full, atol=1e-6)


def _attention_with_head_mask(attn, x, keep):
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = torch.zeros(attn.n_head)
    mask[keep] = 1.0
    y = (y * mask[None, :, None, None]).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


def test_width_slicing_matches_masking_reference():
    m = model().train()
    blk = m.blocks[1]
    x = torch.randn(2, 16, 32)
    heads = torch.tensor([0, 3])
    sliced = blk.attn(x, heads=heads, width_scale=2.0)
    assert torch.allclose(sliced, 2.0 * _attention_with_head_mask(blk.attn, x, heads), atol=1e-5)
    hidden = torch.tensor([1, 5, 8, 100, 127])
    h = F.gelu(blk.mlp.c_fc(x))
    mask = torch.zeros(128)
    mask[hidden] = 1.0
    assert torch.allclose(blk.mlp(x, hidden=hidden), blk.mlp.c_proj(h * mask), atol=1e-5)


def test_width_slicing_gradients_only_touch_kept_units():
    m = model().train()
    heads = torch.tensor([1])
    m.plan = [BlockPlan(i, heads=heads, hidden=torch.arange(10)) for i in range(3)]
    x = torch.randint(0, 20, (2, 16))
    m(x, x)[1].backward()
    g = m.blocks[0].attn.c_attn.weight.grad.view(3, 4, 8, 32)  # (q/k/v, head, head_dim, C)
    assert g[:, 1].abs().sum() > 0 and g[:, [0, 2, 3]].abs().sum() == 0
    assert m.blocks[0].mlp.c_fc.weight.grad[10:].abs().sum() == 0


@pytest.mark.parametrize("site", SITES)
def test_every_dropout_site_is_live(site):
    m = model().train()
    x = torch.randint(0, 20, (2, 16))
    torch.manual_seed(1)
    clean = m(x)[0]
    m.set_dropout(0.5, site=site)
    rates = m.dropout_rates()
    assert (rates[site] == 0.5) if site == "embedding" else all(p == 0.5 for p in rates[site])
    assert all(rates[s] in (0.0, [0.0] * 3) for s in SITES if s != site)
    torch.manual_seed(1)
    assert not torch.allclose(m(x)[0], clean), f"{site} dropout did not change the output"
    m.eval()
    assert torch.allclose(m(x)[0], clean, atol=1e-6)  # dropout is the identity at evaluation


def test_attention_probability_dropout_reaches_sdpa(monkeypatch):
    m = model().train()
    m.set_dropout(0.3, site="attention", block=1)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        seen.append(kw.get("dropout_p"))
        return real(*a, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    m(torch.randint(0, 20, (1, 8)))
    assert seen == [0.0, 0.3, 0.0]


def test_generate_extends_prompt():
    m = model().eval()
    out = m.generate(torch.zeros(1, 1, dtype=torch.long), 20, top_k=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 21) and out.max() < 20
