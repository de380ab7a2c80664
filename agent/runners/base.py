"""The runner interface: one implementation per runtime.

The base class owns state checks and input validation; a runtime implements only
the ``*_impl`` methods. Runners are used inside a worker process, one model each.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from qbench.protocols.messages import ErrorCode, ProtocolError, RunnerConfig


@dataclass
class TensorSpec:
    """A model input or output as the runtime sees it; ``None`` marks a dynamic dimension."""

    name: str
    dtype: str
    shape: list[int | None]


class Runner(abc.ABC):
    """Loads one model and runs it.

    Args:
        model_path: the model file in the agent's cache.
        config: providers/delegates, threads, optimization level.
        extra_outputs: intermediate tensors to expose as outputs (the capture pass).
            Exposing them can block fusions, so timing runs never pass any.
    """

    def __init__(self, model_path: str, config: RunnerConfig, extra_outputs: Sequence[str] = ()):
        self.model_path = model_path
        self.config = config
        self.extra_outputs = list(extra_outputs)
        self._loaded = False

    def load(self) -> None:
        """Create the session/interpreter. Raises ProtocolError on a bad model or config."""
        self._load_impl()
        self._loaded = True

    def inputs(self) -> list[TensorSpec]:
        self._check_loaded()
        return self._inputs_impl()

    def outputs(self) -> list[TensorSpec]:
        """The model's own outputs (not the extra ones)."""
        self._check_loaded()
        return self._outputs_impl()

    def providers_used(self) -> list[str]:
        """What actually ran the graph: execution providers or delegates."""
        self._check_loaded()
        return self._providers_used_impl()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. Returns the model outputs and every extra output, by name.

        IMPORTANT: returned arrays may be reused by the next call; copy to keep them.
        """
        self._check_loaded()
        expected = {spec.name: spec for spec in self._inputs_impl()}
        if set(feeds) != set(expected):
            raise ProtocolError(
                ErrorCode.BAD_INPUT, f"inputs {sorted(feeds)} do not match the model's {sorted(expected)}"
            )
        for name, spec in expected.items():
            arr = feeds[name]
            if len(arr.shape) != len(spec.shape) or any(
                d is not None and d != a for d, a in zip(spec.shape, arr.shape)
            ):
                raise ProtocolError(
                    ErrorCode.BAD_INPUT, f"input {name!r}: shape {list(arr.shape)} does not fit {spec.shape}"
                )
        return self._infer_impl(feeds)

    def infer_unchecked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`infer` without the input checks, for timed loops over feeds already checked once."""
        return self._infer_impl(feeds)

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("runner used before load()")

    @abc.abstractmethod
    def _load_impl(self) -> None: ...

    @abc.abstractmethod
    def _inputs_impl(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def _outputs_impl(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def _providers_used_impl(self) -> list[str]: ...

    @abc.abstractmethod
    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
