"""Per-query running top-k filled from score blocks in one compiled pass (the CPU core of exact search).

Why compiled: faiss's flat index spends almost nothing beyond its matrix products because each score is
compared once, in C, with the query's current k-th best; anything written with tensor ops needs several
passes over every score block (a compare, a gather of the survivors, a merge) and cost exact search
15-25% on top of its matmuls. :meth:`RunningTopK.push` is that single pass (compiled by numba into
:func:`_scan` and :func:`_admit`; the GIL is released, so worker threads run in parallel).

Per query it keeps a buffer of ``2k`` candidates and a threshold (the k-th best seen so far). A row is
read in groups of :data:`GROUP` scores with a branch-free compare (vectorized); the rare group holding a
score at or above the threshold is looked at score by score, and each candidate that beats the
threshold is appended. When the buffer is full, one ``np.partition`` keeps its best ``k`` and raises the
threshold (faiss's "reservoir"): O(1) per candidate instead of a heap's O(log k) mispredicted branches.

Candidates are stored as one int64 **order key** each (:func:`order_keys`): the score's bits made
order-preserving in the high half, ``2**32 - 1 - index`` in the low half. Integer order is then exactly
densekit's result order (score descending, ties to the lower corpus index, padding ``-1`` last), so
admission, partition and the final sort need no tie rules of their own and the result is exact for
blocks in any order. NaN scores are reported (``push`` returns ``False``) rather than ranked.
"""
from __future__ import annotations

import numpy as np

try:
    import numba
    from numba.cpython.unsafe.numbers import trailing_zeros
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the tensor path usable without it
    numba = None

AVAILABLE = numba is not None

GROUP = 16  # scores compared at once before looking at members: two AVX2 registers of float32
INDEX_LIMIT = 2**32 - 1  # corpus indices must be below this to fit the low half of a key


