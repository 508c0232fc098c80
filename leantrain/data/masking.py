"""Masked language modelling on any token data (BERT's objective), as a wrapper around a data kind.

Each training window is masked as BERT and Hugging Face's ``DataCollatorForLanguageModeling`` do:
every token is selected with probability ``mlm_probability`` (15%); of the selected, 80% become the
mask token, 10% a uniformly random token of the data's vocabulary, 10% stay as they are. Targets
are the original ids at the selected positions and -100 (ignored) elsewhere. [ours] A window with no
selected token gets one, uniformly chosen, so every window is scored.

The masks come from a seeded generator per rank whose state is checkpointed with the wrapped
sampler's (exact resume); evaluation batches are masked from a fixed seed, the same every time.
The mask token is, unless the model names one, an id appended after the data's vocabulary.
"""
from __future__ import annotations

import torch

from . import DataInfo, Sampler, Task

EVAL_SEED = 20_240_615  # evaluation masks: the same for every run and evaluation


def mask_tokens(x: torch.Tensor, probability: float, mask_id: int, vocab_size: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, targets with -100 where not selected) for a (B, T) batch of token ids."""
    selected = torch.rand(x.shape, generator=gen) < probability
    empty = ~selected.any(1)
    if empty.any():  # [ours] one selected token in a window that drew none
        pick = torch.randint(x.size(1), (x.size(0),), generator=gen)
        selected[empty, pick[empty]] = True
    targets = torch.where(selected, x, torch.full_like(x, -100))
    u = torch.rand(x.shape, generator=gen)
    random_ids = torch.randint(vocab_size, x.shape, generator=gen)
    inputs = torch.where(selected & (u < 0.8), torch.full_like(x, mask_id), x)
    inputs = torch.where(selected & (u >= 0.8) & (u < 0.9), random_ids, inputs)
    return inputs, targets


class MaskedSampler(Sampler):
    def __init__(self, inner: Sampler, probability: float, mask_id: int, vocab_size: int, seed: int):
        self.inner, self.probability, self.mask_id, self.vocab_size = inner, probability, mask_id, vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def next(self):
        x, _ = self.inner.next()
        return mask_tokens(x, self.probability, self.mask_id, self.vocab_size, self.gen)

    def state(self) -> dict[str, torch.Tensor]:
        return {**self.inner.state(), "sampler.mlm": self.gen.get_state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["sampler.mlm"])
        self.inner.load_state({k: v for k, v in state.items() if k != "sampler.mlm"})


class MaskedLMTask(Task):
    """A token data kind seen through BERT's masking (everything else is the wrapped kind's)."""
    task = "lm"
    unit = "tokens"

    def __init__(self, inner: Task, probability: float, mask_token_id: int | None):
        self.inner, self.cfg = inner, inner.cfg
        self.probability = probability
        self.data_vocab = inner.info().vocab_size
        self.mask_id = self.data_vocab if mask_token_id is None else mask_token_id

    def __getattr__(self, name):  # anything not masking-specific is the wrapped kind's
        return getattr(self.__dict__["inner"], name)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def splits(self):
        return self.inner.splits

    @property
    def eval_batch_size(self) -> int:
        return self.inner.eval_batch_size

    def info(self) -> DataInfo:
        return DataInfo(task="lm", vocab_size=max(self.data_vocab, self.mask_id + 1))

    def check_model(self, model_cfg, batch_size: int, world: int) -> None:
        self.inner.check_model(model_cfg, batch_size, world)

    def items_per_sample(self, model_cfg) -> int:
        return self.inner.items_per_sample(model_cfg)

    def meta(self) -> dict:
        return {**self.inner.meta(), "mask_token_id": self.mask_id}

    def sampler(self, batch_size: int, seed: int, rank: int, world: int, model_cfg) -> MaskedSampler:
        inner = self.inner.sampler(batch_size, seed, rank, world, model_cfg)
        return MaskedSampler(inner, self.probability, self.mask_id, self.data_vocab,
                             seed + 7_919 + 1_000_003 * rank)

    def has_fixed_eval(self) -> bool:
        return self.inner.has_fixed_eval()

    def eval_batches(self, split: str, batch_size: int, model_cfg, *, whole: bool = False, n_batches: int = 0):
        gen = torch.Generator().manual_seed(EVAL_SEED + (1 if split == "train" else 0))
        return [mask_tokens(x, self.probability, self.mask_id, self.data_vocab, gen)
                for x, _ in self.inner.eval_batches(split, batch_size, model_cfg, whole=whole, n_batches=n_batches)]

    def score(self, logits: torch.Tensor, y: torch.Tensor):
        """Per-window mean cross-entropy over the selected tokens (every window has one)."""
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                                ignore_index=-100, reduction="none").view(y.shape)
        counted = (y != -100).float()
        return (nll * counted).sum(1) / counted.sum(1).clamp_min(1.0), None
