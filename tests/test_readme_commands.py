"""Every command README.md and the method cards (``leantrain/methods/*/README.md``) show runs, as
written, plus tiny settings (issue 18).

Commands are extracted automatically: the lines of fenced ``bash`` blocks (expanded by bash itself —
loops, variables, quoting — with ``leantrain``, ``torchrun``, ``make`` and ``python`` replaced by
functions that print their argv) and inline `` `leantrain ...` `` spans. YAML blocks that the text names
(`` `snnet.yaml` `` just before the block) are written as those files when the document's commands
start. Every document's commands run in
document order in one temporary directory (the cards first, then the README, whose overview uses the
cards' runs), in-process through ``cli.main`` with tiny ``--set`` overrides appended to ``train``
(a few steps, a small corpus, short contexts), a couple through a real subprocess; exit codes and
outputs are checked.

* A synopsis (``[--quick]``, ``a|b``, ``...``, placeholders such as RUN or N) cannot run: its
  subcommands must exist and every option it names must be one of theirs.
* ``bench``, ``torchrun`` and ``make`` commands must be listed in NOT_RUN with the reason they are
  not run here (a full benchmark takes hours); they are still parsed by the CLI (torchrun: its
  ``-m leantrain`` part, whose recipe is built too), and a ``make`` target must exist.
* Anything else runs. A command that fails — or a bench/torchrun/make command missing from NOT_RUN —
  fails the test, so commands added to a README or card are caught at merge.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from leantrain.cli import main, parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [*sorted((ROOT / "leantrain" / "methods").glob("*/README.md")), ROOT / "README.md"]
CORPUS = ROOT / "leantrain" / "data" / "datasets" / "shakespeare_char.txt"

TRAIN_SETS = ["train.max_steps=4", "train.eval_interval=2", "train.eval_iters=1", "train.warmup_steps=1",
              "train.log_interval=1"]
DATA_SETS = {  # by data kind; {small} is a 40k-character slice of the bundled corpus
    "text": ["train.batch_size=2", "data.path={small}"],
    "tokens": ["train.batch_size=2"],
    "mnist1d": ["train.batch_size=8", "data.num_samples=400"],
}
MODEL_SETS = {"block_size": "model.block_size=16"}  # where the model has the field: short contexts
EXTRA_SETS = {  # a substring of a train command -> more tiny settings it needs
    "name: grow": ["methods.grow.operator_steps=2"],
}
def _corpus_files(cwd: Path) -> None:
    (cwd / "corpus").mkdir(exist_ok=True)
    text = CORPUS.read_text()
    (cwd / "corpus" / "part1.txt").write_text(text[:20000])
    (cwd / "corpus" / "part2.txt").write_text(text[20000:40000])


def _tokenizer_dir(cwd: Path) -> None:  # the tokenizer the README's first tokenize wrote, as a directory
    (cwd / "tok").mkdir(exist_ok=True)
    (cwd / "tok" / "tokenizer.json").write_text((cwd / "data" / "bpe" / "tokenizer.json").read_text())


PREPARE: dict = {  # a substring of a command -> a function(cwd) making inputs it reads
    "corpus/*.txt": _corpus_files,
    "--tokenizer tok/": _tokenizer_dir,
}
RESUMED_STEPS = "train.max_steps=6"  # a resume goes on a little (a free change)

NOT_RUN = {
    "make demo": "trains 2 × 1000 steps (minutes); its interleaving is tested in test_recipes.py",
    "make test": "the test suite itself",
    "make bench-all": "every benchmark at full size: about 4 hours",
    "leantrain bench overhead": "a full benchmark: 5 rounds of 200 steps plus three 2000-step runs",
    "leantrain bench depth": "a full benchmark: 3 seeds of 10 methods",
    "leantrain bench depth --quick": "a 5-minute smoke test; the suite's pieces are tested in test_progressive.py",
    "leantrain bench depth --seeds 3 --threads 1": "a full benchmark (about an hour)",
    "leantrain bench dropout": "a full benchmark (~26 min)",
    "leantrain bench dropout --quick": "a 5-minute smoke test; test_bench_dropout.py tests the suite",
    "leantrain bench dropout --seeds 3 --threads 1": "a full benchmark (~26 min)",
    "leantrain bench local": "a full benchmark",
    "leantrain bench local --seeds 2 --threads 1": "a full benchmark",
    "leantrain bench local --parallel --seeds 3": "a full benchmark (torchrun jobs)",
    "leantrain bench local --suite gpt": "a full benchmark",
    "leantrain bench local --suite gpt --seeds 3": "a full benchmark",
    "leantrain bench growth": "a full benchmark; test_bench_growth.py tests the suite",
    "leantrain bench pool": "a full benchmark; test_bench_pool.py tests the suite",
    "leantrain bench hf --seeds 3 --threads 1": "a full benchmark (24 runs and 5 overhead rounds, ~9 min); "
                                                "test_hf.py runs it with --quick",
    "leantrain bench growth --family hf --seeds 3 --threads 1": "a full benchmark; test_bench_growth.py runs the "
                                                               "hf suite on tiny Llamas",
    "leantrain bench pool --family hf --seeds 3 --threads 1": "a full benchmark; test_bench_pool.py runs the hf "
                                                             "suite scaled down",
    "leantrain bench bpe --seeds 2 --threads 1": "a full benchmark (8 runs of 2000 steps); test_tokens.py runs the "
                                                 "suite at tiny size",
    "leantrain bench pool --seeds 3 --threads 1": "a full benchmark",
    "leantrain bench growth --sweep --threads 1 --out benchmarks/growth": "the schedule sweep (≈ 60 min on one "
                                                                           "core); test_bench_growth.py tests it",
    "leantrain bench growth --seeds 3 --threads 1 --schedules benchmarks/growth/sweep.json --out benchmarks/growth":
        "a full benchmark (≈ 40 min) that needs the sweep's file",
    "leantrain bench pool --seeds 3 --threads 1 --stitch-lr-scale 10": "a full benchmark (≈ 20 min)",
    "leantrain bench growth --seeds 3 --threads 1 --schedules benchmarks/growth/sweep.json":
        "a full benchmark (≈ 40 min) that needs the sweep's file",
    "leantrain bench growth --sweep --sweep-lrs 8e-3 --threads 1": "the sweep at one more peak LR (≈ 30 min)",
    "leantrain bench growth --family hf": "a full benchmark; test_bench_growth.py tests the hf suite on tiny Llamas",
    "leantrain bench pool --family hf": "a full benchmark; test_bench_pool.py tests the hf suite scaled down",
    "torchrun --standalone --nproc_per_node=2 -m leantrain train --recipe resnet32_mnist1d --out runs/pipe --set "
    "'methods=[{name: local, variant: greedy, modules: 2, parallel: modules}]'":
        "2 processes under torchrun: tests/test_pipeline.py runs module-parallel training under torchrun",
}
SUBPROCESS = {  # run through a real process, as a user's shell would
    "python -m leantrain.methods.growth.sizes 4 64 6 128",
    "leantrain methods dynamic_dropout --options",
}
PROGRAMS = ("leantrain", "torchrun", "make", "python")


@dataclass
class Item:
    doc: Path
    pos: int
    kind: str  # "run" (argv), "synopsis" (text), "file" (name, text)
    argv: list[str] | None = None
    text: str = ""
    name: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}: {self.text}"


FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`((?:leantrain|torchrun|make|python -m leantrain[\w.]*) [^`]*)`")
PLACEHOLDER = re.compile(r"(?<![\w.=/-])(RUN|DIR|ID|N|X|KEY|STEP|NAME|PATH)(?![\w.=/-])")


def unquoted(text: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"", "", text)


def is_synopsis(text: str) -> bool:
    bare = unquoted(text.split(" #")[0])
    return bool(re.search(r"\[|\||\.\.\.|…", bare) or PLACEHOLDER.search(bare))


def expand_with_bash(script: str) -> list[list[str]]:
    """The argv of every program call in ``script``, as bash would pass them."""
    shims = "".join(f"{p}() {{ printf '%s\\0' {p} \"$@\"; printf '\\n\\0'; }}; " for p in PROGRAMS)
    out = subprocess.run(["bash", "-c", shims + "\n" + script], capture_output=True, check=True).stdout
    calls, current = [], []
    for token in out.decode().split("\0")[:-1]:
        if token == "\n":
            calls.append(current)
            current = []
        else:
            current.append(token)
    return calls


def extract(doc: Path) -> list[Item]:
    text = doc.read_text()
    items: list[Item] = []
    for m in FENCE.finditer(text):
        lang, body = m.group(1), m.group(2)
        if lang in ("bash", "sh", "shell", "console"):
            lines = body.replace("\\\n", " ").splitlines()
            script = []
            for line in lines:
                if line.strip() and line.split()[0] in PROGRAMS and is_synopsis(line):
                    items.append(Item(doc, m.start(), "synopsis", text=" ".join(line.split(" #")[0].split())))
                else:
                    script.append(line)
            for argv in expand_with_bash("\n".join(script)):
                items.append(Item(doc, m.start(), "run", argv=argv, text=shlex.join(argv)))
        elif lang in ("yaml", "yml"):
            named = re.findall(r"`([\w.-]+\.ya?ml)`", text[max(0, m.start() - 400): m.start()])
            if named:
                items.append(Item(doc, m.start(), "file", name=named[-1], text=body))
    prose = FENCE.sub(lambda m: " " * len(m.group(0)), text)  # keep positions
    for m in INLINE.finditer(prose):
        span = m.group(1).replace("\\|", "|").strip()
        kind = "synopsis" if is_synopsis(span) or not parses(span) else "run"
        items.append(Item(doc, m.start(), kind, argv=shlex.split(span) if kind == "run" else None, text=span))
    return sorted(items, key=lambda i: i.pos)


def parses(span: str) -> bool:
    """Whether an inline ``leantrain ...`` span is a whole command (not a mention such as
    `leantrain sample` or `leantrain train --resume`, checked as a synopsis)."""
    import contextlib
    import io
    argv = shlex.split(span)
    if argv[0] != "leantrain":
        return True
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser().parse_args(argv[1:])
        except SystemExit as e:
            return e.code == 0  # --help
    return True


ALL = [item for doc in DOCS for item in extract(doc)]


# ----------------------------------------------------------------------------------- checks
def leantrain_argv(argv: list[str]) -> list[str]:
    """The leantrain arguments of a call: ``leantrain a b``, ``python -m leantrain a b``, torchrun's."""
    if argv[0] == "leantrain":
        return argv[1:]
    if "-m" in argv and argv[argv.index("-m") + 1] == "leantrain":
        return argv[argv.index("-m") + 2:]
    raise AssertionError(f"not a leantrain call: {shlex.join(argv)}")