def order_keys(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """int64 keys whose integer order is (score descending, index ascending, padding index -1 last)."""
    bits = (np.asarray(scores, np.float32) + np.float32(0.0)).view(np.int32)  # -0.0 -> +0.0: zeros tie
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    indices = np.asarray(indices, np.int64)
    low = np.where(indices < 0, 0, INDEX_LIMIT - indices)
    return (ordered.astype(np.int64) << 32) | low


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores float32, indices int64)`` of order keys (inverse of :func:`order_keys`)."""
    ordered = (keys >> 32).astype(np.int32)
    scores = (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(np.float32)
    low = keys & INDEX_LIMIT
    return scores, np.where(low == 0, -1, INDEX_LIMIT - low)


PADDING_KEY = int(order_keys(np.float32(-np.inf), np.int64(-1)))


def _key_score(key):
    """The float32 score in the high half of an order key."""
    ordered = np.int32(key >> 32)
    return np.array([ordered ^ ((ordered >> 31) & 0x7FFFFFFF)], np.int32).view(np.float32)[0]


def _key(score_bits, index):
    ordered = np.int64(score_bits ^ ((score_bits >> 31) & 0x7FFFFFFF))
    return (ordered << 32) | (INDEX_LIMIT - index)


def _scan(scores, thresholds, masks):
    """Mark, per row, each group of :data:`GROUP` scores holding one at or above the row's threshold:
    bit ``g % 64`` of ``masks[row, g // 64]`` for group ``g``. Returns ``True`` if the block holds a NaN.

    Kept apart from :func:`_admit` and free of calls, exits and per-group stores, so that it compiles
    to SIMD code: each of those, tried, made this pass 3x slower.
    """
    nq, m = scores.shape
    groups = m // GROUP
    has_nan = False
    for row in range(nq):
        values = scores[row]
        limit = thresholds[row]
        for word in range(masks.shape[1]):
            mask = np.uint64(0)
            for group in range(word * 64, min(groups, word * 64 + 64)):
                hit = False
                group_nan = False
                for j in range(group * GROUP, group * GROUP + GROUP):
                    hit |= values[j] >= limit
                    group_nan |= values[j] != values[j]
                has_nan |= group_nan
                mask |= np.uint64(hit) << np.uint64(group - word * 64)
            masks[row, word] = mask
        for j in range(groups * GROUP, m):
            has_nan |= values[j] != values[j]
    return has_nan


def _admit(scores, column_ids, masks, keys, states, thresholds):
    """Append each score of the marked groups (and of the ragged tail) that beats its row's threshold
    (``states[row] = [count, threshold key]``, ``thresholds[row]`` its score); when a row's buffer is
    full, keep its best ``k`` and raise the threshold."""
    bits = scores.view(np.int32)
    m = scores.shape[1]
    tail = m - m % GROUP
    k = keys.shape[1] // 2
    for row in range(scores.shape[0]):
        values = scores[row]
        count, threshold_key, limit = states[row, 0], states[row, 1], thresholds[row]
        for word in range(masks.shape[1] + 1):
            if word < masks.shape[1]:
                groups = masks[row, word]
            else:  # the ragged tail (fewer than GROUP scores) is not in the masks: one more "group"
                groups = np.uint64(1) if tail < m else np.uint64(0)
            while groups:  # visit the marked groups only
                start = (word * 64 + trailing_zeros(groups)) * GROUP if word < masks.shape[1] else tail
                groups &= groups - np.uint64(1)
                passed = np.uint64(0)
                for j in range(min(GROUP, m - start)):  # which members pass, as bits, without branches
                    passed |= np.uint64(values[start + j] >= limit) << np.uint64(j)
                while passed:
                    j = start + trailing_zeros(passed)
                    passed &= passed - np.uint64(1)
                    value = values[j]
                    if value < limit:  # the threshold rose since the bits were taken
                        continue
                    key = _key(bits[row, j] if value != 0 else 0, column_ids[j])  # -0.0 and 0.0 tie
                    if key <= threshold_key:
                        continue
                    keys[row, count] = key
                    count += 1
                    if count == 2 * k:
                        threshold_key = _compact(keys[row], k)
                        limit = _key_score(threshold_key)
                        count = k
        states[row, 0], states[row, 1], thresholds[row] = count, threshold_key, limit


def _compact(keys, k):
    """Keep the best ``k`` of a full buffer of ``2k`` keys in its first half; return the k-th best."""
    best = np.partition(keys, k)
    keys[:k] = best[k:]  # partition put the smallest of the best k at k
    keys[k:] = PADDING_KEY
    return best[k]


def _prime(scores, k, thresholds):
    """Give each row without a threshold yet (``-inf``) a safe one: the k-th largest of its group maxima.

    ``k`` scores of the row (one per group) are at least that high, so no score below it can be in
    the final top-k; the first block then admits a few hundred scores per row instead of all of them
    (an exact k-th largest of the row cost more than it saved). A NaN makes the threshold NaN, which
    admits nothing; :func:`_scan` reports it. Needs at least ``k`` groups in the block.
    """
    groups = scores.shape[1] // GROUP
    maxima = np.empty(groups, np.float32)
    for row in range(scores.shape[0]):
        if thresholds[row] != -np.inf:
            continue
        for group in range(groups):
            best = scores[row, group * GROUP]
            for j in range(group * GROUP + 1, group * GROUP + GROUP):
                best = max(best, scores[row, j])
            maxima[group] = best
        thresholds[row] = np.partition(maxima, groups - k)[groups - k]


if numba is not None:
    _jit = numba.njit(nogil=True, cache=True)
    _key = _jit(_key)
    _key_score = _jit(_key_score)
    _prime = _jit(_prime)
    _scan = _jit(_scan)
    _compact = _jit(_compact)
    _admit = _jit(_admit)


class RunningTopK:
    """The compiled running top-k of ``num_queries`` queries (numpy arrays; CPU only).

    ``push(scores, column_ids)`` folds in a ``[num_queries, m]`` float32 block; ``results()`` returns
    ``(scores [nq, k], indices [nq, k])`` sorted best first, padded with ``-inf`` / ``-1``.
    """

    def __init__(self, num_queries: int, k: int) -> None:
        self.k = k
        self.keys = np.full((num_queries, 2 * k), PADDING_KEY, np.int64)
        self.states = np.zeros((num_queries, 2), np.int64)
        self.states[:, 1] = PADDING_KEY
        self.thresholds = np.full(num_queries, -np.inf, np.float32)
        self.unprimed = True

    def push(self, scores: np.ndarray, column_ids: np.ndarray) -> bool:
        """Returns ``False`` (state partly updated) if the block holds a NaN."""
        if scores.shape[1] // GROUP >= self.k and self.unprimed:
            _prime(scores, self.k, self.thresholds)  # a NaN makes a NaN threshold: _scan reports it
            self.unprimed = False
        masks = np.empty((scores.shape[0], -(-(scores.shape[1] // GROUP) // 64)), np.uint64)
        if _scan(scores, self.thresholds, masks):
            return False
        _admit(scores, column_ids, masks, self.keys, self.states, self.thresholds)
        return True

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        return decode_keys(np.sort(self.keys, axis=1)[:, ::-1][:, : self.k])
