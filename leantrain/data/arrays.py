"""Classification from arrays: ``npz`` (any user file) and ``cifar10`` (the binary version on disk).

Both (and ``mnist1d``) share :class:`ArrayTask`: samples are kept as loaded (uint8 images stay
uint8) and normalised per batch with per-channel statistics of the training split; the validation
split is carved from the training part by a seeded permutation unless the data brings one; the test
split is evaluated at the end of a run and never used for choices. Training batches come from
:class:`EpochSampler`: a seeded permutation per epoch (per rank under DDP), with optional
augmentation drawn from the same generator — random circular shifts for 1-D signals, random crops
with zero padding + horizontal flips for images (the CIFAR ResNet recipe) — so a resumed run sees
the same batches.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import check
from ..errors import LeantrainError
from ..registry import register_data
from . import DataInfo, Sampler, Task


@dataclass
class ArrayConfig:
    """Options every array data kind shares."""
    val_fraction: float = 0.1
    """Share of the training samples carved out for validation (when the data has no validation split)."""
    split_seed: int = 0
    """Seed of the permutation that carves the validation split; the same for every run."""
    num_classes: int | None = None
    """Number of classes; null = 1 + the largest training label. Labels must lie in [0, num_classes)."""
    augment: bool = False
    """Augment training batches: random circular shifts (1-D signals), random crops with padding and
    horizontal flips (images)."""
    max_shift: int = 4
    """1-D augmentation: shift each signal circularly by a uniform integer in [-max_shift, max_shift]."""
    crop_padding: int = 4
    """Image augmentation: zero-pad by this many pixels, then crop back at a uniform random offset."""
    flip: bool = True
    """Image augmentation: flip each image horizontally with probability 1/2."""

    def validate(self) -> None:
        check(0.0 < self.val_fraction < 1.0, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        check(self.num_classes is None or self.num_classes >= 2, "num_classes", "must be at least 2")
        check(self.max_shift >= 0, "max_shift", f"must be ≥ 0, got {self.max_shift}")
        check(self.crop_padding >= 0, "crop_padding", f"must be ≥ 0, got {self.crop_padding}")


def as_samples(x: np.ndarray, where: str) -> torch.Tensor:
    """N×L → N×1×L; N×C×L and N×C×H×W as they are. uint8 stays uint8, other numbers become float32."""
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise LeantrainError(f"{where}: x must hold real numbers (uint8 or float), got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise LeantrainError(f"{where}: x must be N×L, N×C×L or N×C×H×W, got shape {x.shape}")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise LeantrainError(f"{where}: x contains NaN or Inf")
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.unsqueeze(1) if t.dim() == 2 else t


def as_labels(y: np.ndarray, n: int, where: str) -> torch.Tensor:
    if y.ndim != 1:
        raise LeantrainError(f"{where}: y must be a vector of N labels, got shape {y.shape}")
    if len(y) != n:
        raise LeantrainError(f"{where}: x has {n} samples but y has {len(y)} labels")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise LeantrainError(f"{where}: labels must be integers, got non-integer values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise LeantrainError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if n and y.min() < 0:
        raise LeantrainError(f"{where}: labels must be ≥ 0, got {y.min()}")
    return torch.from_numpy(y.astype(np.int64))


class EpochSampler(Sampler):
    """Batches from a seeded permutation per epoch of this rank's shard (samples rank::world); a
    batch that crosses an epoch's end continues in the next permutation. Augmentations draw from the
    same generator, so one state restores everything."""

    def __init__(self, task: "ArrayTask", batch_size: int, seed: int, rank: int, world: int):
        self.task, self.batch_size = task, batch_size
        self.shard = torch.arange(len(task.y_train))[rank::world]
        if len(self.shard) == 0:
            raise LeantrainError(f"the training split ({len(task.y_train)} samples) is smaller than the "
                                 f"{world} ranks")
        self.gen = torch.Generator().manual_seed(seed + 1_000_003 * rank)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.epoch = 0

    def _indices(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need:
            if self.pos == len(self.perm):
                self.perm = self.shard[torch.randperm(len(self.shard), generator=self.gen)]
                self.pos, self.epoch = 0, self.epoch + 1
            take = self.perm[self.pos: self.pos + need]
            parts.append(take)
            self.pos += len(take)
            need -= len(take)
        return torch.cat(parts)

    def next(self):
        idx = self._indices()
        x = self.task.raw(self.task.x_train[idx])
        if self.task.cfg.augment:
            x = self.task.augment(x, self.gen)
        return self.task.normalise(x), self.task.y_train[idx]

    def state(self) -> dict[str, torch.Tensor]:
        return {"sampler": self.gen.get_state(), "sampler.perm": self.perm,
                "sampler.pos": torch.tensor([self.pos, self.epoch])}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["sampler"])
        self.perm = state["sampler.perm"].clone()
        self.pos, self.epoch = (int(v) for v in state["sampler.pos"])


def shift_signals(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Roll each (C, L) signal by its own uniform shift in [-max_shift, max_shift]."""
    B, _, L = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (B, 1), generator=gen)
    idx = (torch.arange(L) - shifts) % L
    return x.gather(2, idx[:, None, :].expand_as(x))


