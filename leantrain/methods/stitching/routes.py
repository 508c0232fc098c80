"""Which configurations a stitched family allows: SN-Net v1, SN-Net v2 and Learngene descendants.

A configuration is a :class:`Route`: segments ``(stack, start, stop)`` run in order (blocks
``start..stop-1`` of that stack), joined by stitch layers named by key. The first segment's stack
supplies the embedding, the last one's the final LayerNorm and head. Enumeration here is pure
bookkeeping over the stacks' widths and depths, in a fixed order, so a configuration's id (its index)
is stable; :mod:`.family` owns the weights.

Stacks are numbered in ascending width (the family builders sort them), so "small → large" is
"lower index → higher index".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import ConfigError

V2_KINDS = ("sl", "ls", "lsl", "sls")


@dataclass(frozen=True)
class Segment:
    stack: int
    start: int
    """First block run (inclusive)."""
    stop: int
    """Block after the last one run (exclusive)."""


@dataclass(frozen=True)
class Route:
    kind: str
    """``anchor`` (one stack alone), ``sl`` / ``ls`` (small→large / large→small), ``lsl`` / ``sls``
    (three-part), ``auxiliary`` / ``descendant`` (Learngene Pool)."""
    segments: tuple[Segment, ...]
    stitches: tuple[str, ...]
    """Key of the stitch layer between segment i and i+1 (see :func:`stitch_key`)."""


def stitch_key(front: int, end: int, layer: int) -> str:
    """Name of stitch layer ``layer`` from stack ``front`` to stack ``end`` (a ModuleDict key)."""
    return f"{front}to{end}_{layer}"


def parse_stitch_key(key: str) -> tuple[int, int, int]:
    pair, layer = key.split("_")
    front, end = pair.split("to")
    return int(front), int(end), int(layer)


def window_positions(depth: int, window: int = 2, stride: int = 1) -> list[tuple[int, int, int]]:
    """SN-Net's stitch positions ``(j, k, layer)``: the front stack runs blocks 0..j, the end stack
    blocks k..depth-1. A window of ``window`` blocks slides by ``stride``; every (j, k) with both in
    the window is a position, and the positions a window adds for the first time share one stitch
    layer. Window 2, stride 1 gives |j − k| ≤ 1: 34 positions, 11 layers for 12 blocks."""
    positions, seen, layer = [], set(), 0
    for start in range(0, depth, stride):
        ids = range(start, min(start + window, depth))
        new = [(j, k) for j in ids for k in ids if (j, k) not in seen]
        if new:
            positions += [(j, k, layer) for j, k in new]
            seen.update(new)
            layer += 1
    return positions


def _name(labels: Sequence[str] | None, i: int) -> str:
    return labels[i] if labels else f"stack {i}"


def _check_sorted(widths: Sequence[int], labels: Sequence[str] | None) -> None:
    for i in range(1, len(widths)):
        if widths[i] < widths[i - 1]:
            raise ConfigError(f"stacks must be ordered by width: {_name(labels, i)} ({widths[i]}) comes "
                              f"after {_name(labels, i - 1)} ({widths[i - 1]})")


def _check_one_depth(depths: Sequence[int], labels: Sequence[str] | None, who: str) -> int:
    for i, d in enumerate(depths):
        if d != depths[0]:
            raise ConfigError(f"{who} stitches stacks of one depth: {_name(labels, 0)} has {depths[0]} "
                              f"blocks, {_name(labels, i)} has {d}")
    return depths[0]


def anchor_routes(depths: Sequence[int], kind: str = "anchor") -> list[Route]:
    return [Route(kind, (Segment(s, 0, d),), ()) for s, d in enumerate(depths)]


def stack_pairs(n: int, pairs: str) -> list[tuple[int, int]]:
    """(front, end) stack pairs stitched: ``nearest`` neighbours in width, or ``all`` small→large pairs."""
    if pairs == "nearest":
        return [(i, i + 1) for i in range(n - 1)]
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


def snnet_v1_routes(widths: Sequence[int], depths: Sequence[int], window: int = 2, stride: int = 1,
                    pairs: str = "nearest", labels: Sequence[str] | None = None,
                    kinds: tuple[str, str] = ("anchor", "sl")) -> list[Route]:
    """Every stack alone, then every small→large stitch of each pair at each window position
    (3 + 2·34 = 71 configurations for three 12-block anchors)."""
    _check_sorted(widths, labels)
    D = _check_one_depth(depths, labels, "SN-Net v1" if kinds[0] == "anchor" else "Learngene Pool")
    routes = anchor_routes(depths, kinds[0])
    for a, b in stack_pairs(len(widths), pairs):
        for j, k, layer in window_positions(D, window, stride):
            routes.append(Route(kinds[1], (Segment(a, 0, j + 1), Segment(b, k, D)),
                                (stitch_key(a, b, layer),)))
    return routes


def learngene_routes(widths: Sequence[int], depths: Sequence[int], window: int = 2, stride: int = 1,
                     pairs: str = "all", labels: Sequence[str] | None = None) -> list[Route]:
    """Learngene descendants: each auxiliary model alone, then instances of a narrower model stitched
    to those of a wider one at SN-Net's window positions (the reference code stitches Tiny → Base)."""
    return snnet_v1_routes(widths, depths, window, stride, pairs, labels, ("auxiliary", "descendant"))


