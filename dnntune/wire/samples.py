"""Sample inputs for wire measurements: real photographs, or the user's own files.

By default: photographs shipped inside declared dependencies, so a run needs no network
(matplotlib's ``grace_hopper.jpg``; scikit-image's ``astronaut`` and ``chelsea``, then
``coffee`` and ``rocket`` when more are asked for). ``--samples DIR`` takes a folder of
JPEG/PNG images or ``.npy`` arrays (uint8 ``H x W x 3`` pixels, or float tensors of the
model's input shape).
Images are resized (shorter side to the model's, bicubic) and centre-cropped.

The model input is ``preprocess(pixels)``; the input codecs send the pixels and the
cloud applies the same preprocessing. :data:`PREPROCESSING` names it per zoo model
(``keras.applications`` conventions); any other model is taken to read 0..255 pixels.
Pure: numpy and Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnntune.errors import ConfigError, DnntuneError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SAMPLE_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
MAX_SAMPLES = 64
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
# The built-in run measures on three photographs: every cut runs a tail per lossy
# encoding over the samples, which on MobileNetV2 costs about 8 s per photograph here
# (docs/wire.md); --samples takes up to MAX_SAMPLES of a user's own.
DEFAULT_PHOTOS = 3
# keras.applications' preprocess_input modes: "tf" scales to [-1, 1], "caffe" flips to BGR
# and subtracts the ImageNet means, "torch" scales to [0, 1] and standardises.
PREPROCESSING = {"mobilenet_v1": "tf", "mobilenet_v2": "tf", "inception_v3": "tf",
                 "resnet50": "caffe", "vgg16": "caffe", "squeezenet_v11": "tf",
                 "shufflenet_v2_0.5x": "tf", "tiny_resnet": "unit"}
_CAFFE_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True, eq=False)
class Samples:
    """Inputs to measure on.

    Attributes:
        names: Where each sample came from.
        pixels: ``(N, H, W, C)`` uint8, or ``None`` when the samples are tensors.
        inputs: ``(N, ...)`` float32 model inputs (``preprocess(pixels)`` for images).
        preprocessing: The mode applied to pixels (``"identity"``, ``"tf"``, ...).
    """

    names: tuple[str, ...]
    pixels: np.ndarray | None
    inputs: np.ndarray
    preprocessing: str

    def describe(self) -> str:
        kind = "photographs" if self.pixels is not None else "tensors"
        return f"{len(self.names)} {kind} ({', '.join(self.names[:5])}" + \
            (", ..." if len(self.names) > 5 else "") + ")"


def preprocess(pixels: np.ndarray, mode: str) -> np.ndarray:
    """``pixels`` (uint8, ``... x 3``) as the model's float32 input under ``mode``."""
    x = np.asarray(pixels, dtype=np.float32)
    if mode == "tf":
        return x / np.float32(127.5) - np.float32(1.0)
    if mode == "unit":
        return x / np.float32(255.0)
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEAN
    if mode == "torch":
        return (x / np.float32(255.0) - _TORCH_MEAN) / _TORCH_STD
    return x


def default_photo_paths() -> list[Path]:
    """The bundled photographs (those present in the installed packages)."""
    import matplotlib

    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    try:
        import importlib.util

        spec = importlib.util.find_spec("skimage")
        if spec is not None and spec.origin:
            data = Path(spec.origin).parent / "data"
            paths += [data / name for name in SKIMAGE_PHOTOS]
    except ImportError:
        pass
    return [p for p in paths if p.is_file()]


def fit_image(path: Path, height: int, width: int, channels: int = 3) -> np.ndarray:
    """``path`` read, resized so it covers ``height x width``, centre-cropped (uint8)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB" if channels == 3 else "L")
        scale = max(height / image.height, width / image.width)
        size = (max(width, round(image.width * scale)),
                max(height, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        a = np.asarray(image.crop((left, top, left + width, top + height)))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConfigError("--samples", f"{path}: cannot read as an image ({exc})") from None
    return a.reshape(height, width, channels)


def load_samples(input_shape: Sequence[int], model_name: str, folder: str | None = None,
                 limit: int = DEFAULT_PHOTOS) -> Samples:
    """Samples fitted to ``input_shape`` (no batch): the user's ``folder``, else photos.

    Raises:
        ConfigError: an unreadable or mis-shaped file (named), or a folder without
            samples.
    """
    shape = tuple(int(d) for d in input_shape)
    mode = PREPROCESSING.get(model_name, "identity")
    is_image = len(shape) == 3 and shape[-1] in (1, 3)
    if folder is None:
        if not is_image:
            raise DnntuneError(f"{model_name} does not take images (input {list(shape)}): "
                               "give --samples DIR with .npy inputs for --wire")
        paths = default_photo_paths()[:limit]
        if not paths:
            raise DnntuneError("no sample photographs found in matplotlib or scikit-image; "
                               "give --samples DIR")
    else:
        paths = sample_files(folder)
    pixels: list[np.ndarray] = []
    tensors: list[np.ndarray] = []
    for path in paths:
        if path.suffix.lower() == ".npy":
            array = _read_npy(path, shape)
            (pixels if array.dtype == np.uint8 else tensors).append(array)
        elif not is_image:
            raise ConfigError("--samples", f"{path}: an image, but the model's input is "
                                           f"{list(shape)}, not H x W x 3")
        else:
            pixels.append(fit_image(path, shape[0], shape[1], shape[2]))
    names = tuple(p.name for p in paths)
    if tensors:
        floats = [preprocess(p, mode) for p in pixels] + tensors
        return Samples(names, None, np.stack(floats).astype(np.float32), mode)
    stacked = np.stack(pixels)
    return Samples(names, stacked, preprocess(stacked, mode), mode)


def sample_files(folder: str) -> list[Path]:
    """The sample files in ``folder`` (sorted, at most :data:`MAX_SAMPLES`).

    Raises:
        ConfigError: not a folder, or no .jpg/.jpeg/.png/.npy file in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError("--samples", f"{folder}: not a folder")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES
                   and p.is_file())
    if not paths:
        raise ConfigError("--samples", f"{folder}: no .jpg, .jpeg, .png or .npy files")
    return paths[:MAX_SAMPLES]


def _read_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError("--samples", f"{path}: cannot read as .npy ({exc})") from None
    if array.ndim == len(shape) + 1 and array.shape[0] == 1:
        array = array[0]
    if tuple(array.shape) != shape or not (array.dtype == np.uint8
                                           or np.issubdtype(array.dtype, np.floating)):
        raise ConfigError("--samples", f"{path}: array {array.dtype} {list(array.shape)}, "
                                       f"expected uint8 or float of shape {list(shape)}")
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ConfigError("--samples", f"{path}: holds inf or NaN")
    elif len(shape) != 3:
        raise ConfigError("--samples", f"{path}: uint8 pixels need an H x W x 3 input")
    return array
