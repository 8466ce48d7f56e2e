"""Reading chest X-ray files into grayscale float32 arrays in [0, 1].

Formats and how their values reach [0, 1]:

* **PNG / JPEG (and anything else Pillow reads)**: 8-bit modes (``L``, ``LA``, ``P``, ``RGB``, ``RGBA``, ...)
  are divided by 255; 16-bit grayscale (``I;16*``, or ``I`` holding values in 0..65535, which is how
  Pillow opens 16-bit PNGs) is divided by 65535, i.e. the file's full bit depth maps to [0, 1] with no
  per-image stretching. Colour images (NIH ships a few RGBA PNGs) become gray as the ITU-R 601 luma
  ``0.299 R + 0.587 G + 0.114 B`` of the colour channels, computed in float; alpha is ignored. ``F``
  (float) images are min-max scaled. EXIF orientation is *not* applied: boxes live in the stored pixel
  frame.
* **DICOM**, recognized by the ``DICM`` magic at byte offset 128 whatever the file is called: the stored
  values are masked to ``BitsStored`` (sign-extended when signed), then the modality LUT (Rescale
  Slope/Intercept or a Modality LUT Sequence) and the first VOI LUT or window (Window Center/Width) are
  applied as pydicom implements them; the result is min-max scaled to [0, 1] and inverted for
  ``MONOCHROME1`` so that dense tissue is always bright. Multi-frame files give their first frame.

Every failure raises :class:`XrayReadError` (a ``ValueError``) whose message starts with the file name and
says what is wrong. An image that is read but looks wrong (tiny, an extreme shape, a 16-bit PNG whose values
fit in 12 bits, which reads near-black) gives an :class:`XrayWarning` naming the file. The decoded size is
checked against ``max_pixels`` from the header, *before* any pixel is decoded, so a decompression bomb cannot
exhaust memory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cianet.errors import CianetError

#: Largest image (width x height, all frames for DICOM) ``load_xray`` accepts by default.
#: NIH images are 1024 x 1024 (1e6); the largest digital radiographs are ~4300 x 4300 (~18e6).
DEFAULT_MAX_PIXELS: int = 100_000_000

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"

# ITU-R BT.601 luma weights, the ones Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class XrayReadError(CianetError, ValueError):
    """An image file could not be read; the message names the file and the cause."""


class XrayWarning(UserWarning):
    """An image was read, but looks wrong for a chest X-ray (tiny, extreme shape, a 16-bit file using 12 bits);
    the message names the file. ``cianet`` prints it as one ``warning:`` line."""


#: below this side (pixels) or beyond this aspect ratio an image is warned about
TINY_SIDE = 32
MAX_ASPECT = 4.0


def suspicious_image(path: str | os.PathLike, arr: np.ndarray, sixteen_bit: bool = False) -> str | None:
    """Why ``arr`` (read from ``path``) looks wrong for a chest X-ray, or None."""
    h, w = arr.shape[:2]
    if min(h, w) < TINY_SIDE:
        return f"{path}: a tiny {w}x{h} image (under {TINY_SIDE} pixels a side); check the file"
    if max(h, w) > MAX_ASPECT * min(h, w):
        return f"{path}: an extreme {w}x{h} shape (aspect ratio over {MAX_ASPECT:g}); check the file"
    if sixteen_bit and arr.size and float(arr.max()) <= 4095.0 / 65535.0 + 1e-9:
        return (
            f"{path}: a 16-bit PNG whose values use at most 12 bits (max {round(float(arr.max()) * 65535)}); "
            "it is read on the 16-bit scale and looks near-black: rescale the file if it holds 12-bit data"
        )
    return None


def _fail(path: Path, cause: str) -> XrayReadError:
    return XrayReadError(f"{path}: {cause}")


def _check_file(path: Path) -> bytes:
    """Return the first 132 bytes of ``path`` after checking that it is a readable, non-empty file."""
    if not path.exists():
        raise _fail(path, "file not found")
    if not path.is_file():
        raise _fail(path, "not a regular file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not head:
        raise _fail(path, "empty file (0 bytes)")
    return head


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 preamble magic (``DICM`` at offset 128).

    Raises:
        XrayReadError: the file is missing, not a regular file, unreadable or empty.
    """
    head = _check_file(Path(path))
    return head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == _DICOM_MAGIC


def _check_dims(path: Path, width: int, height: int, frames: int, max_pixels: float) -> None:
    if width <= 0 or height <= 0:
        raise _fail(path, f"invalid image dimensions {width} x {height}")
    n = width * height * max(frames, 1)
    if n > max_pixels:
        what = f"{width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
        raise _fail(
            path,
            f"absurd image dimensions {what} ({n:,} pixels > limit {int(max_pixels):,}); "
            "refusing to decode (raise max_pixels if the file is genuine)",
        )