def snnet_v2_routes(widths: Sequence[int], depths: Sequence[int], kinds: Sequence[str] = V2_KINDS,
                    labels: Sequence[str] | None = None) -> list[Route]:
    """SN-Net v2's two-way routes for each nearest pair (small S of depth D_S, large L of depth
    D_L = r·D_S), after every stack alone. A stitch after small block i enters L at block (i+1)·r; one
    after large block (i+1)·r − 1 enters S at block i+1:

    * ``sl`` S[0..i] → L[(i+1)r..]          * ``ls`` L[0..(i+1)r−1] → S[i+1..]
    * ``lsl`` L → S[i+1..c] → L[(c+1)r..]    * ``sls`` S[0..i] → L[(i+1)r..(c+1)r−1] → S[c+1..]

    for 0 ≤ i < c ≤ D_S − 2. Stitch layer i of a direction serves every route that crosses there.
    With D_S = 12: 11 + 11 + 55 + 55 stitched routes. (The reference also lists an ``sl`` route that
    runs no large block at all, and leaves it out of training; we leave it out altogether.)"""
    _check_sorted(widths, labels)
    unknown = set(kinds) - set(V2_KINDS)
    if unknown:
        raise ConfigError(f"unknown SN-Net v2 route kind {sorted(unknown)[0]!r}; "
                          f"known: {', '.join(V2_KINDS)}")
    routes = anchor_routes(depths)
    for small, large in stack_pairs(len(widths), "nearest"):
        ds, dl = depths[small], depths[large]
        if dl < ds or dl % ds:
            raise ConfigError(f"SN-Net v2 needs the larger anchor's depth to be a multiple of the smaller's: "
                              f"{_name(labels, large)} has {dl} blocks, {_name(labels, small)} has {ds}")
        routes += _two_way_routes(small, large, ds, dl // ds, kinds)
    return routes


def _two_way_routes(small: int, large: int, ds: int, r: int, kinds: Sequence[str]) -> list[Route]:
    dl = ds * r
    cuts = range(ds - 1)  # a stitch after small block i meets large block (i+1)·r, and back

    def S(start: int, stop: int) -> Segment:
        return Segment(small, start, stop)

    def L(start: int, stop: int) -> Segment:
        return Segment(large, start, stop)

    def up(i: int) -> str:
        return stitch_key(small, large, i)

    def down(i: int) -> str:
        return stitch_key(large, small, i)

    out = []
    if "sl" in kinds:
        out += [Route("sl", (S(0, i + 1), L((i + 1) * r, dl)), (up(i),)) for i in cuts]
    if "ls" in kinds:
        out += [Route("ls", (L(0, (i + 1) * r), S(i + 1, ds)), (down(i),)) for i in cuts]
    if "lsl" in kinds:
        out += [Route("lsl", (L(0, (i + 1) * r), S(i + 1, c + 1), L((c + 1) * r, dl)), (down(i), up(c)))
                for i in cuts for c in cuts if c > i]
    if "sls" in kinds:
        out += [Route("sls", (S(0, i + 1), L((i + 1) * r, (c + 1) * r), S(c + 1, ds)), (up(i), down(c)))
                for i in cuts for c in cuts if c > i]
    return out