def crop_flip_images(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to H×W at a random offset per image, flip half horizontally."""
    B, C, H, W = x.shape
    if padding:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        oy, ox = (torch.randint(0, 2 * padding + 1, (B,), generator=gen) for _ in range(2))
        rows = (oy[:, None] + torch.arange(H))[:, :, None]
        cols = (ox[:, None] + torch.arange(W))[:, None, :]
        x = padded.permute(0, 2, 3, 1)[torch.arange(B)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        flips = torch.rand(B, generator=gen) < 0.5
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


class ArrayTask(Task):
    """Classification from in-memory arrays. Subclasses implement ``load()`` returning
    (x_train, y_train, x_val | None, y_val | None, x_test | None, y_test | None) as numpy arrays."""
    task = "classification"
    unit = "samples"

    def __init__(self, cfg: ArrayConfig):
        super().__init__(cfg)
        x, y, xv, yv, xt, yt = self.load()
        where = self.describe()
        self.x_train = as_samples(x, where)
        self.y_train = as_labels(y, len(self.x_train), where)
        if xv is None:
            n_val = int(len(self.y_train) * cfg.val_fraction)
            if n_val == 0 or n_val == len(self.y_train):
                raise LeantrainError(f"{where}: val_fraction={cfg.val_fraction} of {len(self.y_train)} training "
                                     "samples leaves an empty split")
            perm = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(cfg.split_seed))
            val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
            self.x_val, self.y_val = self.x_train[val], self.y_train[val]
            self.x_train, self.y_train = self.x_train[train], self.y_train[train]
        else:
            self.x_val = as_samples(xv, f"{where} (validation)")
            self.y_val = as_labels(yv, len(self.x_val), f"{where} (validation)")
        self.x_test = self.y_test = None
        if xt is not None:
            self.x_test = as_samples(xt, f"{where} (test)")
            self.y_test = as_labels(yt, len(self.x_test), f"{where} (test)")
        self._check_splits(where)
        self.num_classes = cfg.num_classes or int(self.y_train.max()) + 1
        for split, labels in (("train", self.y_train), ("val", self.y_val), ("test", self.y_test)):
            if labels is not None and int(labels.max()) >= self.num_classes:
                source = "num_classes" if cfg.num_classes else "the training labels"
                raise LeantrainError(f"{where}: a {split} label is {int(labels.max())}, but {source} "
                                     f"implies {self.num_classes} classes (labels 0..{self.num_classes - 1})")
        self._stats()

    # -- subclasses
    def load(self):
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    # -- checks and statistics
    def _check_splits(self, where: str) -> None:
        shapes = {s: x.shape[1:] for s, x in (("train", self.x_train), ("val", self.x_val),
                                              ("test", self.x_test)) if x is not None}
        for split, x in (("train", self.x_train), ("val", self.x_val), ("test", self.x_test)):
            if x is not None and len(x) == 0:
                raise LeantrainError(f"{where}: the {split} split is empty")
        if len(set(shapes.values())) > 1:
            raise LeantrainError(f"{where}: splits have different sample shapes {shapes}")
        dtypes = {x.dtype for x in (self.x_train, self.x_val, self.x_test) if x is not None}
        if len(dtypes) > 1:
            raise LeantrainError(f"{where}: splits have different dtypes {sorted(map(str, dtypes))}")

    def _stats(self) -> None:
        """Per-channel mean and std of the (raw, [0, 1]-scaled) training split."""
        x = self.raw(self.x_train).double().transpose(0, 1).reshape(self.x_train.size(1), -1)
        self.mean = x.mean(1).float()
        self.std = x.std(1).clamp_min(1e-8).float()
        shape = (1, -1) + (1,) * (self.x_train.dim() - 2)
        self.mean, self.std = self.mean.view(shape), self.std.view(shape)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as float32 (uint8 scaled to [0, 1])."""
        return x.float() / 255.0 if x.dtype == torch.uint8 else x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if x.dim() == 3:
            return shift_signals(x, self.cfg.max_shift, gen) if self.cfg.max_shift else x
        return crop_flip_images(x, self.cfg.crop_padding, self.cfg.flip, gen)

    # -- the Task interface
    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "val") + (("test",) if self.x_test is not None else ())

    def info(self) -> DataInfo:
        return DataInfo(task="classification", input_shape=tuple(self.x_train.shape[1:]),
                        num_classes=self.num_classes)

    def meta(self) -> dict:
        return {"classes": self.num_classes, "input_shape": list(self.x_train.shape[1:])}

    def fingerprint(self) -> dict:
        """Kind, classes, sample shape, split sizes and a hash of every split's samples and labels (as
        held in memory: one pass over data already loaded); the file or directory it came from, if any,
        for information."""
        from . import tensor_digest
        sizes = {s: len(y) for s, y in (("train", self.y_train), ("val", self.y_val), ("test", self.y_test))
                 if y is not None}
        path = {"path": str(self.cfg.path)} if getattr(self.cfg, "path", None) else {}
        return {"kind": self.name, **path, **self.meta(), "samples": sizes,
                "sha256": tensor_digest(self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)}

    def sampler(self, batch_size: int, seed: int, rank: int, world: int, model_cfg) -> EpochSampler:
        return EpochSampler(self, batch_size, seed, rank, world)

    def eval_batches(self, split: str, batch_size: int, model_cfg, *, whole: bool = True, n_batches: int = 0):
        """Every sample of ``split`` in order (classification splits are small: always whole)."""
        if split not in self.splits:
            raise LeantrainError(f"{self.describe()} has no {split!r} split (it has {', '.join(self.splits)})")
        x, y = {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
                "test": (self.x_test, self.y_test)}[split]
        return [(self.normalise(self.raw(xs)), ys) for xs, ys in zip(x.split(batch_size), y.split(batch_size))]


