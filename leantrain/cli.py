"""``leantrain`` command line: train, evaluate, sample, tokenize, methods, export, pool, bench.

Bad input exits 2 with one line."""
from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
from pathlib import Path

from .config import apply_overrides, describe
from .errors import LeantrainError, RunStopped


def _keys(cls, prefix: str, skip: set = frozenset()) -> list[str]:
    lines = []
    for key, default, doc in describe(cls, prefix):
        if (key, default) in skip:
            continue
        lines.append(f"  {key} = {default}")
        lines += textwrap.wrap(doc, 90, initial_indent="      ", subsequent_indent="      ")
    return lines


def _config_help() -> str:
    from .data.arrays import ArrayConfig
    from .recipe import TrainConfig
    from .registry import MODEL_TASKS, get_model, list_data, list_models
    kinds = sorted(list_data(), key=lambda d: (d.name != "text", d.name))
    shared = {(k, d) for k, d, _ in describe(ArrayConfig, "data.")}
    arrays = [d.name for d in kinds if issubclass(d.Config, ArrayConfig)]
    lines = ["recipe keys (YAML sections, or --set section.key=value):", "",
             "data.name = 'text'  — the data kind: " + ", ".join(
                 f"{d.name} ({d.task})" for d in kinds) + ". Their options:"]
    for d in kinds:
        if d.name == arrays[0]:
            lines.append(f"  [data.name: {' | '.join(arrays)}] options every array kind shares")
            lines += _keys(ArrayConfig, "data.")
        own = shared if d.name in arrays else set()
        lines.append(f"  [data.name: {d.name}] {(d.__doc__ or '').strip().splitlines()[0]}"
                     + (" Also (or with other defaults):" if own else ""))
        lines += _keys(d.Config, "data.", own)
    lines += ["", "model.name = 'gpt'  — the model: " + ", ".join(
        f"{m} (consumes {MODEL_TASKS[m]})" for m in list_models()) + ". Its options:"]
    for m in list_models():
        lines.append(f"  [model.name: {m}]")
        lines += _keys(get_model(m)[1], "model.")
    lines += ["", "train: the loop (every data kind and model)"] + _keys(TrainConfig, "train.")
    lines.append("\nmethods = [{name: ..., <options>}]\n      See `leantrain methods --options`; "
                 "override with --set methods.<name>.<option>=value.")
    return "\n".join(lines)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a recipe", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a recipe (YAML) into an output directory.",
                       epilog=_config_help())
    from .recipe import TrainConfig, bundled_recipes
    p.add_argument("--recipe", help="a YAML recipe file, or the name of a bundled one ("
                   + ", ".join(bundled_recipes()) + "); default: only defaults and --set")
    p.add_argument("--out", type=Path, help="output directory (default with --resume: the resumed run)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override recipe keys, e.g. --set train.max_steps=200 model.n_layer=6")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue from a run or checkpoint directory")
    p.add_argument("--allow-changes", nargs="+", default=[], metavar="KEY",
                   help="with --resume: accept these changed recipe keys (e.g. train.lr, methods.raptr.scale; "
                   "a section such as train allows all of its keys). Without it a resume refuses changed "
                   "settings, except train." + ", train.".join(sorted(TrainConfig.FREE_ON_RESUME)))
    p.add_argument("--overwrite", action="store_true", help="replace a different run already in --out")
    p.add_argument("--until", type=int, metavar="STEP", help="stop (with a checkpoint) after this step")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve and validate the recipe, build the model and data, print the recipe, parameter "
                        "count, device and measured FLOPs per step; then exit without writing anything")
    p.set_defaults(func=_train)


@contextlib.contextmanager
def _no_empty_dir_on_error(path: Path | None, keep: tuple[str, ...] = ()):
    """If the command fails, remove ``path`` and the parents it made — when they did not exist before and
    hold nothing (or only the files named in ``keep``, which the command itself wrote): an error never
    leaves an empty output directory behind. A directory holding anything else is left alone."""
    created = []
    if path is not None:
        p = Path(path).absolute()
        while not p.exists() and p != p.parent:
            created.append(p)
            p = p.parent
    try:
        yield
    except BaseException:
        for d in created:  # innermost first
            try:
                inside = list(d.iterdir()) if d.is_dir() and not d.is_symlink() else None
                ours = keep if d == created[0] else ()
                if inside is None or any(f.name not in ours or not f.is_file() for f in inside):
                    break
                for f in inside:
                    f.unlink()
                d.rmdir()
            except OSError:
                break
        raise


