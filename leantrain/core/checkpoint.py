"""Atomic, pickle-free checkpoints: tensors in safetensors, everything else in JSON.

Layout of a run directory::

    checkpoints/step_00000200/{model,optimizer,rng}.safetensors + state.json
    checkpoints/latest            # name of the newest complete checkpoint
    checkpoints/best              # train.keep_best: name of the best validation checkpoint

A checkpoint is written into a temporary directory, fsynced and renamed into place; only then is
``latest`` replaced (``os.replace`` is atomic), and older checkpoints beyond the ``keep`` newest
(train.keep_checkpoints; never the one ``best`` names) are removed. A crash at any point leaves
``latest`` naming a complete checkpoint. ``state.json`` records each tensor file's
SHA-256, so truncation or bit rot is reported instead of silently loaded.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import LeantrainError

FORMAT = 1
FILES = ("model", "optimizer", "rng")  # always present; "methods" (method-owned tensors) when used


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    methods: dict[str, torch.Tensor]
    """Tensors methods keep outside the model (``Method.tensors``), keyed ``<method>/<name>``."""


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, tied weights once (safetensors refuses shared storage)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def optimizer_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state keyed ``<param name>/<slot>`` so it survives surgery and reordering."""
    out = {}
    for name, p in model.named_parameters():
        for slot, v in opt.state.get(p, {}).items():
            out[f"{name}/{slot}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def load_optimizer_state(model, opt, tensors: dict[str, torch.Tensor]) -> None:
    """Put saved state on its parameter's device; ``step`` stays on the CPU unless the optimizer is
    fused or capturable (where torch keeps it beside the parameter)."""
    params = dict(model.named_parameters())
    step_on_device = bool(opt.defaults.get("fused") or opt.defaults.get("capturable"))
    for key, v in tensors.items():
        name, slot = key.rsplit("/", 1)
        if name not in params:
            raise LeantrainError(f"checkpoint optimizer state names unknown parameter {name!r}")
        p = params[name]
        device = p.device if slot != "step" or step_on_device else torch.device("cpu")
        opt.state[p][slot] = v.to(device).clone()


def load_model_tensors(model, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = model_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise LeantrainError(f"checkpoint {where} does not match the model: "
                             f"missing {missing[:3]}, unexpected {extra[:3]}")
    for name, t in expected.items():
        if t.shape != tensors[name].shape:
            raise LeantrainError(f"checkpoint {where} does not match the model: {name} has shape "
                                 f"{tuple(tensors[name].shape)} there, {tuple(t.shape)} here")
    with torch.no_grad():
        for name, t in expected.items():
            t.copy_(tensors[name])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def ensure_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create directory ``path`` (and its parents) or raise a one-line LeantrainError saying why not:
    it is a file, lies inside a file, or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LeantrainError(f"{what} {path} is a file, not a directory")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise LeantrainError(f"{what} {path} lies inside {parent}, which is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LeantrainError(f"cannot write to {what} {path}: {e.strerror or e}") from None
    return path


def save(run_dir: Path, step: int, meta: dict, tensors: dict[str, dict[str, torch.Tensor]], *,
         keep: int = 1, best: bool = False) -> Path:
    """Write checkpoint ``step`` atomically and make it ``latest`` (and ``best`` if asked); then keep
    the ``keep`` newest checkpoints up to this step (see :func:`prune`). Returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    if (root / name).exists():  # a second checkpoint of this step (e.g. after end-of-run work): another
        name = next(f"{name}-{k}" for k in itertools.count(2)  # name, so `latest` never names a
                    if not (root / f"{name}-{k}").exists())     # directory being replaced
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        meta = {**meta, "format": FORMAT, "step": step, "sha256": {}}
        for kind in [*FILES, *(k for k in tensors if k not in FILES and tensors[k])]:
            f = tmp / f"{kind}.safetensors"
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors[kind].items()}, f)
            _fsync(f)
            meta["sha256"][kind] = _sha256(f)
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        _fsync(tmp / "state.json")
        final = root / name
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / "latest", name + "\n")
    if best:
        write_text_atomic(root / "best", name + "\n")
    prune(root, name, keep)
    return final


POINTERS = ("latest", "best")


def _order(name: str) -> tuple[int, int] | None:
    """(step, k) of a checkpoint directory name ``step_N`` or ``step_N-k`` (the k-th save of step N)."""
    m = re.fullmatch(r"step_(\d+)(?:-(\d+))?", name)
    return (int(m[1]), int(m[2] or 1)) if m else None


def prune(root: Path, current: str, keep: int) -> list[str]:
    """Remove checkpoints saved before ``current`` beyond the ``keep`` newest (counting ``current``),
    except the one ``best`` names; returns the names removed. Checkpoints of later steps (left by a
    timeline a resume from an older checkpoint abandoned) are not touched: a mistaken resume never
    deletes a later good checkpoint (the next save at their step replaces them)."""
    best = root / "best"
    protected = {best.read_text().strip()} if best.is_file() else set()
    here = _order(current)
    older = sorted((o, d.name) for d in root.iterdir()
                   if d.is_dir() and (o := _order(d.name)) is not None and o < here)
    removed = [n for _, n in older[: max(0, len(older) - (keep - 1))] if n not in protected]
    for name in removed:
        shutil.rmtree(root / name, ignore_errors=True)
    return removed


def resolve(path: str | Path) -> Path:
    """A run directory (follows ``checkpoints/latest``), a checkpoint directory, or a pointer file
    (``RUN/checkpoints/latest``, ``RUN/checkpoints/best``)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    if path.name in POINTERS and path.parent.name == "checkpoints":
        if not path.is_file():
            hint = " (the run was trained without train.keep_best)" if path.name == "best" else ""
            raise LeantrainError(f"checkpoint not found: {path}{hint}")
        ckpt = path.parent / path.read_text().strip()
        if (ckpt / "state.json").is_file():
            return ckpt
        raise LeantrainError(f"corrupt checkpoint: {path} names {ckpt.name}, which is missing")
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        ckpt = path / "checkpoints" / latest.read_text().strip()
        if (ckpt / "state.json").is_file():
            return ckpt
        raise LeantrainError(f"corrupt checkpoint: {latest} names {ckpt.name}, which is missing")
    if not path.exists():
        raise LeantrainError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise LeantrainError(f"{path} is a file; give a run or checkpoint directory")
    raise LeantrainError(f"no checkpoint in {path} (expected checkpoints/latest or state.json)")


def read_meta(path: str | Path) -> dict:
    """Just ``state.json`` (validated), e.g. to read a checkpoint's recipe before building a model."""
    ckpt = resolve(path)
    try:
        meta = json.loads((ckpt / "state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeantrainError(f"corrupt checkpoint {ckpt}: state.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LeantrainError(f"corrupt checkpoint {ckpt}: unknown format {meta.get('format')!r}"
                             if isinstance(meta, dict) else f"corrupt checkpoint {ckpt}: bad state.json")
    return meta


def load(path: str | Path) -> Checkpoint:
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    tensors = {"methods": {}}
    kinds = set(FILES) | set(meta.get("sha256", {}))
    for kind in sorted(kinds):
        f = ckpt / f"{kind}.safetensors"
        if not f.is_file():
            raise LeantrainError(f"corrupt checkpoint {ckpt}: {f.name} is missing")
        if _sha256(f) != meta.get("sha256", {}).get(kind):
            raise LeantrainError(f"corrupt checkpoint {ckpt}: {f.name} fails its checksum")
        try:
            tensors[kind] = load_file(f)
        except (SafetensorError, OSError, ValueError) as e:
            raise LeantrainError(f"corrupt checkpoint {ckpt}: cannot read {f.name} ({e})") from None
    return Checkpoint(ckpt, meta, tensors["model"], tensors["optimizer"], tensors["rng"], tensors["methods"])


def method_tensors(ckpt: Checkpoint, method: str) -> dict[str, torch.Tensor]:
    """The tensors ``method`` saved (``Method.tensors``), without the ``<method>/`` prefix, as fresh
    copies. A method may compute with them directly (grow's operator phase keeps the source weights as
    buffers), and the tensors safetensors reads sit at the file's offsets — not 64-byte aligned — where
    CPU kernels take other vector paths and round differently: a resumed run would drift in the last
    bits (the model's and optimizer's tensors are copied into fresh memory on load already)."""
    prefix = f"{method}/"
    return {k[len(prefix):]: v.clone() for k, v in ckpt.methods.items() if k.startswith(prefix)}
