"""Classification data kinds: reading, checks, splits, normalisation, seeded resumable batches,
augmentation, and one-line errors for bad input."""
import numpy as np
import pytest
import torch

from leantrain import ConfigError, LeantrainError, Recipe
from leantrain.data.arrays import (CIFAR_RECORD, Cifar10Config, Cifar10Task, NpzConfig, NpzTask, crop_flip_images,
                                   shift_signals)
from leantrain.data.mnist1d import MNIST1DConfig, MNIST1DTask


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def npz_task(tmp_path, n=50, shape=(8,), classes=3, **cfg):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = np.arange(n) % classes
    return NpzTask(NpzConfig(path=write_npz(tmp_path / "d.npz", x=x, y=y), **cfg))


def test_npz_splits_shapes_and_normalisation(tmp_path):
    t = npz_task(tmp_path, n=50, shape=(8,), val_fraction=0.2)
    assert t.x_train.shape == (40, 1, 8) and t.x_val.shape == (10, 1, 8) and t.x_test is None
    assert t.splits == ("train", "val")
    info = t.info()
    assert info.task == "classification" and info.input_shape == (1, 8) and info.num_classes == 3
    # the carve is a seeded permutation: the same every time, and disjoint
    again = npz_task(tmp_path, n=50, shape=(8,), val_fraction=0.2)
    assert torch.equal(t.x_val, again.x_val)
    x = t.normalise(t.raw(t.x_train))
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=True).item() - 1) < 1e-3