def _train(args) -> int:
    with _no_empty_dir_on_error(args.out, keep=("config.json",)):
        return _train_in(args)


def _train_in(args) -> int:
    from .core import Trainer, checkpoint
    from .recipe import Recipe
    if args.resume is not None and args.recipe is None:
        meta = checkpoint.read_meta(args.resume)
        recipe = Recipe.from_dict(apply_overrides(meta["recipe"], args.overrides))
    else:
        recipe = Recipe.load(args.recipe, args.overrides)
    out = args.out
    if out is None and not (args.dry_run and args.resume is None):
        if args.resume is None:
            raise LeantrainError("--out DIR is required (or --resume DIR to continue a run)")
        ckpt = checkpoint.resolve(args.resume)
        out = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else args.resume
    if args.until is not None and args.until <= 0:
        raise LeantrainError(f"--until must be positive, got {args.until}")
    if args.allow_changes and args.resume is None:
        raise LeantrainError("--allow-changes applies to --resume (a new run has nothing to change)")
    if args.dry_run:
        return _dry_run(recipe, out, args)
    trainer = Trainer(recipe, out, resume=args.resume, overwrite=args.overwrite, verbose=not args.quiet,
                      progress=False if args.quiet else None, allow_changes=args.allow_changes)
    s = trainer.fit(until=args.until)
    if trainer.main and not args.quiet:
        print(done_line(s, trainer.data.unit, out))
    return 0  # under torchrun, main() leaves the process group (exit_worker)


def _dry_run(recipe, out, args) -> int:
    """``train --dry-run``: everything a run checks before it writes, and one measured step; no files."""
    import yaml

    from .core import Trainer
    trainer = Trainer(recipe, out, resume=args.resume, overwrite=args.overwrite, verbose=False,
                      progress=False, dry_run=True, allow_changes=args.allow_changes)
    r = trainer.dry_run_report()
    if trainer.main:
        t = recipe.train
        print("recipe:\n" + textwrap.indent(yaml.safe_dump(recipe.to_dict(), sort_keys=False).rstrip(), "  "))
        print(f"model: {recipe.model_name}, {r['parameters']:,} parameters ({r['trainable_parameters']:,} trainable)")
        print(f"device: {r['device']} (train.device {t.device}), precision {r['precision']}")
        print(f"batch: {t.batch_size} × {t.grad_accum_steps} micro-batches × ranks = {r['effective_batch_size']} "
              "samples per step")
        print(f"FLOPs per step (measured on one step): {r['flops_per_step']:.3e}; {r['steps']} steps ≈ "
              f"{r['estimated_train_flops']:.3e} training FLOPs (methods that change the model change it)")
        print(f"dry run: nothing was written{f' (a run would write {out})' if out else ''}")
    return 0
def done_line(s: dict, unit: str, out) -> str:
    """The last line of ``leantrain train``: the run's figures in the data's own terms (text: loss and
    tokens/s; classification: loss, top-1 error and samples/s, and the test split's once scored)."""
    figures = f"val loss {s['final_val_loss']:.4f} (best {s['best_val_loss']:.4f})"
    if s.get("final_val_error") is not None:
        figures += f", val error {s['final_val_error']:.2f}% (best {s['best_val_error']:.2f}%)"
    if s.get("test_error") is not None:
        figures += f", test error {s['test_error']:.2f}%"
    if s.get("val_step") not in (None, s["steps"]):  # --until between evaluations: say which step
        figures = f"{figures} from the evaluation at step {s['val_step']}"
    rate = {"tokens": "tok/s", "samples": "samples/s"}.get(unit, f"{unit}/s")
    steps = f"{s['steps']} steps"
    if not s.get("finished", True):
        steps = f"stopped after step {s['steps']} of {s['config']['train']['max_steps']} (--resume continues)"
    return (f"done: {steps}, {figures}, {s['train_flops']:.3e} FLOPs, "
            f"{s['wall_seconds']:.1f}s, {s[f'{unit}_per_second']:.0f} {rate} -> {out}")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--ckpt", type=Path, required=True, help="run or checkpoint directory")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=300,
                   help="tokens to generate (characters for character-level runs)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_sample)