# ----------------------------------------------------------------------------------- npz
@dataclass
class NpzConfig(ArrayConfig):
    path: str = ""
    """A .npz file with `x` (N×L, N×C×L or N×C×H×W; uint8 or float) and `y` (N integer labels);
    optional `x_val`/`y_val` (else carved by val_fraction) and `x_test`/`y_test`."""

    def validate(self) -> None:
        super().validate()
        check(bool(self.path), "path", "give the .npz file (data.path=...)")


@register_data
class NpzTask(ArrayTask):
    """Classification arrays from a .npz file (never unpickles: object arrays are refused)."""
    name = "npz"
    Config = NpzConfig

    def describe(self) -> str:
        return f"npz data {self.cfg.path}"

    def load(self):
        path = Path(self.cfg.path)
        if not path.is_file():
            raise LeantrainError(f"npz data file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise LeantrainError(f"cannot read npz data {path}: {e}") from None
        for need in ("x", "y"):
            if need not in arrays:
                raise LeantrainError(f"npz data {path} has no {need!r} array (it has {sorted(arrays) or 'none'})")
        for a, b in (("x_val", "y_val"), ("x_test", "y_test")):
            if (a in arrays) != (b in arrays):
                raise LeantrainError(f"npz data {path} has {a if a in arrays else b!r} without "
                                     f"{b if a in arrays else a!r}")
        return (arrays["x"], arrays["y"], arrays.get("x_val"), arrays.get("y_val"),
                arrays.get("x_test"), arrays.get("y_test"))


# ----------------------------------------------------------------------------------- CIFAR-10
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"


@dataclass
class Cifar10Config(ArrayConfig):
    path: str = ""
    """Directory of CIFAR-10's binary version: data_batch_1.bin … data_batch_5.bin and test_batch.bin
    (one label byte + 3072 pixel bytes per record). Nothing is downloaded."""
    num_classes: int | None = 10
    """CIFAR-10 has 10 classes."""
    augment: bool = True
    """Random crops (4-pixel zero padding) and horizontal flips: the CIFAR ResNet recipe."""

    def validate(self) -> None:
        super().validate()
        check(bool(self.path), "path", "give the directory of the binary version (data.path=...)")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise LeantrainError(f"CIFAR-10 file {path} is truncated or not the binary version: {raw.size} bytes "
                             f"is not a whole number of {CIFAR_RECORD}-byte records")
    records = raw.reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]


@register_data
class Cifar10Task(ArrayTask):
    """CIFAR-10 from its binary version on disk."""
    name = "cifar10"
    Config = Cifar10Config

    def describe(self) -> str:
        return f"CIFAR-10 data in {self.cfg.path}"

    def load(self):
        root = Path(self.cfg.path)
        if not root.is_dir():
            raise LeantrainError(f"CIFAR-10 directory not found: {root}")
        missing = [f for f in (*CIFAR_TRAIN, CIFAR_TEST) if not (root / f).is_file()]
        if missing:
            raise LeantrainError(f"CIFAR-10 directory {root} lacks {', '.join(missing)} (the binary version "
                                 "has data_batch_1..5.bin and test_batch.bin)")
        train = [read_cifar_batch(root / f) for f in CIFAR_TRAIN]
        xt, yt = read_cifar_batch(root / CIFAR_TEST)
        return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), None, None, xt, yt)
