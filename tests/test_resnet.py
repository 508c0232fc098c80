import math

import pytest
import torch
import torch.nn.functional as F

from leantrain.config import build
from leantrain.data import DataInfo
from leantrain.errors import ConfigError
from leantrain.measure import analytic_resnet_flops, count_step
from leantrain.models import BlockPlan, ResNet, ResNetConfig
from leantrain.registry import get_model, model_task

SIGNAL = DataInfo("classification", input_shape=(2, 13), num_classes=5)       # odd length on purpose
IMAGE = DataInfo("classification", input_shape=(3, 7, 9), num_classes=4)


def tiny(info=SIGNAL, seed=0, **kw) -> ResNet:
    cfg = build(ResNetConfig, {"depth": 14, "width": 0.3, **kw})
    cfg.adapt_to_data(info)
    torch.manual_seed(seed)
    return ResNet(cfg)


def batch(info, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *info.input_shape, generator=g), torch.randint(0, info.num_classes, (n,), generator=g)


def test_registered_as_a_classifier():
    _, cfg_cls = get_model("resnet")
    assert cfg_cls is ResNetConfig and model_task("resnet") == "classification"


@pytest.mark.parametrize("info", [SIGNAL, IMAGE], ids=["1d", "2d"])
@pytest.mark.parametrize("shortcut", ["projection", "padding"])
def test_logits_and_loss_shapes(info, shortcut):
    model = tiny(info, shortcut=shortcut)
    x, y = batch(info)
    logits, loss = model(x, y)
    assert logits.shape == (4, info.num_classes) and loss.dim() == 0
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model(x)[1] is None


def test_adapt_to_data_fills_from_the_data():
    cfg = ResNetConfig()
    cfg.adapt_to_data(SIGNAL)
    assert (cfg.dims, cfg.in_channels, cfg.num_classes) == (1, 2, 5)
    cfg = ResNetConfig(num_classes=7)
    cfg.adapt_to_data(IMAGE)
    assert (cfg.dims, cfg.in_channels, cfg.num_classes) == (2, 3, 7)  # more classes than the data: kept


@pytest.mark.parametrize("cfg, info, culprit", [
    (ResNetConfig(dims=2), SIGNAL, "model.dims"),
    (ResNetConfig(dims=1), IMAGE, "model.dims"),
    (ResNetConfig(in_channels=1), IMAGE, "model.in_channels"),
    (ResNetConfig(num_classes=3), IMAGE, "model.num_classes"),
    (ResNetConfig(), DataInfo("lm", vocab_size=65), "model.name"),
    (ResNetConfig(), DataInfo("classification", input_shape=(1, 2, 3, 4), num_classes=2), "model.dims"),
])
def test_adapt_to_data_refuses_what_it_cannot_take(cfg, info, culprit):
    with pytest.raises(ConfigError, match=culprit):
        cfg.adapt_to_data(info)


@pytest.mark.parametrize("depth", [0, 2, 9, 33, 100])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ConfigError, match="depth"):
        build(ResNetConfig, {"depth": depth})