def _sample(args) -> int:
    print(sample_text(args.ckpt, args.prompt, args.tokens, args.temperature, args.top_k, args.seed))
    return 0


def sample_text(ckpt_dir, prompt="\n", tokens=300, temperature=0.8, top_k=40, seed=0) -> str:
    import torch

    from .core.loading import load_trained
    from .data.tokenizer import codec_from_meta
    if tokens <= 0 or temperature <= 0 or top_k <= 0:
        raise LeantrainError("--tokens, --temperature and --top-k must be positive")
    if not prompt:  # generation continues a context: it needs at least one token
        raise LeantrainError("--prompt is empty: give at least one character to continue (the default "
                             "is a newline)")
    trained = load_trained(ckpt_dir)
    if trained.task != "lm" or not hasattr(trained.model, "generate"):
        raise LeantrainError(f"{ckpt_dir} holds a {trained.recipe.model_name!r} model trained on "
                             f"{trained.recipe.data_name!r} data ({trained.task}); sample generates text "
                             "from a language model — use `leantrain evaluate` for classifiers")
    codec = codec_from_meta(trained.ckpt.meta, str(trained.ckpt.path))
    idx = torch.tensor([codec.encode(prompt)], dtype=torch.long)
    out = trained.model.generate(idx, tokens, temperature, top_k, torch.Generator().manual_seed(seed))
    return codec.decode(out[0].tolist())


