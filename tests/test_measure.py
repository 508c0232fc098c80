import torch

from leantrain.measure import StepMeter, analytic_gpt_flops, count_step, saved_tensor_bytes
from leantrain.models.gpt import GPT, BlockPlan, GPTConfig


def step_fn(m, x):
    def fn():
        loss = m(x, x)[1]
        loss.backward()
        return loss
    return fn


def test_flops_match_analytic_count():
    for L, C, T, B in [(2, 32, 16, 3), (3, 64, 32, 2)]:
        m = GPT(GPTConfig(n_layer=L, n_head=4, n_embd=C, block_size=T, vocab_size=50))
        x = torch.randint(0, 50, (B, T))
        flops, _, _ = count_step(step_fn(m, x), m.parameters())
        assert flops == analytic_gpt_flops(L, C, T, 50, B)


def test_skipped_blocks_cost_nothing():
    L, C, T, B, V = 4, 32, 16, 2, 40
    m = GPT(GPTConfig(n_layer=L, n_head=2, n_embd=C, block_size=T, vocab_size=V)).train()
    x = torch.randint(0, V, (B, T))
    full, _, _ = count_step(step_fn(m, x), m.parameters())
    m.plan = [BlockPlan(0), BlockPlan(3)]
    half, _, _ = count_step(step_fn(m, x), m.parameters())
    head = analytic_gpt_flops(0, C, T, V, B)
    assert half - head == (full - head) // 2


def test_saved_bytes_dedupe_storages_and_skip_parameters():
    w = torch.nn.Parameter(torch.randn(64, 64))
    x = torch.randn(8, 64, requires_grad=True)
    with saved_tensor_bytes([w]) as rec:
        y = x @ w   # saves x (2 KiB) and w (a parameter: excluded)
        z = (y * y).sum()  # saves y once though used twice
    z.backward()
    assert rec.bytes == 8 * 64 * 4 * 2


def test_meter_caches_per_key():
    m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=10))
    x = torch.randint(0, 10, (2, 8))
    meter = StepMeter()
    for _ in range(3):
        meter.step("a", step_fn(m, x), m.parameters())
    assert len(meter.flops_by_key) == 1 and meter.total_flops == 3 * meter.flops_by_key["a"]
    assert meter.peak_activation_bytes > 0


def test_peak_live_bytes_fall_as_one_over_k_when_modules_free_their_graphs():
    """8 identical Linear+ReLU units: each saves its input (Linear) and its output (ReLU), which is
    the next unit's input, so a chain of n units saves n + 1 activations of B×d floats. Trained in
    K gradient-isolated modules (backward right after each, the output detached), at most
    n/K + 1 of them are alive at once; the total counts each boundary activation twice."""
    from leantrain.measure import measure_step
    torch.manual_seed(0)
    n, B, d = 8, 16, 32
    units = [torch.nn.Sequential(torch.nn.Linear(d, d, bias=False), torch.nn.ReLU()) for _ in range(n)]
    params = [p for u in units for p in u.parameters()]
    x = torch.randn(B, d)
    act = B * d * 4

    def train(K):
        def fn():
            h = x
            per = n // K
            for k in range(K):
                for u in units[k * per:(k + 1) * per]:
                    h = u(h)
                (h * h).sum().backward()  # saves h: already counted (the ReLU's output)
                h = h.detach()
        return fn
    _, total, peak, _ = measure_step(train(1), params)
    assert total == peak == (n + 1) * act
    for K in (2, 4, 8):
        _, total, peak, _ = measure_step(train(K), params)
        assert peak == (n // K + 1) * act and total == (n + K) * act