def test_valid_depths_and_other_checks():
    for depth in (8, 14, 20, 32, 44, 56, 110):
        assert build(ResNetConfig, {"depth": depth}).depth == depth
    for bad in ({"width": 0.0}, {"dims": 3}, {"num_classes": 0}, {"shortcut": "identity"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build(ResNetConfig, bad)


@pytest.mark.parametrize("info", [SIGNAL, IMAGE], ids=["1d", "2d"])
def test_units_compose_to_forward_and_report_their_shapes(info):
    model = tiny(info)
    x, _ = batch(info)
    h, shapes = x, []
    for unit in model.units:
        h = unit(h)
        shapes.append(tuple(h.shape[1:]))
    assert torch.equal(h, model(x)[0])
    assert len(model.units) == 3 * 2 + 2
    assert shapes == model.unit_shapes(info.input_shape)
    assert [s[0] for s in shapes] == list(model.unit_channels)
    # width 0.3: 16, 32, 64 -> 5, 10, 19 channels; strides 1 (stem, stage 1), 2, 4; head: a vector
    assert model.unit_channels == (5, 5, 5, 10, 10, 19, 19, info.num_classes)
    assert model.unit_strides == (1, 1, 1, 2, 2, 4, 4, None)
    sizes = [s[1:] for s in shapes[:-1]]
    full = tuple(info.input_shape[1:])
    assert sizes[0] == full and sizes[-1] == tuple(math.ceil(d / 4) for d in full)


def test_always_run_are_the_downsampling_blocks():
    model = tiny()
    assert model.always_run == (2, 4)
    assert [i for i, b in enumerate(model.blocks) if b.conv1.stride[0] == 2] == [2, 4]
    assert tiny(shortcut="padding").always_run == (2, 4)


@pytest.mark.parametrize("plan, message", [
    ([BlockPlan(i) for i in (0, 1, 3, 4, 5)], "always run"),
    ([BlockPlan(i) for i in (0, 2, 1, 4)], "increasing"),
    ([BlockPlan(i) for i in (2, 4, 6)], "increasing"),
    ([BlockPlan(i, hidden=torch.arange(2)) for i in (2, 4)], "width"),
])
def test_bad_plans_are_refused(plan, message):
    model = tiny()
    model.plan = plan
    with pytest.raises(ValueError, match=message):
        model(batch(SIGNAL)[0])


def test_plan_skips_blocks_and_scales_branches_exactly():
    model = tiny()
    x, _ = batch(SIGNAL)
    model.plan = [BlockPlan(0), BlockPlan(2), BlockPlan(3, scale=0.5), BlockPlan(4)]
    logits = model(x)[0]
    # Reference written out by hand: block 1 and 5 are the identity; block 3's branch is halved.
    b = model.blocks
    h = b[2](b[0](model.stem(x)))
    branch = b[3].bn2(b[3].conv2(F.relu(b[3].bn1(b[3].conv1(h)))))
    h = b[4](F.relu(0.5 * branch + h))
    assert torch.allclose(logits, model.head(h), atol=1e-6)
    # A block run with scale 0 is the identity too: its input is a ReLU output.
    zeroed = [BlockPlan(0), BlockPlan(1, scale=0.0), BlockPlan(2), BlockPlan(3, scale=0.5), BlockPlan(4),
              BlockPlan(5, scale=0.0)]
    model.plan = zeroed
    assert torch.allclose(model(x)[0], logits, atol=1e-6)


def test_eval_ignores_the_plan():
    model = tiny()
    x, _ = batch(SIGNAL)
    model.train()
    model(x)  # give BN running stats something to hold
    model.eval()
    full = model(x)[0]
    model.plan = [BlockPlan(2), BlockPlan(4)]
    assert torch.equal(model(x)[0], full)


def test_shape_key_names_the_blocks_a_plan_runs():
    model = tiny()
    base = model.shape_key()
    model.plan = [BlockPlan(0), BlockPlan(2), BlockPlan(4)]
    key_a = model.shape_key()
    model.plan = [BlockPlan(2), BlockPlan(4), BlockPlan(5)]  # same length, costlier blocks
    assert len({base, key_a, model.shape_key()}) == 3
    model.eval()
    assert model.shape_key() == base
    assert tiny(width=0.5).shape_key() != base


def step_flops(model, x, y, train: bool) -> int:
    def step():
        logits, loss = model(x, y)
        if train:
            loss.backward()
    return count_step(step, model.parameters())[0]


@pytest.mark.parametrize("info", [SIGNAL, IMAGE], ids=["1d", "2d"])
@pytest.mark.parametrize("shortcut", ["projection", "padding"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "forward"])
def test_measured_flops_equal_the_analytic_count(info, shortcut, train):
    model = tiny(info, shortcut=shortcut)
    x, y = batch(info, n=3)
    expected = analytic_resnet_flops(14, info.input_shape, info.num_classes, 3, width=0.3,
                                     shortcut=shortcut, train=train)
    assert step_flops(model, x, y, train) == expected
    model.plan = [BlockPlan(i) for i in (1, 2, 4)]
    expected = analytic_resnet_flops(14, info.input_shape, info.num_classes, 3, width=0.3,
                                     shortcut=shortcut, train=train, blocks=(1, 2, 4))
    assert step_flops(model, x, y, train) == expected


def test_analytic_flops_by_hand():
    # ResNet-8 (one block per stage), width 1/16 -> 1, 2, 4 channels, one 1-channel signal of length 4,
    # 2 classes, batch 1, projection shortcuts. Forward MACs: stem 4·3·1·1 = 12; block 0: 2 convs
    # 4·3·1·1 = 24; block 1 (length 2): 2·3·(1·2 + 2·2) + 2·1·2 = 40; block 2 (length 1):
    # 1·3·(2·4 + 4·4) + 1·2·4 = 80; fc 4·2 = 8. Total 164 MACs = 328 FLOPs; training: 3·328 − 24.
    assert analytic_resnet_flops(8, (1, 4), 2, 1, width=1 / 16, train=False) == 328
    assert analytic_resnet_flops(8, (1, 4), 2, 1, width=1 / 16) == 3 * 328 - 24


def resnet_params(n: int, widths: tuple[int, int, int], c_in: int, classes: int, projection: bool) -> int:
    """Parameter count written from the architecture: 3×3 convs without bias, BN (γ, β) after each."""
    def conv_bn(a, b, k):
        return k * a * b + 2 * b
    total = conv_bn(c_in, widths[0], 9)
    prev = widths[0]
    for w in widths:
        total += conv_bn(prev, w, 9) + conv_bn(w, w, 9) + (n - 1) * 2 * conv_bn(w, w, 9)
        if projection and prev != w:
            total += conv_bn(prev, w, 1)
        prev = w
    return total + widths[-1] * classes + classes


def test_resnet32_parameter_count():
    info = DataInfo("classification", input_shape=(3, 32, 32), num_classes=10)
    counts = {}
    for shortcut in ("projection", "padding"):
        cfg = ResNetConfig(depth=32, shortcut=shortcut)
        cfg.adapt_to_data(info)
        counts[shortcut] = ResNet(cfg).num_params()
        assert counts[shortcut] == resnet_params(5, (16, 32, 64), 3, 10, shortcut == "projection")
    # He et al. report 0.46M for ResNet-32 (option A); the projections add 2·(conv1×1 + BN).
    assert counts == {"projection": 466_906, "padding": 464_154}


def test_init_follows_the_reference_code():
    info = DataInfo("classification", input_shape=(3, 8, 8), num_classes=10)
    cfg = ResNetConfig(depth=8)
    cfg.adapt_to_data(info)
    torch.manual_seed(0)
    model = ResNet(cfg)
    w = model.blocks[2].conv2.weight  # 64·64·3·3 weights: std √(2 / (9·64))
    assert abs(w.std().item() / math.sqrt(2 / (9 * 64)) - 1) < 0.03 and abs(w.mean().item()) < 2e-3
    assert torch.equal(model.blocks[0].bn1.weight, torch.ones(16))
    assert torch.equal(model.blocks[0].bn1.bias, torch.zeros(16))