def _add_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="text files -> token shards (train.bin, val.bin, meta.json, tokenizer.json)",
                       description="Tokenize text files into nanoGPT-format shards for `data: {name: tokens}`: "
                       "train a byte-level BPE on the training part (offline, with the `tokenizers` library) or "
                       "use an existing tokenizer, and write train.bin / val.bin (uint16, or uint32 above 65,536 "
                       "tokens), meta.json and tokenizer.json. Streams the input (a file larger than memory "
                       "works); the same input gives byte-identical shards. The validation split is the last "
                       "--val-fraction of the characters (as the text data kind splits).")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="UTF-8 text files, concatenated in order")
    p.add_argument("--out", type=Path, required=True, help="directory for the shards")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--vocab-size", type=int, metavar="N",
                       help="train a byte-level BPE of N tokens (default 8192; fewer if the text runs out of merges)")
    which.add_argument("--tokenizer", type=Path, metavar="PATH",
                       help="use this tokenizer.json, or Hugging Face tokenizer directory, instead")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of the text, from its end, for validation (default 0.1)")
    p.add_argument("--overwrite", action="store_true", help="replace token data already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=_tokenize)


def _tokenize(args) -> int:
    from .data.shards import tokenize_files
    meta = tokenize_files(args.inputs, args.out, args.vocab_size, args.tokenizer, args.val_fraction,
                          args.overwrite, progress=False if args.quiet else None)
    if not args.quiet:
        print(f"tokenized {meta['train_chars'] + meta['val_chars']:,} characters into "
              f"{meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens ({meta['dtype']}, vocabulary "
              f"{meta['vocab_size']:,}) -> {args.out}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a whole split (loss, error) as JSON",
                       description="Evaluate a trained model on every sample of a split and print the "
                       "metrics as JSON (loss with its standard error; classification also top-1 error).")
    p.add_argument("--ckpt", type=Path, required=True, help="run or checkpoint directory")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split to score (default val; test where the data holds one out)")
    p.add_argument("--out", type=Path, help="also write the JSON here (default: only print)")
    p.set_defaults(func=_evaluate)


def evaluate_checkpoint(ckpt_dir, split: str = "val") -> dict:
    """The whole-split scores of a checkpoint on its recipe's data, as ``leantrain evaluate`` prints
    them; ``same_data_as_training`` (when the checkpoint records a data fingerprint) says whether the
    data still has the content it was trained on — if not, a warning goes to stderr."""
    from .core.evaluation import evaluate
    from .core.resume import data_difference
    from .core.loading import load_trained
    from .data import for_model
    from .registry import get_data
    trained = load_trained(ckpt_dir)
    r = trained.recipe
    task = for_model(get_data(r.data_name)(r.data), r.model)
    saved = trained.ckpt.meta.get("data_fingerprint")
    changed = data_difference(saved, task.fingerprint()) if saved is not None else None
    if changed:  # scored all the same (evaluating on changed data can be the point), but never silently
        print(f"warning: {trained.ckpt.path} was trained on other data ({changed}): this score is on today's "
              "data, not comparable with the run's own validation losses", file=sys.stderr, flush=True)
    result = evaluate(trained.model, task, task.eval_batches(split, task.eval_batch_size, r.model, whole=True),
                      next(trained.model.parameters()).device)
    row = {"checkpoint": str(trained.ckpt.path), "step": trained.ckpt.meta["step"], "data": r.data_name,
           "split": split, "samples": result.n, **result.row(split)}
    if saved is not None:
        row["same_data_as_training"] = changed is None
    return row


def _evaluate(args) -> int:
    import json

    from .core.checkpoint import ensure_dir, write_text_atomic
    row = evaluate_checkpoint(args.ckpt, args.split)
    text = json.dumps(row, indent=1)
    if args.out is not None:
        if args.out.is_dir():
            raise LeantrainError(f"--out {args.out} is a directory; name a file")
        ensure_dir(args.out.parent, "directory of --out")
        write_text_atomic(args.out, text + "\n")
    print(text)
    return 0


def _add_methods(sub) -> None:
    p = sub.add_parser("methods", help="list registered methods (and models)")
    p.add_argument("name", nargs="?", default="*", help="a method name or glob pattern")
    p.add_argument("--options", action="store_true", help="show each method's options")
    p.add_argument("--models", action="store_true", help="list registered models instead")
    p.set_defaults(func=_methods)


def _methods(args) -> int:
    from .registry import list_methods, list_models
    if args.models:
        print("\n".join(list_models(args.name)))
        return 0
    found = list_methods(args.name)
    if not found:
        if args.name == "*":
            print("(no methods registered)")
            return 0
        raise LeantrainError(f"no registered method matches {args.name!r}")
    width = max(len(m.name) for m in found)
    for m in found:
        print(f"{m.name:<{width}}  {m.kind:<13}  {m.summary()}")
        if args.options:
            for key, default, doc in describe(m.Config):
                print(f"    {key} = {default}")
                for line in textwrap.wrap(doc, 86, initial_indent="        ", subsequent_indent="        "):
                    print(line)
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trained model: a stitched family's configuration, or an hf model "
                       "as a save_pretrained directory",
                       description="--format leantrain (default): write one configuration of a family trained "
                       "with snnet or learngene_pool as a standalone stitched_gpt checkpoint: `leantrain sample` "
                       "and `leantrain evaluate` load it with no pool code. Choose the configuration by id "
                       "(`leantrain pool list`) or by budget: the lowest end-of-training val loss among those "
                       "within it. --format hf: write an hf run's model as a save_pretrained directory "
                       "(transformers' AutoModel*.from_pretrained loads it without leantrain; text runs "
                       "include the tokenizer).")
    p.add_argument("--ckpt", type=Path, required=True, help="run or checkpoint directory")
    p.add_argument("--format", choices=["leantrain", "hf"], default="leantrain",
                   help="leantrain: a stitched family's configuration; hf: a save_pretrained directory")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--config", type=int, metavar="ID", help="configuration id (--format leantrain)")
    which.add_argument("--max-flops", type=float, metavar="X",
                       help="inference FLOPs budget (one forward of block_size tokens, as pool list shows)")
    which.add_argument("--max-params", type=int, metavar="N", help="parameter budget of the exported model")
    p.add_argument("--out", type=Path, required=True, help="directory for the exported model")
    p.set_defaults(func=_export)


