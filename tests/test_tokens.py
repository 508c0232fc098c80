"""Token data: nanoGPT-format shards (``tokens``), ``leantrain tokenize``, local Hugging Face
datasets (``hf``), decoding through the run's tokenizer, and one-line errors for bad input."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from leantrain import LeantrainError, Recipe, Trainer
from leantrain.cli import main, sample_text
from leantrain.data import TextConfig, TextTask
from leantrain.data import shards as shards_mod
from leantrain.data import tokens as tokens_mod
from leantrain.data.tokenizer import load_tokenizer
from leantrain.data.tokens import TokensConfig, TokensTask

from .conftest import read_metrics, tiny

TEXT = ("First Citizen:\r\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "Café — naïve 日本語 😀 tabs\there   and  spaces  \n") * 200


def char_shards(directory: Path, meta: dict | None = None, dtype=np.uint16) -> TextTask:
    """The bundled corpus, character-encoded, as numpy-written nanoGPT shards (what prepare.py does)."""
    text = TextTask(TextConfig())
    directory.mkdir(parents=True, exist_ok=True)
    text.train.numpy().astype(dtype).tofile(directory / "train.bin")
    text.val.numpy().astype(dtype).tofile(directory / "val.bin")
    if meta is not False:
        (directory / "meta.json").write_text(json.dumps(meta or {"vocab_size": text.vocab_size}))
    return text


def tokens_recipe(path, **sections):
    return Recipe.from_dict(tiny(data={"name": "tokens", "path": str(path)}, **sections))


# ------------------------------------------------------------------------------------ tokens kind
def test_numpy_shards_train_like_text_and_resume_bit_exactly(tmp_path):
    char_shards(tmp_path / "d")
    # same ids, same sampler, same fixed eval windows as the text kind: identical runs
    text_run = Trainer(Recipe.from_dict(tiny()), tmp_path / "text", verbose=False, progress=False).fit()
    full = Trainer(tokens_recipe(tmp_path / "d"), tmp_path / "full", verbose=False, progress=False).fit()
    assert full["final_val_loss"] == text_run["final_val_loss"]
    assert [r.get("train_loss") for r in read_metrics(tmp_path / "full")] == \
        [r.get("train_loss") for r in read_metrics(tmp_path / "text")]
    Trainer(tokens_recipe(tmp_path / "d"), tmp_path / "part", verbose=False, progress=False).fit(until=6)
    Trainer(tokens_recipe(tmp_path / "d"), tmp_path / "part", resume=tmp_path / "part", verbose=False,
            progress=False).fit()
    full_rows, part_rows = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [r.get("train_loss") for r in part_rows] == [r.get("train_loss") for r in full_rows]
    assert [r.get("val_loss") for r in part_rows] == [r.get("val_loss") for r in full_rows]


def test_uint32_and_recipe_vocab_and_test_split(tmp_path):
    text = char_shards(tmp_path / "d", meta=False, dtype=np.uint32)
    text.val[:100].numpy().astype(np.uint32).tofile(tmp_path / "d" / "test.bin")
    t = TokensTask(TokensConfig(path=str(tmp_path / "d"), dtype="uint32", vocab_size=text.vocab_size))
    assert t.splits == ("train", "val", "test") and t.tokens("train") == len(text.train)
    assert isinstance(t.arrays["train"], np.memmap)
    x, y = t.windows("train", torch.tensor([0, 5]), 8)
    assert torch.equal(x[1], text.train[5:13]) and torch.equal(y[1], text.train[6:14]) and x.dtype == torch.long


def test_whole_split_is_every_window_or_a_fixed_subset(tmp_path):
    text = char_shards(tmp_path / "d")
    cfg = Recipe.from_dict(tiny()).model
    every = TokensTask(TokensConfig(path=str(tmp_path / "d"), eval_windows=0))
    batches = every.eval_batches("val", 64, cfg, whole=True)
    n = (len(text.val) - 1) // 16
    assert sum(len(x) for x, _ in batches) == n and not every.is_subset("val", 16)
    ref = text.eval_batches("val", 64, cfg, whole=True)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, ref))
    assert len(batches[1::2]) == len(ref[1::2])  # sliced lazily per rank
    capped = TokensTask(TokensConfig(path=str(tmp_path / "d"), eval_windows=100))
    starts = capped.whole_starts("val", 16)
    assert len(starts) == 100 and capped.is_subset("val", 16)
    assert torch.equal(starts, starts.sort().values) and bool((starts % 16 == 0).all())
    assert torch.equal(starts, TokensTask(TokensConfig(path=str(tmp_path / "d"), eval_windows=100))
                       .whole_starts("val", 16))  # fixed: the same every time


def test_an_id_beyond_the_vocabulary_is_caught_in_the_batch_that_reads_it(tmp_path, monkeypatch):
    char_shards(tmp_path / "d")
    ids = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16)
    ids[500_000] = 80
    ids.tofile(tmp_path / "d" / "train.bin")
    with pytest.raises(LeantrainError, match=r"token id 80 at position 500000 of .*train.bin is ≥ vocab_size 77"):
        TokensTask(TokensConfig(path=str(tmp_path / "d")))  # a small split: every id checked at start
    monkeypatch.setattr(tokens_mod, "FULL_CHECK_TOKENS", 1000)  # now a sample of chunks, missing it
    monkeypatch.setattr(tokens_mod, "CHUNK_TOKENS", 100)
    t = TokensTask(TokensConfig(path=str(tmp_path / "d")))
    with pytest.raises(LeantrainError, match="token id 80 at position 500000"):
        t.windows("train", torch.tensor([10, 499_990]), 16)


def test_fingerprint_is_json_and_follows_the_content(tmp_path):
    char_shards(tmp_path / "d")
    fp = TokensTask(TokensConfig(path=str(tmp_path / "d"))).fingerprint()
    assert json.loads(json.dumps(fp)) == fp and fp["kind"] == "tokens"
    ids = np.fromfile(tmp_path / "d" / "val.bin", dtype=np.uint16)
    ids[-1] = (ids[-1] + 1) % 77
    ids.tofile(tmp_path / "d" / "val.bin")
    assert TokensTask(TokensConfig(path=str(tmp_path / "d"))).fingerprint() != fp


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status")


def test_a_2gb_sparse_shard_opens_without_being_read(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    with open(d / "train.bin", "wb") as f:
        f.truncate(2 << 30)  # 1 G zero ids, no blocks on disk
    if os.stat(d / "train.bin").st_blocks * 512 > 1 << 20:
        pytest.skip("this filesystem does not keep sparse files")
    np.arange(5000, dtype=np.uint16).__mod__(50).tofile(d / "val.bin")
    (d / "meta.json").write_text(json.dumps({"vocab_size": 50}))
    before, t0 = rss_bytes(), time.perf_counter()
    task = TokensTask(TokensConfig(path=str(d)))
    x, y = task.sampler(8, 0, 0, 1, Recipe.from_dict(tiny()).model).next()
    elapsed, grown = time.perf_counter() - t0, rss_bytes() - before
    assert task.tokens("train") == 1 << 30 and isinstance(task.arrays["train"], np.memmap)
    assert x.shape == (8, 16) and int(x.max()) == 0
    assert grown < 64 << 20, f"RSS grew by {grown / 2**20:.0f} MiB"  # reading it would cost 2 GiB
    assert elapsed < 10


def _bad_dir(tmp_path, case):
    d = tmp_path / "d"
    if case == "missing":
        return tmp_path / "nowhere"
    if case == "file":
        (tmp_path / "f.bin").write_bytes(b"\0\0")
        return tmp_path / "f.bin"
    char_shards(d)
    if case == "no_val":
        (d / "val.bin").unlink()
    elif case == "pickle":
        (d / "meta.json").unlink()
        (d / "meta.pkl").write_bytes(b"\x80\x04K\x01.")
    elif case == "no_vocab":
        (d / "meta.json").unlink()
    elif case == "odd_size":
        with open(d / "val.bin", "ab") as f:
            f.write(b"\1")
    elif case == "empty":
        (d / "val.bin").write_bytes(b"")
    elif case == "big_id":
        np.array([1, 2, 99] * 100, dtype=np.uint16).tofile(d / "val.bin")
    elif case == "short":
        np.array([1, 2, 3] * 3, dtype=np.uint16).tofile(d / "val.bin")
    elif case == "bad_json":
        (d / "meta.json").write_text("{vocab_size: 65")
    elif case == "bad_meta_vocab":
        (d / "meta.json").write_text(json.dumps({"vocab_size": "77"}))
    elif case == "dtype_clash":
        (d / "meta.json").write_text(json.dumps({"vocab_size": 77, "dtype": "uint32"}))
    elif case == "huge_vocab":
        (d / "meta.json").write_text(json.dumps({"vocab_size": 70000}))
    elif case == "no_tokenizer":
        (d / "meta.json").write_text(json.dumps({"vocab_size": 77, "tokenizer": "tokenizer.json"}))
    return d


@pytest.mark.parametrize("case, message", [
    ("missing", "token data directory not found"),
    ("file", "token data path is not a directory"),
    ("no_val", "has no val.bin"),
    ("pickle", "meta.pkl is a pickle and leantrain never unpickles; write a meta.json beside the shards "
               'instead, e.g. {"vocab_size": 65, "dtype": "uint16"}'),
    ("no_vocab", "vocabulary size of .* is unknown: write a meta.json"),
    ("odd_size", "val.bin has \\d+ bytes, not a multiple of 2 \\(uint16\\); wrong dtype or a truncated file"),
    ("empty", "token shard .*val.bin is empty"),
    ("big_id", "token id 99 at position 2 of .*val.bin is ≥ vocab_size 77"),
    ("short", "model.block_size=16 is longer than the val split of .* \\(9 tokens\\)"),
    ("bad_json", "meta.json is not valid JSON"),
    ("bad_meta_vocab", "vocab_size must be a positive integer, got '77'"),
    ("dtype_clash", "train.bin has \\d+ bytes, not a multiple of 4 \\(uint32\\)"),
    ("huge_vocab", "vocab_size 70000 does not fit uint16 shards"),
    ("no_tokenizer", "names tokenizer 'tokenizer.json', but .* does not exist"),
])
def test_bad_token_data_is_one_line_exit_2_and_touches_no_run(capsys, tmp_path, case, message):
    path = _bad_dir(tmp_path, case)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(data={"name": "tokens", "path": str(path)})))
    out = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("leantrain: error: "), err
    import re
    assert re.search(message, err), err
    assert not out.exists()


def test_recipe_and_meta_json_must_agree(tmp_path):
    char_shards(tmp_path / "d")
    with pytest.raises(LeantrainError, match=r"data.vocab_size=80 disagrees with .*meta.json \(77\)"):
        TokensTask(TokensConfig(path=str(tmp_path / "d"), vocab_size=80))
    with pytest.raises(Exception, match="data.path: required"):
        Recipe.from_dict({"data": {"name": "tokens"}})


# ------------------------------------------------------------------------------------- tokenize
def tokenize(capsys, *argv):
    code = main(["tokenize", *map(str, argv), "--quiet"])
    return code, capsys.readouterr().err


def decode_split(d: Path, split: str) -> str:
    tok = load_tokenizer(d / "tokenizer.json")
    return tok.decode(np.fromfile(d / f"{split}.bin", dtype=np.uint16).tolist())


def test_tokenize_round_trips_splits_like_text_and_is_deterministic(capsys, tmp_path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_bytes(TEXT.encode())
    monkeypatch.setattr(shards_mod, "PIECE_CHARS", 500)  # stream in many small pieces and blocks
    monkeypatch.setattr(shards_mod, "READ_CHARS", 1234)
    assert tokenize(capsys, src, "--out", tmp_path / "a", "--vocab-size", 300)[0] == 0
    a = tmp_path / "a"
    meta = json.loads((a / "meta.json").read_text())
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16" and meta["tokenizer"] == "tokenizer.json"
    split = int(len(TEXT) * 0.9)  # the text kind's split
    assert decode_split(a, "train") == TEXT[:split] and decode_split(a, "val") == TEXT[split:]
    assert meta["val_tokens"] == len(np.fromfile(a / "val.bin", dtype=np.uint16))
    assert tokenize(capsys, src, "--out", tmp_path / "b", "--vocab-size", 300)[0] == 0
    for f in ("train.bin", "val.bin", "tokenizer.json", "meta.json"):
        assert (a / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # an existing tokenizer (file or directory) gives the same shards
    assert tokenize(capsys, src, "--out", tmp_path / "c", "--tokenizer", a)[0] == 0
    assert (tmp_path / "c" / "train.bin").read_bytes() == (a / "train.bin").read_bytes()
    # the shards train as tokens data, and sample decodes through the tokenizer
    Trainer(tokens_recipe(a, train={"max_steps": 4}), tmp_path / "run", verbose=False, progress=False).fit()
    out = sample_text(tmp_path / "run", prompt="Café 😀", tokens=20)
    assert out.startswith("Café 😀") and isinstance(out, str)


def test_tokenize_refuses_existing_shards_unless_overwrite(capsys, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXT)
    assert tokenize(capsys, src, "--out", tmp_path / "o", "--vocab-size", 260)[0] == 0
    before = (tmp_path / "o" / "train.bin").read_bytes()
    code, err = tokenize(capsys, src, "--out", tmp_path / "o", "--vocab-size", 300)
    assert code == 2 and "already holds token data" in err and (tmp_path / "o" / "train.bin").read_bytes() == before
    assert tokenize(capsys, src, "--out", tmp_path / "o", "--vocab-size", 300, "--overwrite")[0] == 0
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["vocab_size"] == 300
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize("setup, args, message", [
    (None, ["missing.txt"], "input file not found"),
    ("", ["in.txt"], "input is empty"),
    (b"ab\x00cd", ["in.txt"], "input looks binary"),
    (b"ok \xff\xfe bad", ["in.txt"], "input is not UTF-8 text"),
    ("x" * 50, ["in.txt", "--vocab-size", "100"], "at least 257 tokens"),
    ("x" * 50, ["in.txt", "--val-fraction", "1.5"], "--val-fraction must be in \\(0, 1\\)"),
    ("x", ["in.txt"], "too short to split"),
    ("x" * 50, ["in.txt", "--tokenizer", "nope.json"], "tokenizer not found"),
    ("x" * 50, ["in.txt", "--tokenizer", "in.txt"], "is not a valid tokenizer.json"),
])
def test_bad_tokenize_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, monkeypatch, setup, args,
                                                                  message):
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        Path("in.txt").write_bytes(setup if isinstance(setup, bytes) else setup.encode())
    code, err = tokenize(capsys, *args, "--out", "out")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    import re
    assert re.search(message, err), err
    assert not Path("out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sample_needs_a_tokenizer_or_vocabulary(capsys, tmp_path):
    char_shards(tmp_path / "d")  # shards with no tokenizer: trains, but ids cannot become text
    Trainer(tokens_recipe(tmp_path / "d", train={"max_steps": 2}), tmp_path / "run", verbose=False,
            progress=False).fit()
    assert main(["sample", "--ckpt", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "holds no vocabulary or tokenizer" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------- hf
@pytest.fixture
def records():
    text = TextTask(TextConfig()).path.read_text()
    return [p for p in text.split("\n\n") if p.strip()][:600]


def test_local_hf_datasets_train_offline_and_cache_their_tokens(capsys, tmp_path, records, monkeypatch):
    import datasets
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the kind forces offline whatever the environment says
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": r, "n": i}) + "\n" for i, r in enumerate(records)))
    disk = tmp_path / "disk"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": records[:500]}),
                          "validation": datasets.Dataset.from_dict({"body": records[500:]})}).save_to_disk(disk)
    capsys.readouterr()
    cache = tmp_path / "cache"
    for path, extra in ((jsonl, {}), (disk, {"text_field": "body"})):
        data = {"name": "hf", "path": str(path), "vocab_size": 300, "cache_dir": str(cache), **extra}
        recipe = Recipe.from_dict(tiny(data=data, train={"max_steps": 4}))
        s = Trainer(recipe, tmp_path / f"run_{path.name}", verbose=False, progress=False).fit()
        assert s["steps"] == 4 and np.isfinite(s["final_val_loss"])
        err = capsys.readouterr().err
        assert "tokenizing" in err and str(cache / "hf") in err
    assert datasets.config.HF_HUB_OFFLINE
    # the second time, the cache is read (and said so); its shards decode back to the records
    from leantrain.data.hf import HFConfig, HFTask
    task = HFTask(HFConfig(path=str(jsonl), vocab_size=300, cache_dir=str(cache)))
    assert "cached tokens at" in capsys.readouterr().err
    train_n = int(len(records) * 0.9)
    assert decode_split(task.directory, "train") == "".join(r + "\n\n" for r in records[:train_n])
    assert json.loads(json.dumps(task.fingerprint()))["kind"] == "hf"
    out = sample_text(tmp_path / "run_d.jsonl", prompt="ROMEO:", tokens=10)
    assert out.startswith("ROMEO:")
    # other data, other cache entry and fingerprint
    jsonl.write_text("".join(json.dumps({"text": r.upper()}) + "\n" for r in records))
    other = HFTask(HFConfig(path=str(jsonl), vocab_size=300, cache_dir=str(cache)))
    assert other.directory != task.directory and other.fingerprint() != task.fingerprint()


def test_a_text_file_as_hf_data_is_one_record_per_line_and_reproduced(tmp_path, records):
    from leantrain.data.hf import HFConfig, HFTask
    lines = "\n".join(records[:200]).splitlines()
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    task = HFTask(HFConfig(path=str(tmp_path / "t.txt"), vocab_size=260, cache_dir=str(tmp_path / "c")))
    k = int(len(lines) * 0.9)
    assert decode_split(task.directory, "train") == "".join(line + "\n" for line in lines[:k])
    assert decode_split(task.directory, "val") == "".join(line + "\n" for line in lines[k:])


@pytest.mark.parametrize("make, data, message", [
    (lambda p: None, {}, "dataset not found"),
    (lambda p: (p / "x.jsonl").write_text('{"body": "a b c"}\n' * 50), {}, "has no column 'text' \\(columns: body\\)"),
    (lambda p: (p / "x.jsonl").write_text('{"text": 3}\n' * 50), {}, "column 'text' holds .*not text"),
    (lambda p: (p / "x.bin").write_bytes(b"\1\2"), {}, "neither a save_to_disk directory nor local data files"),
    (lambda p: (p / "x.jsonl").write_text('{"text": "a"}\n'), {}, "too few to carve a validation split"),
    (lambda p: (p / "x.jsonl").write_text('{"text": "a"\n'), {}, "cannot load dataset"),
    (lambda p: (p / "x.jsonl").write_text('{"text": "a"}\n' * 20), {"vocab_size": 5}, "data.vocab_size: .*257"),
])
def test_bad_hf_data_is_one_line_exit_2(capsys, tmp_path, make, data, message):
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    files = list(src.iterdir())
    path = files[0] if files else tmp_path / "none.jsonl"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(data={"name": "hf", "path": str(path), "cache_dir": str(tmp_path / "c"),
                                                **data})))
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("leantrain: error")]
    import re
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_token_shards_under_torchrun(tmp_path):
    from leantrain.core import checkpoint
    from leantrain.models.gpt import GPT

    from .test_ddp import torchrun
    char_shards(tmp_path / "d")
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny(data={"name": "tokens", "path": str(tmp_path / "d")})))
    out = tmp_path / "run"
    torchrun("-m", "leantrain", "train", "--recipe", f, "--out", out, "--quiet")
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 12 and read_metrics(out)[-1]["tokens"] == 12 * 4 * 16 * 2
    # the logged val loss (shared out over ranks) is a one-process evaluation of the same fixed batches
    ckpt = checkpoint.load(out)
    recipe = Recipe.from_dict(ckpt.meta["recipe"])
    model = GPT(recipe.model).eval()
    checkpoint.load_model_tensors(model, ckpt.model, ckpt.path)
    task = TokensTask(recipe.data)
    batches = task.eval_batches("val", 4, recipe.model, n_batches=recipe.train.eval_iters)
    with torch.no_grad():
        ref = sum(model(x, y)[1].item() for x, y in batches) / len(batches)
    assert s["final_val_loss"] == pytest.approx(ref, abs=1e-5)


# ---------------------------------------------------------------------------------- bench bpe
def test_bench_bpe_end_to_end_at_tiny_size(tmp_path, monkeypatch, capsys):
    from leantrain.bench import bpe
    monkeypatch.setattr(bpe, "STEPS", {"full": 6, "quick": 6})
    monkeypatch.setattr(bpe, "VOCAB", 300)
    monkeypatch.setattr(bpe, "MODEL", {**bpe.MODEL, "n_layer": 3, "n_embd": 16, "n_head": 2, "block_size": 16})
    monkeypatch.setattr(bpe, "RAPTR", {**bpe.RAPTR, "stages": [{"path_len": 2}, {"path_len": 3}]})
    monkeypatch.setattr(bpe, "train_section", lambda steps, quick, threads: tiny()["train"] | {
        "max_steps": steps, "eval_interval": 3, "eval_iters": 2})
    assert main(["bench", "bpe", "--quick", "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["char/baseline", "char/raptr", "bpe/baseline", "bpe/raptr"]
    char, bpe_row = rows[0], rows[2]
    assert char["final_val_loss_per_char"] == char["final_val_loss"]
    f = bpe_row["nats_per_token_factor"]
    assert bpe_row["final_val_loss_per_char"] == pytest.approx(bpe_row["final_val_loss"] * f)
    assert "nats per character" in (tmp_path / "b" / "report.md").read_text()
    assert (tmp_path / "b" / "val_per_char_vs_flops.png").stat().st_size > 0
    # the factor, independently: every window's target tokens decoded one by one, characters counted
    main(["tokenize", str(TextTask(TextConfig()).path), "--out", str(tmp_path / "s"), "--vocab-size", "300",
          "--quiet"])
    task = TokensTask(TokensConfig(path=str(tmp_path / "s")))
    tok = load_tokenizer(tmp_path / "s" / "tokenizer.json")
    _, y = zip(*task.eval_batches("val", 64, Recipe.from_dict(tiny()).model, whole=True))
    targets = torch.cat(y).flatten().tolist()
    assert f == pytest.approx(len(targets) / sum(len(tok.decode([t])) for t in targets))
