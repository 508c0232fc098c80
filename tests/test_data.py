import pytest
import torch

from leantrain import LeantrainError
from leantrain.data import BUNDLED, BatchSampler, TextTask, TextConfig, fixed_batches


def test_bundled_corpus_and_split():
    d = TextTask(TextConfig())
    assert d.path == BUNDLED
    n = len(d.train) + len(d.val)
    assert 1_000_000 <= n <= 1_200_000
    assert abs(len(d.val) / n - 0.1) < 1e-3
    assert d.decode(d.train[:20].tolist()) == BUNDLED.read_text()[:20]


def test_sampling_is_seeded_and_resumable():
    d = TextTask(TextConfig())
    a, b = BatchSampler(d.train, 16, 4, seed=1), BatchSampler(d.train, 16, 4, seed=1)
    x1, y1 = a.next()
    assert torch.equal(x1, b.next()[0])
    assert torch.equal(y1[:, :-1], x1[:, 1:])  # targets are inputs shifted by one
    state = a.state()
    nxt = a.next()[0]
    b.load_state(state)
    assert torch.equal(b.next()[0], nxt)
    assert not torch.equal(BatchSampler(d.train, 16, 4, seed=2).next()[0], x1)


def test_ranks_sample_disjoint_shards():
    data = torch.arange(1000)
    r0 = BatchSampler(data, 8, 64, seed=0, rank=0, world=2).next()[0]
    r1 = BatchSampler(data, 8, 64, seed=0, rank=1, world=2).next()[0]
    assert r0.max() < 500 <= r1.min()


def test_validation_batches_are_fixed():
    d = TextTask(TextConfig())
    a = fixed_batches(d.val, 16, 4, 3, seed=7)
    b = fixed_batches(d.val, 16, 4, 3, seed=7)
    assert len(a) == 3 and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))


@pytest.mark.parametrize("content, message", [
    (None, "data file not found"),
    (b"", "data file is empty"),
    (b"  \n\n", "data file is empty"),
    (b"abc\x00\x01\x02def", "looks binary"),
    (b"\xff\xfe\xfa bad", "not UTF-8"),
])
def test_bad_data_files(tmp_path, content, message):
    f = tmp_path / "text.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(LeantrainError, match=message):
        TextTask(TextConfig(path=str(f)))


def test_block_size_longer_than_data(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("hello world, " * 20)
    d = TextTask(TextConfig(path=str(f)))
    with pytest.raises(LeantrainError, match="block_size=64 is longer than the validation split"):
        d.check_block_size(64, 4)