def subcommand_help(words: list[str]) -> str:
    """--help of ``leantrain <words>`` (exit 0), as text."""
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        parser().parse_args([*words, "--help"])
    assert e.value.code == 0, f"leantrain {' '.join(words)} is not a command"
    return buf.getvalue()


def check_synopsis(item: Item) -> None:
    """Its subcommands exist, with every option it names."""
    tokens = item.text.replace("(", " ").replace(")", " ").replace("[", " ").replace("]", " ").split()
    if tokens[0] == "make":
        check_make_target(tokens[1])
        return
    if tokens[0] == "torchrun":
        tokens = ["leantrain"] + tokens[tokens.index("leantrain") + 1:]
    assert tokens[0] == "leantrain", item.where
    words, i = [], 1
    while i < len(tokens) and re.fullmatch(r"[a-z][a-z0-9_|]*", tokens[i]):
        words.append(tokens[i])
        i += 1
    options = [t.split("=")[0] for t in tokens[i:] if t.startswith("--")]
    choices = [[]]
    for w in words:  # expand alternatives: bench overhead|depth -> bench overhead, bench depth
        choices = [c + [alt] for c in choices for alt in w.split("|") if alt]
    for words in choices:
        try:
            text = subcommand_help(words)
        except AssertionError:  # the last word is an argument (e.g. a method name), not a subcommand
            text = subcommand_help(words[:-1])
        for opt in options:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), \
                f"{item.where}: leantrain {' '.join(words)} has no option {opt}"