def _export(args) -> int:
    chosen = [f for f, v in (("--config", args.config), ("--max-flops", args.max_flops),
                             ("--max-params", args.max_params)) if v is not None]
    if args.format == "hf":
        if chosen:  # one configuration of a stitched family (a single anchor / instance)
            from .methods.stitching.deploy import export_hf as export_config
            got = export_config(args.ckpt, args.out, args.config, args.max_flops, args.max_params)
            print(f"exported configuration {got['id']} ({got['route']}) as {got['architecture']} "
                  f"({got['params']:,} parameters) -> {got['out']}")
            return 0
        from .export import export_hf
        got = export_hf(args.ckpt, args.out)
        tok = " with its tokenizer" if got["tokenizer"] else ""
        print(f"exported {got['architecture']} (step {got['step']}, {got['params']:,} parameters){tok} "
              f"-> {got['out']}")
        return 0
    if not chosen:
        raise LeantrainError("export: choose the configuration with --config, --max-flops or --max-params "
                             "(or --format hf for an hf run)")
    from .methods.stitching.deploy import export
    for flag, value in (("--max-flops", args.max_flops), ("--max-params", args.max_params)):
        if value is not None and not value > 0:
            raise LeantrainError(f"{flag} must be positive, got {value:g}")
    got = export(args.ckpt, args.out, args.config, args.max_flops, args.max_params)
    loss = "" if got["val_loss"] is None else f", val loss {got['val_loss']:.4f}"
    print(f"exported configuration {got['id']} ({got['route']}): {got['params']:,} parameters, "
          f"{got['flops']:.3g} FLOPs{loss} -> {args.out}")
    return 0


def _add_pool(sub) -> None:
    p = sub.add_parser("pool", help="inspect a stitched family (snnet, learngene_pool)")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    lp = psub.add_parser("list", help="every configuration: id, route, params, FLOPs, val loss; Pareto front",
                         description="Print every configuration of a trained family (id, blocks route, "
                         "parameters, inference FLOPs, end-of-training val loss), mark the Pareto front, "
                         "count dominated configurations and print the stored parameters.")
    lp.add_argument("--ckpt", type=Path, required=True, help="run or checkpoint directory of the family")
    lp.set_defaults(func=_pool_list)


def _pool_list(args) -> int:
    from .methods.stitching.deploy import pool_list
    print(pool_list(args.ckpt))
    return 0


def _add_bench(sub) -> None:
    from .bench import BENCHES
    p = sub.add_parser("bench", help="run a benchmark suite (results.json, report.md, plots)")
    bsub = p.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name, (help_, add_args, run) in BENCHES.items():
        bp = bsub.add_parser(name, help=help_, description=help_)
        bp.add_argument("--quick", action="store_true", help="1 seed, shorter runs (smoke test; says so)")
        bp.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3, quick 1)")
        bp.add_argument("--out", type=Path, default=Path(f"bench_out/{name}"), help="output directory")
        add_args(bp)
        bp.set_defaults(func=lambda a, run=run: _bench(a, run))


def _bench(args, run) -> int:
    from .core.checkpoint import ensure_dir
    with _no_empty_dir_on_error(args.out):
        ensure_dir(args.out, "--out")  # before the suite's runs, not after them
        return run(args)


def parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="leantrain", description="Cheaper neural-network training: "
                                "train recipes with efficiency methods, measure, compare.")
    p.add_argument("--version", action="version", version=f"leantrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_sample(sub)
    _add_tokenize(sub)
    _add_methods(sub)
    _add_export(sub)
    _add_pool(sub)
    _add_bench(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .core import distributed
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except RunStopped as e:  # summary.json says why; nothing non-finite was saved
        print(f"leantrain: {e}", file=sys.stderr)
        code = e.exit_code
    except LeantrainError as e:
        print(f"leantrain: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("leantrain: interrupted", file=sys.stderr)
        code = 130
    distributed.exit_worker(code)  # under torchrun: leave without interpreter finalization (see there)
    return code
