"""Diff structure: pair tensors by name, content (renames) and aligned layer blocks.

Part of modelstore.diff, whose docstring states the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any


from modelstore.diff_inputs import (  # noqa: F401
    ALIGN_MAX_CELLS,
    _INDEX_BONUS,
    _split_block,
    _join,
    block_of,
    TInfo,
)


# --------------------------------------------------------------------------- pairing


@dataclass
class _Pair:
    a: TInfo | None
    b: TInfo | None
    how: str = "name"  # name | aligned | renamed | added | removed
    block: str = ""
    side: str = "b"  # "a": the tensor of a block only A has (its group must not merge with B's namesake)


def _block_members(tensors: dict[str, TInfo]):
    """{family: {token: {suffix: TInfo}}} and the names outside any family."""
    fams: dict[str, dict[str, dict[str, TInfo]]] = {}
    loose = []
    for name, t in tensors.items():
        sp = _split_block(name)
        if sp is None:
            loose.append(name)
        else:
            fams.setdefault(sp[0], {}).setdefault(sp[1], {})[sp[2]] = t
    return fams, loose


def _align_blocks(tok_a: list[str], tok_b: list[str], blocks_a, blocks_b) -> list[tuple[str, str]]:
    """Monotone pairing of A's and B's blocks maximising Σ similarity over paired blocks (DP).

    sim(i, j) = struct + 2 * content, where struct is the fraction of member suffixes (of the
    union) present in both with the same dtype and shape, and content the fraction with the
    same chunk ids. Blocks with struct < 0.5 and no shared content are never paired. Gaps are
    free; a tiny bonus for equal indices makes index pairing win every tie. Structure is
    compared once per pair of distinct block layouts, content through an index of member
    contents, so the cost is O(members + na*nb).
    """
    na, nb = len(tok_a), len(tok_b)
    if na * nb > ALIGN_MAX_CELLS:
        common = set(tok_a) & set(tok_b)
        return [(t, t) for t in tok_a if t in common and _struct_sim(_layout(blocks_a[t]), _layout(blocks_b[t])) >= 0.5]
    lay_a = [_layout(blocks_a[t]) for t in tok_a]
    lay_b = [_layout(blocks_b[t]) for t in tok_b]
    struct_cache: dict[tuple, float] = {}
    content: dict[tuple[int, int], int] = {}
    index: dict[tuple, list[int]] = {}
    for i, t in enumerate(tok_a):
        for suffix, m in blocks_a[t].items():
            if m.numel:
                index.setdefault((suffix, m.chunk_rows, m.content_key()), []).append(i)
    for j, t in enumerate(tok_b):
        for suffix, m in blocks_b[t].items():
            for i in index.get((suffix, m.chunk_rows, m.content_key()), ()) if m.numel else ():
                content[i, j] = content.get((i, j), 0) + 1
    sim: list[list[float | None]] = []
    for i in range(na):
        row = []
        for j in range(nb):
            key = (lay_a[i], lay_b[j])
            st = struct_cache.get(key)
            if st is None:
                st = struct_cache[key] = _struct_sim(lay_a[i], lay_b[j])
            c = content.get((i, j), 0)
            if st < 0.5 and c == 0:
                row.append(None)
                continue
            union = len(lay_a[i].keys() | lay_b[j].keys())
            row.append(st + 2.0 * c / union + (_INDEX_BONUS if tok_a[i] == tok_b[j] else 0.0))
        sim.append(row)
    score = [[0.0] * (nb + 1) for _ in range(na + 1)]
    move = [[0] * (nb + 1) for _ in range(na + 1)]  # 1 diag, 2 up (skip A), 3 left (skip B)
    for i in range(1, na + 1):
        move[i][0] = 2
    for j in range(1, nb + 1):
        move[0][j] = 3
    for i in range(1, na + 1):
        row, prev, srow, mrow = score[i], score[i - 1], sim[i - 1], move[i]
        for j in range(1, nb + 1):
            s = srow[j - 1]
            up, left = prev[j], row[j - 1]
            if s is not None and prev[j - 1] + s >= up and prev[j - 1] + s >= left:
                row[j], mrow[j] = prev[j - 1] + s, 1
            elif up >= left:
                row[j], mrow[j] = up, 2
            else:
                row[j], mrow[j] = left, 3
    out = []
    i, j = na, nb
    while i > 0 or j > 0:
        mv = move[i][j]
        if mv == 1:
            out.append((tok_a[i - 1], tok_b[j - 1]))
            i, j = i - 1, j - 1
        elif mv == 2:
            i -= 1
        else:
            j -= 1
    out.reverse()
    return out


class _Layout(dict):
    """suffix -> (dtype, shape) of a block's members; hashable (for caching pair scores)."""

    def __hash__(self):
        h = getattr(self, "_h", None)
        if h is None:
            h = self._h = hash(frozenset(self.items()))
        return h

    def __eq__(self, other):
        return dict.__eq__(self, other)