def check_make_target(target: str) -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"the Makefile has no target {target!r}"


def check_not_run(item: Item) -> None:
    assert item.text in NOT_RUN, (f"{item.where}\n  is neither run by this test nor listed in NOT_RUN with "
                                  "the reason it cannot run here (tests/test_readme_commands.py)")
    if item.argv[0] == "make":
        check_make_target(item.argv[1])
        return
    args = leantrain_argv(item.argv)
    parsed = parser().parse_args(args)  # flags and values as the CLI takes them
    if args[0] == "train":
        from leantrain import Recipe
        Recipe.load(parsed.recipe, parsed.overrides)


def tiny_sets(args: list[str], cwd: Path, small: Path) -> list[str]:
    """Tiny settings for a train command: few steps, small data and context (model shapes as written)."""
    from leantrain import Recipe
    from leantrain.core import checkpoint
    parsed = parser().parse_args(args)
    if parsed.resume is not None and parsed.recipe is None:
        recipe = Recipe.from_dict(checkpoint.read_meta(cwd / parsed.resume)["recipe"])
    else:
        recipe = Recipe.load(parsed.recipe, parsed.overrides)
    sets = TRAIN_SETS + [s.format(small=small) for s in DATA_SETS.get(recipe.data_name, [])]
    sets += [v for field, v in MODEL_SETS.items() if hasattr(recipe.model, field)]
    if parsed.resume is not None:
        sets.append(RESUMED_STEPS)
    joined = shlex.join(args)
    for key, extra in EXTRA_SETS.items():
        if key in joined:
            sets += extra
    return sets