def _min_max(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the array's own range (a constant image becomes all zeros)."""
    arr = arr.astype(np.float64, copy=False)
    lo = float(np.min(arr))
    hi = float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return np.zeros(arr.shape, dtype=np.float32)
        lo, hi = float(finite.min()), float(finite.max())
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, >=3) -> (H, W) float64 luma of the first three channels."""
    return rgb[..., :3].astype(np.float64) @ _LUMA


# --------------------------------------------------------------------------------------------------
# Pillow formats
# --------------------------------------------------------------------------------------------------
def _open_pil(path: Path):
    try:
        with warnings.catch_warnings():
            # We apply our own (configurable) pixel limit right after; Pillow's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError as exc:
        raise _fail(path, "not an image (format not recognized as PNG, JPEG, DICOM or another readable type)") from exc
    except Image.DecompressionBombError as exc:
        raise _fail(path, f"absurd image dimensions, refused before decoding ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise _fail(path, f"corrupt or truncated image header ({exc})") from exc


def _pil_to_gray(im) -> np.ndarray:
    """Decoded Pillow image -> float32 (H, W) in [0, 1] following the rules in the module docstring."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode in ("L", "LA"):
        return np.asarray(im.getchannel(0), dtype=np.float32) / 255.0
    if mode.startswith("I;16"):
        # I;16, I;16L, I;16B, I;16N: unsigned 16-bit samples.
        return (np.asarray(im).astype(np.float32)) / 65535.0
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.float32) / 65535.0  # 16-bit data promoted to 32-bit by Pillow
        return _min_max(arr)
    if mode == "F":
        return _min_max(np.asarray(im))
    if mode not in ("RGB", "RGBA", "RGBX"):
        im = im.convert("RGB")  # P, PA, CMYK, YCbCr, LAB, HSV, La, ...
    rgb = np.asarray(im)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].astype(np.float32) / 255.0  # gray stored as colour (NIH RGBA): exact
    return (_luma(rgb) / 255.0).astype(np.float32)


def _load_pil(path: Path, max_pixels: float) -> np.ndarray:
    im = _open_pil(path)
    with im:
        width, height = im.size
        _check_dims(path, width, height, 1, max_pixels)
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _fail(path, f"truncated or corrupt image data ({exc})") from exc
        sixteen = im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG")
        out = _pil_to_gray(im)
    if out.shape != (height, width):
        raise _fail(path, f"decoded to shape {out.shape}, expected ({height}, {width})")
    why = suspicious_image(path, out, sixteen)
    if why:
        warnings.warn(why, XrayWarning, stacklevel=2)
    return out


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------
def _dcmread(path: Path, stop_before_pixels: bool):
    # lazy: pydicom is needed for DICOM files only
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise _fail(path, f"invalid DICOM file ({exc})") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _fail(path, f"truncated or corrupt DICOM file ({type(exc).__name__}: {exc})") from exc


def _dicom_dims(path: Path, ds) -> tuple[int, int, int]:
    rows = ds.get("Rows")
    cols = ds.get("Columns")
    if rows is None or cols is None:
        raise _fail(path, "DICOM without Rows/Columns (not an image)")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return int(cols), int(rows), frames


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    return None if meta is None else meta.get("TransferSyntaxUID")


def _decoder_missing(ts) -> str | None:
    """A reason string when no installed plugin can decode transfer syntax ``ts`` (pydicom >= 3), else None."""
    if ts is None:
        return None
    try:
        # lazy: pydicom is needed for DICOM files only
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.x: the failure surfaces when decoding instead
        return None
    name = getattr(ts, "name", str(ts))
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"transfer syntax {name} ({ts}) is not supported by pydicom"
    if not decoder.is_available:
        return (
            f"no decoder installed for transfer syntax {name} ({ts}); "
            "install a pydicom plugin for it (pylibjpeg with its libjpeg/openjpeg/rle extras, or gdcm)"
        )
    return None


def _mask_bits_stored(arr: np.ndarray, ds) -> np.ndarray:
    """Keep only the low ``BitsStored`` bits of integer pixels (sign-extended when PixelRepresentation=1).

    Idempotent: an array already masked or sign-extended by the decoder is returned unchanged.
    """
    if arr.dtype.kind not in "iu":
        return arr
    stored = ds.get("BitsStored")
    if stored is None:
        return arr
    stored = int(stored)
    if stored <= 0 or stored >= arr.dtype.itemsize * 8:
        return arr
    work = arr.astype(np.int64)
    work &= (1 << stored) - 1
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        sign = 1 << (stored - 1)
        work = np.where(work >= sign, work - (1 << stored), work)
    return work