def _layout(members: dict[str, TInfo]) -> _Layout:
    return _Layout((suffix, (m.dtype, m.shape)) for suffix, m in members.items())


def _struct_sim(la: dict, lb: dict) -> float:
    union = len(la.keys() | lb.keys())
    if not union:
        return 0.0
    return sum(1 for k, v in la.items() if lb.get(k) == v) / union


def _pair_tensors(ta: dict[str, TInfo], tb: dict[str, TInfo], align: bool):
    """Pairs (incl. renames), and block metadata: {b_block: a_block} for aligned blocks."""
    pairs: list[_Pair] = []
    only_a: dict[str, TInfo] = {}
    only_b: dict[str, TInfo] = {}
    block_match: dict[str, str] = {}  # B block -> A block (paired blocks)
    a_block_to_b: dict[str, str] = {}
    a_only_blocks: set[str] = set()
    if align:
        fa, loose_a = _block_members(ta)
        fb, loose_b = _block_members(tb)
        for name in loose_a:
            if name in tb:
                pairs.append(_Pair(ta[name], tb[name]))
            else:
                only_a[name] = ta[name]
        for name in loose_b:
            if name not in ta:
                only_b[name] = tb[name]
        for fam in sorted(fa.keys() | fb.keys()):
            ba, bb = fa.get(fam, {}), fb.get(fam, {})
            tok_a = sorted(ba, key=lambda s: (int(s), s))
            tok_b = sorted(bb, key=lambda s: (int(s), s))
            matches = _align_blocks(tok_a, tok_b, ba, bb) if ba and bb else []
            paired_a, paired_b = set(), set()
            for xa, xb in matches:
                paired_a.add(xa)
                paired_b.add(xb)
                ka, kb = _join(fam, xa, ""), _join(fam, xb, "")
                block_match[kb] = ka
                a_block_to_b[ka] = kb
                ma, mb = ba[xa], bb[xb]
                for suffix in sorted(ma.keys() | mb.keys()):
                    if suffix in ma and suffix in mb:
                        pairs.append(_Pair(ma[suffix], mb[suffix], "name" if xa == xb else "aligned", kb))
                    elif suffix in ma:
                        only_a[ma[suffix].name] = ma[suffix]
                    else:
                        only_b[mb[suffix].name] = mb[suffix]
            for xa in tok_a:
                if xa not in paired_a:
                    a_only_blocks.add(_join(fam, xa, ""))
                    for t in ba[xa].values():
                        only_a[t.name] = t
            for xb in tok_b:
                if xb not in paired_b:
                    for t in bb[xb].values():
                        only_b[t.name] = t
    else:
        for name, t in ta.items():
            if name in tb:
                pairs.append(_Pair(t, tb[name]))
            else:
                only_a[name] = t
        for name, t in tb.items():
            if name not in ta:
                only_b[name] = t
    # Renames: same (dtype, shape, chunk ids) only in A and only in B.
    by_key: dict[Any, list[TInfo]] = {}
    for t in sorted(only_a.values(), key=lambda t: t.name):
        if t.numel:
            by_key.setdefault(t.content_key(), []).append(t)
    for t in sorted(only_b.values(), key=lambda t: t.name):
        cands = by_key.get(t.content_key()) if t.numel else None
        if not cands:
            continue
        best = cands[0] if len(cands) == 1 else max(
            cands[:64], key=lambda c: (SequenceMatcher(None, c.name, t.name).ratio(), c.name))
        cands.remove(best)
        del only_a[best.name]
        del only_b[t.name]
        pairs.append(_Pair(best, t, "renamed"))
    for t in only_a.values():
        pairs.append(_Pair(t, None, "removed"))
    for t in only_b.values():
        pairs.append(_Pair(None, t, "added"))
    for p in pairs:
        if not p.block:
            if p.b is not None:
                p.block = block_of(p.b.name)
            else:
                ka = block_of(p.a.name)
                p.block = a_block_to_b.get(ka, ka)
                if ka in a_only_blocks:
                    p.side = "a"
    return pairs, block_match


