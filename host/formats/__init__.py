"""The model formats qbench knows, one :class:`~qbench.host.formats.base.ModelFormat` each, picked
from a model file's bytes (:func:`~qbench.host.models.model_format`)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from ..models import model_format
from .base import ModelFormat, RuntimeChoice
from .onnx import OnnxFormat
from .tflite import TFLiteFormat

FORMATS: dict[str, ModelFormat] = {f.name: f for f in (OnnxFormat(), TFLiteFormat())}

__all__ = ["FORMATS", "ModelFormat", "RuntimeChoice", "format_of"]


def format_of(model: Union[str, Path]) -> ModelFormat:
    """The format of a model file, from its first bytes.

    Raises:
        UserError: the file is missing, unreadable or empty.
    """
    return FORMATS[model_format(model)]