def check_outputs(args: list[str], out: str, cwd: Path) -> None:
    """What each command must leave behind or print."""
    if args == ["--version"]:
        assert re.fullmatch(r"leantrain \S+\n", out), out
        return
    parsed = parser().parse_args(args)
    command = args[0]
    if command == "train" and parsed.dry_run:
        assert not (cwd / parsed.out).exists() and "dry run: nothing was written" in out
    elif command == "train" and "--help" not in args:
        run_dir = cwd / (parsed.out or parsed.resume)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["finished"] and out.strip().splitlines()[-1].startswith(f"done: {summary['steps']} steps")
    elif command == "sample":
        assert out.startswith(parsed.prompt) and len(out) > len(parsed.prompt) + parsed.tokens // 2
    elif command == "evaluate":
        row = json.loads(out)
        assert row["split"] == parsed.split and row[f"{parsed.split}_loss"] > 0
    elif command == "export" and parsed.format == "hf":  # a save_pretrained directory
        assert (cwd / parsed.out / "config.json").is_file() and out.startswith("exported")
    elif command == "export":
        assert (cwd / parsed.out / "checkpoints" / "latest").is_file() and out.startswith("exported configuration")
    elif command == "pool" and parsed.action == "list":
        assert "Pareto" in out or "*" in out
    elif command == "methods":
        assert out.strip()


