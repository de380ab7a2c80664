"""Output structure on the device: per-slice sums and argmax agreement (protocol 1.4).

A model output can score a fine PSNR and still be useless: the class scores of a detector that
share one int8 scale with its boxes round to 0; a CTC recognizer's int8 argmax can be blank
everywhere. The host judges that from the numbers reduced here (it never gets the tensors):

- per slice, along every axis of 2..``slice_max`` entries but the class axis: count, Σ(f − q)², Σf², max|f|,
  min/max of f and of q
- along ``class_axis``: at how many positions the int8 argmax equals the float argmax (top-1), and
  at how many the float argmax is among the int8 model's ``top_k`` largest (top-k)
- CTC reading: the argmax along the class axis (or the output itself for ``indices``), along the
  longest remaining axis (the time axis, when it has ``min_steps`` entries or more), repeats
  collapsed and the ``ctc_blank`` index dropped: sequences read identically, non-empty reads, and
  Σ Levenshtein distance with Σ float length (the character error rate)
- a decoded reading (2.3, ``collapse_repeats`` false: an autoregressive decoder's scores): the same,
  with repeats kept
- decisions (2.3, a probability output): the elements where f > ``threshold``, where q > ``threshold``,
  and where both are, out of all elements

``f`` is the float model's output, ``q`` the int8 model's, dequantized (float64) when it is integer.
"""

from __future__ import annotations

import numpy as np

from qbench.protocols.messages import CapturePair, SliceStats, StructureRequest, StructureStats

from .capture import dequantize


class StructureAccumulator:
    """Sums over the samples of one output pair; :attr:`s` is the wire form."""

    def __init__(self, pair: CapturePair):
        self.pair = pair
        self.req: StructureRequest = pair.structure
        self.s = StructureStats(top_k=self.req.top_k, repeats_kept=not self.req.collapse_repeats)
        self._shape: tuple[int, ...] | None = None

    def update(self, f: np.ndarray, q: np.ndarray) -> None:
        """Add one sample: ``f`` from the float model, ``q`` from the int8 model (raw)."""
        if self.s.error:
            return
        if f.shape != q.shape or (self._shape is not None and f.shape != self._shape):
            self.s.error = f"shapes differ: float {list(f.shape)} vs int8 {list(q.shape)}"
            return
        first = self._shape is None
        self._shape = f.shape
        classes = self.req.class_axis % f.ndim if self.req.class_axis is not None and f.ndim else None
        if classes is not None and f.shape[classes] < 2:
            classes = None
        if first and not self.req.indices:
            self.s.slices = [_empty_slices(a, f.shape[a]) for a in range(f.ndim)
                             if 2 <= f.shape[a] <= self.req.slice_max and a != classes]
        if self.req.threshold is None and not self.req.indices and not self.s.slices and classes is None:
            return  # nothing to measure: a large output is not converted for nothing
        q = self._dequantized(q)  # once: every figure below reads the int8 model's real values
        if self.req.threshold is not None:
            self._decisions(f, q)
        if self.req.indices:
            self._ctc(f.astype(np.int64), q.astype(np.int64))
            return
        if not self.s.slices and classes is None:
            return
        f64, q64 = f.astype(np.float64), np.asarray(q, dtype=np.float64)
        self._slices(f64, q64)
        if classes is not None:
            self._classes(f64, q64, classes)

    def _dequantized(self, q: np.ndarray) -> np.ndarray:
        return q if self.pair.qparams is None else dequantize(q, self.pair.qparams)

    def _decisions(self, f: np.ndarray, q: np.ndarray) -> None:
        pf, pq = f > self.req.threshold, q > self.req.threshold
        self.s.decisions += int(f.size)
        self.s.float_positive += int(np.count_nonzero(pf))
        self.s.int8_positive += int(np.count_nonzero(pq))
        self.s.both_positive += int(np.count_nonzero(pf & pq))

    def _slices(self, f: np.ndarray, q: np.ndarray) -> None:
        for acc in self.s.slices:
            n = f.shape[acc.axis]
            fa, qa = np.moveaxis(f, acc.axis, 0).reshape(n, -1), np.moveaxis(q, acc.axis, 0).reshape(n, -1)
            err = fa - qa
            acc.count = (np.asarray(acc.count) + fa.shape[1]).tolist()
            acc.sum_sq_err = (np.asarray(acc.sum_sq_err) + np.einsum("ij,ij->i", err, err)).tolist()
            acc.sum_sq_float = (np.asarray(acc.sum_sq_float) + np.einsum("ij,ij->i", fa, fa)).tolist()
            acc.max_abs_float = np.maximum(acc.max_abs_float, np.abs(fa).max(axis=1)).tolist()
            acc.float_min = np.minimum(acc.float_min, fa.min(axis=1)).tolist()
            acc.float_max = np.maximum(acc.float_max, fa.max(axis=1)).tolist()
            acc.int8_min = np.minimum(acc.int8_min, qa.min(axis=1)).tolist()
            acc.int8_max = np.maximum(acc.int8_max, qa.max(axis=1)).tolist()

    def _classes(self, f: np.ndarray, q: np.ndarray, axis: int) -> None:
        top_f, top_q = f.argmax(axis=axis), q.argmax(axis=axis)
        k = min(self.req.top_k, f.shape[axis])
        self.s.top_k = k
        best_q = np.argpartition(-q, k - 1, axis=axis).take(range(k), axis=axis)
        self.s.positions += int(top_f.size)
        self.s.top1_agree += int(np.count_nonzero(top_f == top_q))
        self.s.topk_agree += int(np.count_nonzero((best_q == np.expand_dims(top_f, axis)).any(axis=axis)))
        if self.req.ctc_blank is not None:
            self._ctc(top_f, top_q)

    def _ctc(self, f: np.ndarray, q: np.ndarray) -> None:
        """Read the index tensors ``f`` and ``q`` as CTC sequences along their longest axis."""
        if not f.ndim or self.req.ctc_blank is None:
            return
        time = int(np.argmax(f.shape))
        steps = f.shape[time]
        if steps < self.req.min_steps:
            return
        blank = self.req.ctc_blank
        for fs, qs in zip(np.moveaxis(f, time, -1).reshape(-1, steps), np.moveaxis(q, time, -1).reshape(-1, steps)):
            a, b = ctc_symbols(fs, blank, self.req.collapse_repeats), ctc_symbols(qs, blank, self.req.collapse_repeats)
            self.s.sequences += 1
            self.s.sequences_equal += int(a == b)
            self.s.float_nonempty += int(bool(a))
            self.s.int8_nonempty += int(bool(b))
            self.s.edit_distance += levenshtein(a, b)
            self.s.float_symbols += len(a)