def test_npz_images_uint8_and_explicit_splits(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(20, 3, 4, 4), dtype=np.uint8)
    path = write_npz(tmp_path / "img.npz", x=x, y=np.arange(20) % 4, x_val=x[:5], y_val=np.arange(5) % 4,
                     x_test=x[:6], y_test=np.arange(6) % 4)
    t = NpzTask(NpzConfig(path=path))
    assert t.x_train.dtype == torch.uint8 and t.x_train.shape == (20, 3, 4, 4)
    assert len(t.y_val) == 5 and t.splits == ("train", "val", "test")
    assert t.mean.shape == (1, 3, 1, 1)
    expect = torch.from_numpy(x).float().div(255).transpose(0, 1).reshape(3, -1).mean(1)
    assert torch.allclose(t.mean.flatten(), expect)
    (xb, yb), = t.eval_batches("test", 256, None)
    assert xb.shape == (6, 3, 4, 4) and xb.dtype == torch.float32 and torch.equal(yb, torch.arange(6) % 4)


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.zeros(4)}, "has no 'x' array"),
    ({"x": np.zeros((4, 3))}, "has no 'y' array"),
    ({"x": np.zeros((4, 3)), "y": np.zeros(5, int)}, "x has 4 samples but y has 5 labels"),
    ({"x": np.zeros((4, 3)), "y": np.array([0, 1, -1, 0])}, "labels must be ≥ 0"),
    ({"x": np.zeros((4, 3)), "y": np.array([0, 1.5, 1, 0])}, "labels must be integers"),
    ({"x": np.zeros((4, 3)), "y": np.array(["a", "b", "c", "d"])}, "labels must be integers"),
    ({"x": np.array([[0, np.nan, 0]] * 4), "y": np.arange(4) % 2}, "x contains NaN or Inf"),
    ({"x": np.array([[0, np.inf, 0]] * 4), "y": np.arange(4) % 2}, "x contains NaN or Inf"),
    ({"x": np.zeros(4), "y": np.arange(4) % 2}, "x must be N×L, N×C×L or N×C×H×W"),
    ({"x": np.zeros((0, 3)), "y": np.zeros(0, int)}, "leaves an empty split"),
    ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "x_test": np.zeros((2, 3)), "y_test": np.array([0, 7])},
     "a test label is 7, but the training labels implies 2 classes"),
    ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "x_test": np.zeros((2, 4)), "y_test": np.array([0, 1])},
     "different sample shapes"),
    ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "x_test": np.zeros((2, 3))}, "without 'y_test'"),
])
def test_bad_npz_is_a_one_line_error(tmp_path, arrays, message):
    with pytest.raises(LeantrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NpzTask(NpzConfig(path=write_npz(tmp_path / "bad.npz", **arrays)))


def test_npz_file_problems(tmp_path):
    with pytest.raises(LeantrainError, match="npz data file not found"):
        NpzTask(NpzConfig(path=str(tmp_path / "missing.npz")))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(LeantrainError, match="cannot read npz data"):
        NpzTask(NpzConfig(path=str(tmp_path / "junk.npz")))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(LeantrainError, match="cannot read npz data"):  # object arrays would need pickle
        NpzTask(NpzConfig(path=str(tmp_path / "obj.npz")))
    np.savez(tmp_path / "three.npz", x=np.zeros((6, 3)), y=np.array([0, 1, 2, 0, 1, 2]))
    with pytest.raises(LeantrainError, match="label is 2, but num_classes implies 2 classes"):
        NpzTask(NpzConfig(path=str(tmp_path / "three.npz"), num_classes=2, val_fraction=0.5))


def write_cifar(root, records=(3, 3, 3, 3, 3), test=2, truncate=None, skip=None):
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name, n in zip(names, (*records, test)):
        if name == skip:
            continue
        rec = rng.integers(0, 256, size=(n, CIFAR_RECORD), dtype=np.uint8)
        rec[:, 0] = np.arange(n) % 10
        data = rec.tobytes()
        if name == truncate:
            data = data[:-7]
        (root / name).write_bytes(data)
    return str(root)


def test_cifar10_binary_reader(tmp_path):
    t = Cifar10Task(Cifar10Config(path=write_cifar(tmp_path / "c"), val_fraction=0.2))
    assert len(t.y_train) + len(t.y_val) == 15 and len(t.y_val) == 3 and len(t.y_test) == 2
    assert t.x_train.shape[1:] == (3, 32, 32) and t.x_train.dtype == torch.uint8
    assert t.info().num_classes == 10 and t.cfg.augment  # CIFAR ResNet recipe by default
    # a record is label byte + 3072 pixel bytes, channel-major
    raw = np.fromfile(tmp_path / "c" / "test_batch.bin", dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    assert torch.equal(t.x_test[1], torch.from_numpy(raw[1, 1:].reshape(3, 32, 32)))
    assert t.y_test.tolist() == raw[:, 0].tolist()


@pytest.mark.parametrize("kw, message", [
    ({"skip": "data_batch_3.bin"}, "lacks data_batch_3.bin"),
    ({"skip": "test_batch.bin"}, "lacks test_batch.bin"),
    ({"truncate": "data_batch_2.bin"}, "is truncated or not the binary version"),
])
def test_cifar10_bad_directories(tmp_path, kw, message):
    with pytest.raises(LeantrainError, match=message):
        Cifar10Task(Cifar10Config(path=write_cifar(tmp_path / "c", **kw)))
    with pytest.raises(LeantrainError, match="CIFAR-10 directory not found"):
        Cifar10Task(Cifar10Config(path=str(tmp_path / "nowhere")))


def test_epoch_sampler_covers_each_epoch_and_resumes(tmp_path):
    t = npz_task(tmp_path, n=50, val_fraction=0.2)  # 40 training samples
    s = t.sampler(16, seed=3, rank=0, world=1, model_cfg=None)
    seen = torch.cat([s.next()[1] for _ in range(5)])  # 80 samples = exactly 2 epochs
    assert len(seen) == 80
    assert sorted(seen[:40].tolist()) == sorted(t.y_train.tolist())  # an epoch is a permutation
    state = {k: v.clone() for k, v in s.state().items()}
    nxt = s.next()
    s2 = t.sampler(16, seed=3, rank=0, world=1, model_cfg=None)
    s2.load_state(state)
    assert all(torch.equal(a, b) for a, b in zip(s2.next(), nxt))
    other = t.sampler(16, seed=4, rank=0, world=1, model_cfg=None).next()[1]
    assert not torch.equal(other, t.sampler(16, seed=3, rank=0, world=1, model_cfg=None).next()[1])


def test_ranks_draw_from_disjoint_shards(tmp_path):
    x = np.arange(60, dtype=np.float32)[:, None].repeat(4, 1)
    t = NpzTask(NpzConfig(path=write_npz(tmp_path / "d.npz", x=x, y=np.arange(60) % 2), val_fraction=0.5))
    r0, r1 = (t.sampler(30, seed=0, rank=r, world=2, model_cfg=None) for r in (0, 1))
    r0.next(), r1.next()
    assert set(r0.perm.tolist()).isdisjoint(r1.perm.tolist()) and len(r0.perm) + len(r1.perm) == 30


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.arange(2 * 1 * 10, dtype=torch.float32).view(2, 1, 10)
    a = shift_signals(x, 3, torch.Generator().manual_seed(0))
    b = shift_signals(x, 3, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    for i in range(2):  # each signal is a circular shift of itself by at most 3
        assert any(torch.equal(a[i, 0], torch.roll(x[i, 0], k)) for k in range(-3, 4))
    img = torch.rand(4, 3, 6, 6)
    c = crop_flip_images(img, 2, True, torch.Generator().manual_seed(1))
    assert c.shape == img.shape
    padded = torch.nn.functional.pad(img, (2,) * 4)
    for i in range(4):  # every output is a crop of the padded image, possibly flipped
        crops = [padded[i, :, r:r + 6, q:q + 6] for r in range(5) for q in range(5)]
        assert any(torch.equal(c[i], k) or torch.equal(c[i], k.flip(-1)) for k in crops)


def test_mnist1d_default_set_and_options():
    t = MNIST1DTask(MNIST1DConfig())
    assert (len(t.y_train), len(t.y_val), len(t.y_test)) == (3600, 400, 1000)
    assert t.info().input_shape == (1, 40) and t.info().num_classes == 10
    state = np.random.get_state()[1][:4].copy()
    small = MNIST1DTask(MNIST1DConfig(num_samples=200, train_samples=100, iid_noise_scale=0.1))
    assert (len(small.y_train) + len(small.y_val), len(small.y_test)) == (100, 40)
    assert (np.random.get_state()[1][:4] == state).all()  # the package's global seeding is undone


def test_recipe_picks_the_data_kind_by_name(tmp_path):
    r = Recipe.from_dict({"data": {"name": "mnist1d", "augment": True}})
    assert r.data_name == "mnist1d" and isinstance(r.data, MNIST1DConfig) and r.data.augment
    assert r.to_dict()["data"]["name"] == "mnist1d"
    assert Recipe.from_dict({}).data_name == "text"
    with pytest.raises(ConfigError, match="unknown data kind 'mnist1' \\(did you mean 'mnist1d'\\?\\)"):
        Recipe.from_dict({"data": {"name": "mnist1"}})
    with pytest.raises(ConfigError, match="unknown config key 'data.block_size'"):
        Recipe.from_dict({"data": {"name": "mnist1d", "block_size": 3}})
    with pytest.raises(ConfigError, match="data.path: give the .npz file"):
        Recipe.from_dict({"data": {"name": "npz"}})