def run_item(item: Item, cwd: Path, small: Path, capsys) -> None:
    argv = item.argv
    if argv[0] in ("make", "torchrun") or argv[:2] == ["leantrain", "bench"]:
        check_not_run(item)
        return
    for key, prepare in PREPARE.items():
        if key in item.text:
            prepare(cwd)
    if item.text in SUBPROCESS or argv[0] == "python":  # python -c / -m ...: a real process
        program = [sys.executable, *argv[1:]] if argv[0] == "python" else [sys.executable, "-m", "leantrain", *argv[1:]]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(program, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() and "Traceback" not in done.stderr, \
            f"{item.where}\n{done.stderr[-2000:]}"
        return
    # the user's shell expands a glob in the working directory (the extraction ran elsewhere)
    argv = [a for arg in argv for a in (sorted(str(Path(p)) for p in glob.glob(arg, root_dir=cwd))
                                         if glob.has_magic(arg) and glob.glob(arg, root_dir=cwd) else [arg])]
    args = leantrain_argv(argv)
    if args[0] == "train" and "--help" not in args:
        args = [*args, "--set", *tiny_sets(args, cwd, small)]
    try:
        code = main(args)
    except SystemExit as e:  # --help, --version
        code = e.code
    out, err = capsys.readouterr()
    assert code == 0, f"{item.where}\n  ran as {shlex.join(args)}\n  exit {code}: {err.strip()[-2000:]}"
    if "--help" not in args:
        check_outputs(args, out, cwd)


# ----------------------------------------------------------------------------------- the tests
def test_commands_are_found_in_every_document():
    for doc in DOCS:
        assert [i for i in ALL if i.doc == doc and i.kind != "file"], f"no commands found in {doc}"
    runs = {i.text for i in ALL if i.kind == "run"}
    assert "leantrain train --recipe baseline_char --out runs/base" in runs
    assert "leantrain train --recipe baseline_char --out runs/anchor128 --set model.n_embd=128 model.n_head=4 " \
           "train.max_steps=1000 train.lr=2e-3 train.min_lr=2e-4 train.warmup_steps=50" in runs  # bash expanded the loop
    assert {i.name for i in ALL if i.kind == "file"} >= {"snnet.yaml", "distil.yaml", "pool.yaml"}
    stale = set(NOT_RUN) - {i.text for i in ALL}
    assert not stale, f"NOT_RUN lists commands no document shows any more: {sorted(stale)}"
    assert SUBPROCESS <= runs


def test_every_shown_command_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small = tmp_path / "corpus.txt"
    small.write_text(CORPUS.read_text()[:40000])
    for doc in DOCS:  # a document's files first: its prose may name the command before the file's block
        for item in (i for i in ALL if i.doc == doc and i.kind == "file"):
            (tmp_path / item.name).write_text(item.text)
        for item in (i for i in ALL if i.doc == doc and i.kind != "file"):
            run_or_check(item, tmp_path, small, capsys)


def run_or_check(item: Item, tmp_path: Path, small: Path, capsys) -> None:
    if item.kind == "synopsis":
        check_synopsis(item)
    else:
        run_item(item, tmp_path, small, capsys)


def test_an_unlisted_benchmark_or_a_wrong_synopsis_fails_the_check():
    """The test's own guards: a bench command missing from NOT_RUN, or a synopsis naming an option the
    command lacks, is an error (the extraction is tested above)."""
    with pytest.raises(AssertionError, match="neither run by this test nor listed in NOT_RUN"):
        check_not_run(Item(ROOT / "README.md", 0, "run", argv=["leantrain", "bench", "depth", "--seeds", "7"],
                           text="leantrain bench depth --seeds 7"))
    with pytest.raises(AssertionError, match="has no option --frobnicate"):
        check_synopsis(Item(ROOT / "README.md", 0, "synopsis", text="leantrain bench depth|pool [--frobnicate]"))
    assert is_synopsis("leantrain export --ckpt RUN --out DIR") and is_synopsis("leantrain methods [--options]")
    assert not is_synopsis("leantrain train --set 'methods=[{name: raptr}]' --out runs/x")