def ctc_symbols(indices: np.ndarray, blank: int, collapse: bool = True) -> list[int]:
    """The CTC reading of one argmax sequence: runs of one index collapsed (unless not ``collapse``),
    ``blank`` dropped."""
    values = indices.tolist()
    return [v for i, v in enumerate(values) if v != blank and (not collapse or i == 0 or values[i - 1] != v)]


def levenshtein(a: list[int], b: list[int]) -> int:
    """Fewest insertions, deletions and substitutions that turn ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _empty_slices(axis: int, n: int) -> SliceStats:
    inf = float("inf")
    return SliceStats(axis=axis, count=[0] * n, sum_sq_err=[0.0] * n, sum_sq_float=[0.0] * n,
                      max_abs_float=[0.0] * n, float_min=[inf] * n, float_max=[-inf] * n,
                      int8_min=[inf] * n, int8_max=[-inf] * n)


def accumulators(pairs: list[CapturePair]) -> dict[int, StructureAccumulator]:
    """One accumulator per pair that asks for its structure, by pair index."""
    return {i: StructureAccumulator(p) for i, p in enumerate(pairs) if p.structure is not None}


def update(accs: dict[int, StructureAccumulator], observed: list[int], tensors: list[tuple]) -> None:
    """Add one sample of the observed pairs: ``tensors`` are their (float, int8) arrays, in ``observed`` order."""
    for i, (f, q) in zip(observed, tensors):
        acc = accs.get(i)
        if acc is not None:
            acc.update(f, q)


def finish(accs: dict[int, StructureAccumulator], stats: list) -> None:
    """Attach each accumulator's figures to its pair's PairStats; non-finite sums become an error."""
    for i, acc in accs.items():
        for sl in acc.s.slices:
            values = [*sl.sum_sq_err, *sl.sum_sq_float, *sl.max_abs_float, *sl.float_min, *sl.float_max,
                      *sl.int8_min, *sl.int8_max]
            if not np.isfinite(values).all():  # the wire's JSON carries no NaN or infinity
                acc.s.slices, acc.s.error = [], acc.s.error or "non-finite values in a slice"
                break
        stats[i].structure = acc.s
