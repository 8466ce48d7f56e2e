"""cianet.data.io: X-ray decoding (PNG/JPEG/DICOM), failure messages, header sizes and resizing.

Every image is written by the test itself (Pillow / pydicom); expected values are computed by hand in
float64 with plain loops or the formula the module documents.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cianet.data.io import XrayReadError, load_xray, read_image_size, resize_gray, to_uint8

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, SecondaryCaptureImageStorage  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def minmax64(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    bits_stored: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    rows: int | None = None,
    cols: int | None = None,
    transfer_syntax=ExplicitVRLittleEndian,
    encapsulated: bytes | None = None,
    bits_allocated: int = 16,
    raw: bytes | None = None,
    **attrs,
) -> Path:
    """A minimal single-frame grayscale DICOM file (with the 128-byte preamble and DICM magic)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    h, w = pixels.shape if pixels is not None else (rows, cols)
    ds.Rows = rows if rows is not None else h
    ds.Columns = cols if cols is not None else w
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if encapsulated is not None:
        ds.PixelData = pydicom.encaps.encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif raw is not None:
        ds.PixelData = raw  # deliberately not matching Rows x Columns
        ds["PixelData"].VR = "OW"
    elif pixels is not None:
        dtype = {(16, False): "<u2", (16, True): "<i2", (8, False): "u1"}[(bits_allocated, signed)]
        ds.PixelData = np.ascontiguousarray(pixels).astype(dtype).tobytes()
    ds.preamble = b"\0" * 128
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG with a valid IHDR announcing ``width x height`` but no image data (as a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------------
# PNG / JPEG
# ---------------------------------------------------------------------------------------------------
def test_png_8bit_gray_is_divided_by_255(tmp_path, rng):
    arr = rng.integers(0, 256, size=(48, 64), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_xray(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (48, 64)
    np.testing.assert_allclose(out, arr.astype(np.float64) / 255.0, atol=1e-7)


def test_png_16bit_is_divided_by_65535(tmp_path, rng):
    arr = rng.integers(0, 65536, size=(40, 56), dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    Image.fromarray(arr).save(tmp_path / "a16.png")
    with Image.open(tmp_path / "a16.png") as im:
        assert im.mode in ("I;16", "I")  # really a 16-bit PNG
    out = load_xray(tmp_path / "a16.png")
    expected = arr.astype(np.float64) / 65535.0
    np.testing.assert_allclose(out, expected, atol=1e-7)
    # Not stretched per image: a dark 16-bit image stays dark.
    Image.fromarray((arr // 16).astype(np.uint16)).save(tmp_path / "dark16.png")
    assert load_xray(tmp_path / "dark16.png").max() <= 4096 / 65535 + 1e-7


def test_png_rgba_is_converted_from_rgb_luma_ignoring_alpha(tmp_path, rng):
    rgba = rng.integers(0, 256, size=(20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    out = load_xray(tmp_path / "c.png")
    expected = np.zeros((20, 24))
    for i in range(20):
        for j in range(24):
            r, g, b, _ = (float(v) for v in rgba[i, j])
            expected[i, j] = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_gray_stored_as_rgba_and_la_read_exactly(tmp_path, rng):
    gray = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    Image.fromarray(np.stack([gray, gray, gray, np.full_like(gray, 255)], -1), "RGBA").save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "la.png")
    for name in ("g.png", "la.png"):
        np.testing.assert_array_equal(load_xray(tmp_path / name), gray.astype(np.float32) / 255.0)


def test_jpeg_matches_pillow_decode(tmp_path, rng):
    smooth = np.clip(np.cumsum(rng.normal(0, 4, size=(64, 64)), axis=1) + 128, 0, 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "x.jpg", quality=95)
    out = load_xray(tmp_path / "x.jpg")
    with Image.open(tmp_path / "x.jpg") as im:
        decoded = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    np.testing.assert_allclose(out, decoded, atol=1e-7)
    assert np.abs(out - smooth / 255.0).mean() < 0.02  # and it is the image we wrote


# ---------------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------------
def test_dicom_monochrome2_and_monochrome1(tmp_path, rng):
    arr = rng.integers(100, 4000, size=(30, 40)).astype(np.uint16)
    m2 = load_xray(write_dicom(tmp_path / "m2.dcm", arr, bits_stored=12))
    m1 = load_xray(write_dicom(tmp_path / "m1.dcm", arr, bits_stored=12, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m2, minmax64(arr), atol=1e-6)
    np.testing.assert_allclose(m1, 1.0 - minmax64(arr), atol=1e-6)  # low stored value = white


def test_dicom_rescale_slope_intercept(tmp_path, rng):
    arr = rng.integers(0, 1000, size=(20, 20)).astype(np.uint16)
    # A negative slope flips the gray scale: ignoring the rescale would give minmax(arr) instead.
    path = write_dicom(tmp_path / "r.dcm", arr, bits_stored=12, RescaleSlope="-1.5", RescaleIntercept="100")
    expected = minmax64(np.array([[-1.5 * float(v) + 100.0 for v in row] for row in arr]))
    np.testing.assert_allclose(load_xray(path), expected, atol=1e-6)


def test_dicom_window_after_rescale_matches_hand_computation(tmp_path):
    # Stored 0..1999 -> HU-like y = 2x - 1000 in [-1000, 2998]; window C=500, W=1001 (LINEAR, PS3.3 C.11.2.1.2).
    arr = np.arange(2000, dtype=np.uint16).reshape(40, 50)
    path = write_dicom(
        tmp_path / "w.dcm",
        arr,
        bits_stored=12,
        RescaleSlope="2",
        RescaleIntercept="-1000",
        WindowCenter="500",
        WindowWidth="1001",
    )
    c, w = 500.0, 1001.0
    expected = np.zeros(arr.shape)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            y = 2.0 * float(arr[i, j]) - 1000.0
            if y <= c - 0.5 - (w - 1) / 2:
                expected[i, j] = 0.0
            elif y > c - 0.5 + (w - 1) / 2:
                expected[i, j] = 1.0
            else:
                expected[i, j] = (y - (c - 0.5)) / (w - 1) + 0.5
    out = load_xray(path)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert (out == 0).sum() > 100 and (out == 1).sum() > 100  # the window really clipped both ends


def test_dicom_bits_stored_masks_high_bits_and_sign_extends(tmp_path, rng):
    vals = rng.integers(0, 4096, size=(16, 16)).astype(np.uint16)
    vals[0, 0], vals[0, 1] = 0, 4095
    garbage = vals | np.uint16(0xA000)  # unused high bits set (e.g. overlay planes)
    out = load_xray(write_dicom(tmp_path / "u.dcm", garbage, bits_stored=12))
    np.testing.assert_allclose(out, minmax64(vals), atol=1e-6)

    signed_vals = rng.integers(-2048, 2048, size=(16, 16))
    signed_vals[0, 0], signed_vals[0, 1] = -2048, 2047
    stored = (signed_vals & 0x0FFF).astype(np.uint16)  # 12-bit two's complement, upper bits zero
    out = load_xray(write_dicom(tmp_path / "s.dcm", stored.view(np.int16), bits_stored=12, signed=True))
    np.testing.assert_allclose(out, minmax64(signed_vals), atol=1e-6)


def test_dicom_detected_by_magic_not_name(tmp_path, rng):
    arr = rng.integers(0, 4096, size=(12, 20)).astype(np.uint16)
    path = write_dicom(tmp_path / "looks_like.png", arr, bits_stored=12, photometric="MONOCHROME1")
    np.testing.assert_allclose(load_xray(path), 1.0 - minmax64(arr), atol=1e-6)
    assert read_image_size(path) == (20, 12)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", None, rows=8, cols=8)
    with pytest.raises(XrayReadError, match=r"nopix\.dcm.*without pixel data"):
        load_xray(path)


def test_dicom_without_installed_decoder(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = write_dicom(
        tmp_path / "jls.dcm",
        None,
        rows=8,
        cols=8,
        transfer_syntax=JPEGLSLossless,
        encapsulated=b"\xff\xd8\xff\xf7" + b"\0" * 32,
    )
    with pytest.raises(XrayReadError, match=r"jls\.dcm.*no decoder installed.*JPEG-LS"):
        load_xray(path)


def test_dicom_jpeg_baseline_decoded_or_clear_error(tmp_path, rng):
    from pydicom.pixels import get_decoder

    gray = np.clip(np.cumsum(rng.normal(0, 5, size=(32, 32)), axis=0) + 128, 0, 255).astype(np.uint8)
    jpg = tmp_path / "frame.jpg"
    Image.fromarray(gray).save(jpg, quality=90)
    path = write_dicom(
        tmp_path / "jpeg.dcm",
        None,
        rows=32,
        cols=32,
        bits_allocated=8,
        bits_stored=8,
        transfer_syntax=JPEGBaseline8Bit,
        encapsulated=jpg.read_bytes(),
    )
    if get_decoder(JPEGBaseline8Bit).is_available:
        with Image.open(jpg) as im:
            decoded = np.asarray(im, dtype=np.float64)
        np.testing.assert_allclose(load_xray(path), minmax64(decoded), atol=1e-6)
    else:
        with pytest.raises(XrayReadError, match="no decoder installed"):
            load_xray(path)


# ---------------------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------------------
def test_missing_empty_and_not_an_image(tmp_path):
    with pytest.raises(XrayReadError, match=r"nothere\.png: file not found"):
        load_xray(tmp_path / "nothere.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(XrayReadError, match=r"empty\.png: empty file"):
        load_xray(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("these are not pixels\n" * 20)
    with pytest.raises(XrayReadError, match=r"notes\.png: not an image"):
        load_xray(tmp_path / "notes.png")
    with pytest.raises(XrayReadError, match="not a regular file"):
        load_xray(tmp_path)
    assert issubclass(XrayReadError, ValueError)


def test_truncated_png_and_dicom(tmp_path, rng):
    arr = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(XrayReadError, match=r"cut\.png: .*truncated"):
        load_xray(tmp_path / "cut.png")

    dcm = write_dicom(tmp_path / "full.dcm", arr.astype(np.uint16), bits_stored=8).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(dcm[: len(dcm) - 3000])
    with pytest.raises(XrayReadError, match=r"cut\.dcm: "):
        load_xray(tmp_path / "cut.dcm")


def test_absurd_dimensions_refused_before_decoding(tmp_path):
    # 12000 x 12000 = 144e6 pixels: above the default 100e6 limit, below Pillow's own error threshold.
    bomb = png_header_only(tmp_path / "bomb.png", 12000, 12000)
    with pytest.raises(XrayReadError, match=r"bomb\.png: absurd image dimensions 12000 x 12000"):
        load_xray(bomb)
    huge = png_header_only(tmp_path / "huge.png", 60000, 60000)  # Pillow's DecompressionBombError path
    with pytest.raises(XrayReadError, match=r"huge\.png: absurd image dimensions"):
        load_xray(huge)
    # DICOM header announcing 20000 x 20000 with only a few bytes of pixel data.
    big = write_dicom(tmp_path / "big.dcm", None, rows=20000, cols=20000, raw=b"\0" * 64)
    with pytest.raises(XrayReadError, match=r"big\.dcm: absurd image dimensions 20000 x 20000"):
        load_xray(big)
    # The limit is configurable.
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "small.png")
    assert load_xray(tmp_path / "small.png").shape == (40, 40)
    with pytest.raises(XrayReadError, match="absurd"):
        load_xray(tmp_path / "small.png", max_pixels=1000)


def test_read_image_size_reads_headers_only(tmp_path):
    Image.fromarray(np.zeros((30, 70), np.uint8)).save(tmp_path / "wide.png")
    assert read_image_size(tmp_path / "wide.png") == (70, 30)
    # A header-only PNG has no pixels to decode: reading its size must still work.
    assert read_image_size(png_header_only(tmp_path / "h.png", 1234, 567)) == (1234, 567)
    assert read_image_size(write_dicom(tmp_path / "d.dcm", None, rows=300, cols=200)) == (200, 300)
    with pytest.raises(XrayReadError, match="file not found"):
        read_image_size(tmp_path / "missing.dcm")


# ---------------------------------------------------------------------------------------------------
# resizing
# ---------------------------------------------------------------------------------------------------
def test_resize_integer_factor_is_block_mean(rng):
    img = rng.random((96, 64)).astype(np.float32)
    out = resize_gray(img, 32)  # 3x vertically, 2x horizontally
    assert out.dtype == np.float32 and out.shape == (32, 32)
    ref = np.zeros((32, 32))
    for i in range(32):
        for j in range(32):
            ref[i, j] = np.mean([float(img[3 * i + a, 2 * j + b]) for a in range(3) for b in range(2)])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_resize_antialiases_and_stays_in_range(rng):
    # A 1-pixel checkerboard must average to gray when shrunk, not alias to black/white stripes.
    checker = (np.indices((100, 100)).sum(0) % 2).astype(np.float32)
    out = resize_gray(checker, 30)  # non-integer factor
    assert abs(out.mean() - 0.5) < 0.02 and out.max() - out.min() < 0.2
    img = rng.random((80, 80)).astype(np.float32)
    up = resize_gray(img, 128)
    assert up.shape == (128, 128) and up.min() >= img.min() - 1e-6 and up.max() <= img.max() + 1e-6
    np.testing.assert_allclose(resize_gray(np.full((50, 70), 0.25, np.float32), 64), 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        resize_gray(np.zeros((4, 4, 3), np.float32), 2)


def test_to_uint8_rounds_and_clips():
    x = np.array([-0.5, 0.0, 0.2 / 255, 0.7 / 255, 0.5, 254.6 / 255, 1.0, 2.0], np.float32)
    out = to_uint8(x)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 0, 1, 128, 255, 255, 255]


def test_real_nih_rgba_png_reads_as_its_gray(nih_sample_dir):
    # NIH ships a few PNGs as RGBA with R = G = B and opaque alpha: they must read like the L ones.
    for path in sorted((nih_sample_dir / "images").glob("*.png")):
        with Image.open(path) as im:
            if im.mode != "RGBA":
                continue
            rgba = np.asarray(im)
        out = load_xray(path)
        assert out.shape == (1024, 1024) and read_image_size(path) == (1024, 1024)
        np.testing.assert_array_equal(out, rgba[..., 0].astype(np.float32) / 255.0)
        return
    pytest.skip("no RGBA PNG in the NIH sample")
