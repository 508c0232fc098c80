"""What a resumed run may differ in from its checkpoint: the data never, settings only when allowed.

A resumed run continues *the same* run. Two checks, both before anything is written:

* **Data.** ``Task.fingerprint()`` (kind, sizes, a content hash) is stored in every checkpoint as
  ``data_fingerprint``; resuming on data with another fingerprint is refused. The ``path`` entry is
  informational (a moved or copied file with the same content is the same data). Checkpoints written
  before fingerprints existed carry none: for them the facts the checkpoint does record about the
  data (``Task.meta()``: a text run's vocabulary, a classifier's classes and input shape) are
  compared instead, and the fingerprint is recorded from the next checkpoint on.
* **Settings.** Every recipe key (``train.*``, ``data.*``, ``methods.<name>.*``) that differs from the
  checkpoint's recipe is refused unless it is in ``TrainConfig.FREE_ON_RESUME`` (run length, intervals,
  threads, device: they change when or where the run works, not what it computes) or the user allows it
  (``--allow-changes KEY...``, ``Trainer(allow_changes=...)``; a section name such as ``train`` or
  ``methods.raptr`` allows all of its keys). Allowed changes are returned, to be reported.
  (The model section must match exactly, and the method list too: checked by the trainer.)
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError, LeantrainError


def flatten(recipe: dict) -> dict[str, Any]:
    """``{"train.lr": 0.001, "data.path": None, "methods.raptr.stages": [...], ...}`` (model excluded)."""
    out: dict[str, Any] = {}
    for section in ("data", "train"):
        for k, v in (recipe.get(section) or {}).items():
            out[f"{section}.{k}"] = v
    for entry in recipe.get("methods") or []:
        for k, v in entry.items():
            if k != "name":
                out[f"methods.{entry['name']}.{k}"] = v
    return out


def _normalised(saved: dict) -> dict:
    """The checkpoint's recipe with today's defaults filled in (keys added since it was written then
    compare equal to their defaults); as stored if it no longer builds."""
    from ..recipe import Recipe
    try:
        return Recipe.from_dict(saved).to_dict()
    except ConfigError:
        return saved


def _covered(key: str, allowed: Iterable[str]) -> bool:
    return any(key == a or key.startswith(a.rstrip(".") + ".") for a in allowed)


def recipe_changes(ckpt_path, saved_recipe: dict, recipe: dict, free: Iterable[str],
                   allow: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """The (key, checkpoint value, new value) changes of a resume; raises LeantrainError on the first
    one that is neither free nor allowed, and on an allowed key that names no recipe key."""
    before, after = flatten(_normalised(saved_recipe)), flatten(recipe)
    allow = list(allow)
    for a in allow:
        if not any(_covered(k, [a]) for k in (*before, *after)):
            import difflib
            close = difflib.get_close_matches(a, list(after), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"--allow-changes {a}: no such recipe key{hint}; name keys as section.key, "
                              "e.g. train.lr or methods.raptr.scale")
    free = {f"train.{k}" for k in free}
    changes = [(k, before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)]
    for key, old, new in changes:
        if key not in free and not _covered(key, allow):
            raise LeantrainError(
                f"checkpoint {ckpt_path} was trained with {key}={old!r}, the recipe has {new!r}: resuming "
                f"with other settings changes the run; pass --allow-changes {key} to resume anyway "
                f"(free to change: {', '.join(sorted(free))})")
    return changes


def check_data(ckpt_path, meta: dict, fingerprint: dict, data_meta: dict) -> None:
    """Refuse to resume on data other than the checkpoint's (see the module docstring)."""
    saved = meta.get("data_fingerprint")
    if saved is None:  # an older checkpoint: compare what it recorded about its data
        for k, v in data_meta.items():
            if k in meta and meta[k] != v:
                raise LeantrainError(f"checkpoint {ckpt_path} was trained on other data: {k} {_short(meta[k])} "
                                     f"then, {_short(v)} now; resume on the data it was trained on (for other "
                                     "data, start a new run)")
        return
    diff = data_difference(saved, fingerprint)
    if diff:
        raise LeantrainError(f"checkpoint {ckpt_path} was trained on other data: {diff}; "
                             "resume on the data it was trained on (for other data, start a new run)")


def data_difference(saved: dict, fingerprint: dict) -> str | None:
    """How two data fingerprints differ ("<first differing entry> then, ... now"), the path aside
    (the same content elsewhere is the same data); None when they match."""
    diff = [k for k in sorted(set(saved) | set(fingerprint)) if k != "path" and saved.get(k) != fingerprint.get(k)]
    if not diff:
        return None
    k = diff[0]
    then, now = (f"{fp['path']} ({k} {_short(fp.get(k))})" if fp.get("path") else f"{k} {_short(fp.get(k))}"
                 for fp in (saved, fingerprint))
    return f"{then} then, {now} now"


def _short(v: Any) -> str:
    if isinstance(v, list) and len(v) > 8:
        return f"{len(v)} entries"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return "resuming with changed settings: " + ", ".join(f"{k} {_short(a)} → {_short(b)}" for k, a, b in changes)