def _voi_functions():
    try:
        # lazy: pydicom is needed for DICOM files only
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _load_dicom(path: Path, max_pixels: float) -> np.ndarray:
    # Header first (no pixels), so absurd sizes are refused before anything is decoded.
    header = _dcmread(path, stop_before_pixels=True)
    width, height, frames = _dicom_dims(path, header)
    _check_dims(path, width, height, frames, max_pixels)

    ds = _dcmread(path, stop_before_pixels=False)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _fail(path, "DICOM without pixel data")
    reason = _decoder_missing(_transfer_syntax(ds))
    if reason is not None:
        raise _fail(path, reason)
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise _fail(path, f"cannot decode the pixel data ({exc})") from exc
    except (ValueError, EOFError, OSError, AttributeError, KeyError, TypeError) as exc:
        raise _fail(path, f"truncated or corrupt DICOM pixel data ({type(exc).__name__}: {exc})") from exc

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    arr = np.asarray(arr)
    if frames > 1 and arr.ndim == (3 if samples == 1 else 4):
        arr = arr[0]  # first frame of a multi-frame image
    if samples > 1:
        if arr.ndim != 3:
            raise _fail(path, f"unexpected colour pixel array shape {arr.shape}")
        # Colour radiographs are rare; pydicom gives RGB here, reduce it to luma and skip the grayscale LUTs.
        out = _min_max(_luma(arr))
    else:
        if arr.ndim != 2:
            raise _fail(path, f"unexpected pixel array shape {arr.shape}")
        apply_modality_lut, apply_voi_lut = _voi_functions()
        arr = _mask_bits_stored(arr, ds)
        try:
            arr = apply_modality_lut(arr, ds)
            arr = apply_voi_lut(arr, ds, index=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise _fail(path, f"invalid modality/VOI LUT or window ({type(exc).__name__}: {exc})") from exc
        out = _min_max(arr)
        if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
            out = 1.0 - out  # MONOCHROME1: low values are white
    if out.shape != (height, width):
        raise _fail(path, f"pixel data shape {out.shape} does not match Rows x Columns ({height}, {width})")
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def load_xray(path: str | os.PathLike, max_pixels: float = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an X-ray image file as grayscale.

    Args:
        path: PNG (8/16-bit, any Pillow mode), JPEG or DICOM file (DICOM detected by content, not name).
        max_pixels: refuse files whose header declares more pixels than this (decompression-bomb guard).
            Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, ~179e6 for errors) still applies on top.

    Returns:
        float32 array (H, W) in [0, 1] (see the module docstring for the exact scaling per format).

    Raises:
        XrayReadError: missing, empty, truncated or unrecognized file, DICOM without pixel data or without
            an installed decoder for its transfer syntax, or dimensions above ``max_pixels``.
    """
    path = Path(path)
    head = _check_file(path)
    if head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == _DICOM_MAGIC:
        return _load_dicom(path, max_pixels)
    return _load_pil(path, max_pixels)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding pixels.

    Raises:
        XrayReadError: as :func:`load_xray` for files whose header cannot be read.
    """
    path = Path(path)
    head = _check_file(path)
    if head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == _DICOM_MAGIC:
        width, height, _ = _dicom_dims(path, _dcmread(path, stop_before_pixels=True))
        return width, height
    im = _open_pil(path)  # lazy: reads the header only
    with im:
        return tuple(im.size)  # type: ignore[return-value]


def resize_gray(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a gray image (H, W) to (size, size), or to ``size = (w, h)``, antialiased; float32 out.

    Shrinking uses Pillow's BOX filter on a 32-bit float (``F``) image: each output pixel is the
    area-weighted mean of the input pixels it covers (exactly the block mean for integer factors), which
    antialiases without the ringing/overshoot of Lanczos, so values stay within the input's range.
    Enlarging (rare for X-rays) uses bilinear interpolation instead, as BOX would be nearest-neighbour.
    The aspect ratio is not kept: boxes scale by ``size/W`` and ``size/H`` (docs/architecture.md).

    Args:
        img: (H, W) array, any real dtype.
        size: output side in pixels (> 0), or ``(width, height)``.

    Returns:
        float32 array (size, size) or (height, width).
    """
    if img.ndim != 2:
        raise ValueError(f"resize_gray expects a 2-D (H, W) image, got shape {img.shape}")
    out_w, out_h = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"resize_gray: size must be positive, got {size}")
    h, w = img.shape
    if (h, w) == (out_h, out_w):
        return np.array(img, dtype=np.float32)
    shrink = out_w <= w and out_h <= h
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))  # mode "F"
    return np.asarray(pil.resize((out_w, out_h), resample=resample), dtype=np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] (any shape) -> uint8 by ``round(clip(x, 0, 1) * 255)``."""
    return np.rint(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
