"""Inference with a model bundle: ``Predictor`` turns X-rays into class probabilities, boxes and heatmaps.

For each image (paper section 3.3 and 4.1, as ``cianet.run.scoring`` scores a run):

1. read it (PNG/JPEG/DICOM, a numpy array or a PIL image) as gray ``[0, 1]`` ``(H, W)``; resize to ``S x S``;
2. pick its negative: the patient's prior study when the caller gives one (``predict(image, prior=...)``,
   ``cianet predict --prior``: the image's M- is then the prior's attention map, computed here as the bank's
   were); else from the bundle's bank, which stays the fallback: the nearest perceptual-hash code (the run's
   "sim" pairing; a bank entry with the image's own file name or its hash code, i.e. the image itself, is never
   picked), or the canonical chest. Every result names its negative and where it came from;
3. align the image when the bundle has an alignment network (parameters ``(tx, ty, sx, sy, theta)``);
4. CIA-Net logits from the (aligned) image and the negative's stored attention map ``M-``
   (``mode="bank"``), or from the negative image through the attention trunk again (``mode="recompute"``);
5. image probability of each class: ``1 - prod_j (1 - p_j)`` over the cells of the native ``h x w`` grid;
6. for each box class whose probability reaches its threshold (bundle ``thresholds``, default 0.5): the
   connected regions of cells with ``p > 0.5`` on the test grid (``F_bar`` upsampled to ``test_upsample``),
   8-connectivity by default; each region's bounding rectangle of cells, mapped exactly back through the
   alignment into the image file's pixel frame (the bounding box of the four mapped corners, as
   ``cianet.models.alignment.boxes_to_original``; exact for rotation 0) and clipped to the image; its score
   is the region's largest cell probability.

Arrays in a :class:`PredictionResult` live on the grids of the *aligned* network input; ``align_params``
maps them to the image (``cianet.models.alignment.mask_to_original``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from cianet.config import CANONICAL, CANONICAL_CHEST, PRIOR
from cianet.data.io import XrayReadError, is_dicom, load_xray, resize_gray, to_uint8
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.inference.domain import input_domain
from cianet.inference.files import image_files
from cianet.inference.notebook import (
    compact,
    overlay_image,
    overlay_png,
    result_dataframe,
    result_heatmap,
    show,
    warn_out_of_domain,
)
from cianet.metrics import image_scores_from_logits
from cianet.models.alignment import boxes_to_original
from cianet.models.backbones import gray_to_input
from cianet.models.cianet import grid_side
from cianet.models.folding import for_inference
from cianet.negatives import HashIndex, hash_codes
from cianet.run.bundle_file import load_bundle, validate_bundle
from cianet.run.bundle_format import file_sha256
from cianet.run.device import resolve_device
from cianet.run.networks import alignment_from_weights, network_from_weights
from cianet.run.pairing import aligned_images
from cianet.run.precision import autocast, resolve_precision
from cianet.utils.progress import chunk_progress
from cianet.utils.timing import stage

ImageInput = Union[str, os.PathLike, np.ndarray, "PIL.Image.Image", torch.Tensor]  # noqa: F821
NegativeImages = Mapping[str, np.ndarray] | Callable[[str], np.ndarray]
MODES = ("bank", "recompute")
#: hash codes (unit norm) this close in every entry are the same image: never its own negative
SAME_CODE_ATOL = 1e-5


@dataclass(frozen=True)
class PredictedBox:
    """A predicted region: ``(x, y, w, h)`` in the image file's pixel frame, ``score`` its largest cell probability."""

    label: str
    x: float
    y: float
    w: float
    h: float
    score: float


@dataclass
class PredictionResult:
    """The prediction for one image.

    Attributes:
        source: the file path, or ``array-<i>`` / ``image-<i>`` for in-memory input.
        image_size: ``(W, H)`` of the input image.
        probabilities: class -> image probability (all 14 LABELS, in order).
        boxes: predicted boxes of the box classes above their threshold, best first within a class.
        heatmaps: ``(C, U, U)`` float32 cell probabilities on the test grid, aligned frame.
        attention: ``(h, w)`` float32 normalized contrast attention ``dM`` (None for the baseline).
        align_params: ``(tx, ty, sx, sy, theta)`` (None without alignment).
        negative: the negative used: the prior's file name (or ``prior-array-<i>``), or the bank entry's name
            (None for the baseline).
        logits: ``(C, h, w)`` float32 native-grid logits.
        metadata: extra information (e.g. whitelisted DICOM tags when asked for).
        domain: whether the input is of the kind of data the model was trained on
            (:func:`cianet.inference.domain.input_domain`; None when not computed).
        negative_source: where the negative came from: ``"prior"`` (given by the caller), ``"bank"`` (the
            bundle's nearest bank entry) or ``"canonical"`` (a canonical-chest bank); None for the baseline.
        box_labels: the classes of ``heatmaps``' first rows (the box classes).
        image: the input for display (:mod:`cianet.inference.notebook`: the Python API keeps an 8-bit copy at
            most 512 px a side; None when not kept).

    In a notebook a result shows itself as its overlay (``_repr_png_``); :meth:`heatmap` gives a class's heatmap
    in the image's own frame, :meth:`to_dataframe` a table.
    """

    source: str
    image_size: tuple[int, int]
    probabilities: dict[str, float]
    boxes: list[PredictedBox]
    heatmaps: np.ndarray
    attention: np.ndarray | None
    align_params: tuple[float, ...] | None
    negative: str | None
    logits: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    domain: dict[str, Any] | None = None
    negative_source: str | None = None
    box_labels: tuple[str, ...] = ()
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def heatmap(self, label: str | None = None, frame: str = "image") -> np.ndarray:
        """The cell probabilities of box class ``label`` (None: the largest over the box classes) in the image
        file's frame (at most 512 px a side; ``frame="grid"``: the test grid of the aligned network input)."""
        return result_heatmap(self, label, frame)

    def to_dataframe(self):
        """A pandas DataFrame, one row per class: probability, whether a box class, its boxes and best score."""
        return result_dataframe(self)

    def overlay_image(self):
        """The overlay figure (boxes, attention, heatmaps) as a PIL image; needs the kept ``image``."""
        return overlay_image(self)

    def _repr_png_(self) -> bytes | None:  # Jupyter/IPython display
        return overlay_png(self)

    def show(self) -> None:
        """Display the overlay: inline in a notebook, else in the system's image viewer."""
        show(self)

    def to_dict(self, include_arrays: bool = False) -> dict[str, Any]:
        """JSON-ready dict; the grids only with ``include_arrays``."""
        out: dict[str, Any] = {
            "source": self.source,
            "image_size": list(self.image_size),
            "probabilities": {k: float(v) for k, v in self.probabilities.items()},
            "boxes": [asdict(b) for b in self.boxes],
            "negative": self.negative,
            "negative_source": self.negative_source,
            "align_params": None if self.align_params is None else [float(v) for v in self.align_params],
        }
        if self.metadata:
            out["metadata"] = self.metadata
        if self.domain is not None:
            out["domain"] = self.domain
        if include_arrays:
            out["heatmaps"] = self.heatmaps.tolist()
            out["attention"] = None if self.attention is None else self.attention.tolist()
        return out


# ----------------------------------------------------------------------------------------------- boxes
def grid_regions(mask: np.ndarray, connectivity: int = 8) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Connected regions of a bool grid ``(U, U)``: ``[(region mask (U, U), (row0, col0, row1, col1))]``.

    ``row1, col1`` are exclusive. ``connectivity`` is 8 (diagonal cells touch) or 4.
    """
    # lazy: scipy takes about a second to import and only this function needs it
    from scipy import ndimage

    if connectivity not in (4, 8):
        raise UsageError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = np.ones((3, 3), bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(mask, structure=structure)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        out.append((labels == k, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)))
    return out


def boxes_from_heatmap(
    prob: np.ndarray,
    orig_size: tuple[int, int],
    params: Sequence[float] | None = None,
    cell_threshold: float = 0.5,
    connectivity: int = 8,
) -> list[tuple[float, float, float, float, float]]:
    """Boxes ``[(x, y, w, h, score)]`` in the original image frame from one class's cell probabilities.

    Args:
        prob: ``(U, U)`` probabilities on the test grid of the (aligned) network input.
        orig_size: ``(W, H)`` of the image file.
        params: alignment parameters ``(tx, ty, sx, sy, theta)`` the input was warped with (None: identity).
        cell_threshold: a cell is positive when ``p > cell_threshold`` (the paper: 0.5).
        connectivity: 8 or 4 (see :func:`grid_regions`).

    Returns:
        One box per connected region, highest score first; regions entirely outside the image are dropped.
    """
    prob = np.asarray(prob, dtype=np.float64)
    gh, gw = prob.shape
    W, H = float(orig_size[0]), float(orig_size[1])
    out = []
    for region, (r0, c0, r1, c1) in grid_regions(prob > cell_threshold, connectivity):
        score = float(prob[region].max())
        if params is None:
            x0, y0, x1, y1 = c0 * W / gw, r0 * H / gh, c1 * W / gw, r1 * H / gh
        else:  # the cell rectangle in the aligned frame -> bounding box of its mapped corners
            bx, by, bw, bh = boxes_to_original(
                np.array([[c0, r0, c1 - c0, r1 - r0]], np.float64), params, (gw, gh), (W, H)
            )[0]
            x0, y0, x1, y1 = max(bx, 0.0), max(by, 0.0), min(bx + bw, W), min(by + bh, H)
        if x1 > x0 and y1 > y0:
            out.append((float(x0), float(y0), float(x1 - x0), float(y1 - y0), score))
    return sorted(out, key=lambda b: -b[4])


# ---------------------------------------------------------------------------------------------- inputs
def as_gray(item: Any, name: str = "image") -> np.ndarray:
    """A numpy array ``(H, W)`` (uint8, uint16 or float in [0, 1]), a 2-D tensor or a PIL image -> float32 [0, 1].

    Float input outside [0, 1] is refused (InputError, a ValueError, naming ``name``) rather than silently rescaled.
    """
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        if isinstance(item, Image.Image):
            if item.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.clip(np.asarray(item, dtype=np.float64) / 65535.0, 0, 1).astype(np.float32)
            if item.mode == "F":
                item = np.asarray(item, dtype=np.float32)
            else:
                return np.asarray(item.convert("L"), dtype=np.float32) / 255.0
        else:
            raise InputError(
                f"{name}: expected a file path, a numpy (H, W) array, a tensor or a PIL image, "
                f"got {type(item).__name__}"
            )
    arr = item
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name}: expected a gray (H, W) image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{name}: unsupported array dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: image holds NaN or infinite values")
    if arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
        raise InputError(f"{name}: float image values must be in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
    return np.clip(arr, 0.0, 1.0)


def load_input(item: ImageInput, position: int = 0) -> tuple[np.ndarray, str]:
    """``(gray (H, W) float32 [0, 1], source name)`` of a path or an in-memory image."""
    if isinstance(item, (str, os.PathLike)):
        return load_xray(item), str(item)
    kind = "array" if isinstance(item, (np.ndarray, torch.Tensor)) else "image"
    name = f"{kind}-{position}"
    return as_gray(item, name), name


SAFE_DICOM_TAGS = (
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsStored",
    "PixelSpacing",
    "ImagerPixelSpacing",
)


def dicom_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A few non-identifying acquisition tags of a DICOM file (SAFE_DICOM_TAGS); {} for other files.

    Nothing about the patient, the institution, dates or identifiers is ever read out.
    """
    if not is_dicom(path):
        return {}
    # lazy: pydicom is needed for DICOM files only
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    out: dict[str, Any] = {}
    for tag in SAFE_DICOM_TAGS:
        value = ds.get(tag)
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            out[tag] = [float(v) for v in value]
        elif isinstance(value, (int, float)):
            out[tag] = value
        else:
            out[tag] = str(value)
    return out


def model_identity(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """``{"id", "version", "kind", "format_version", "trained_with", "sha256"}`` of a bundle: its model card's
    name and version (older bundles: the run folder's name and the epoch), the cianet version that wrote it."""
    card = bundle.get("card") or {}
    source = bundle.get("source") or {}
    return {
        "id": str(card.get("name") or source.get("run") or "unnamed"),
        "version": str(card.get("version") or f"epoch-{source.get('epoch', -1)}"),
        "kind": bundle["kind"],
        "format_version": int(bundle["format_version"]),
        "trained_with": str(bundle.get("cianet_version", "")),
        "sha256": None,  # of the bundle file, set by Predictor.from_bundle
    }


# -------------------------------------------------------------------------------------------- predictor
class Predictor:
    """Runs a model bundle on images.

    Args:
        bundle: a bundle dict (see :mod:`cianet.run.bundle_file`); use :meth:`from_bundle` for a file.
        device: torch device for the networks.
        mode: ``"bank"`` (the negative's stored ``M-``) or ``"recompute"`` (its image through the attention
            trunk each time: needs the bundle's stored images or ``negative_images``).
        batch_size: images per forward pass in :meth:`predict_batch`.
        connectivity: 8 or 4, for the regions that become boxes.
        cell_threshold: a test-grid cell is positive when ``p > cell_threshold`` (0.5, the paper's).
        negative_images: for ``recompute`` without stored images: a mapping or callable name -> ``(S, S)``
            gray image in [0, 1].
        precision: "fp32" (default: the same numbers on every machine), "bf16" (bfloat16 autocast) or
            "auto" (bfloat16 on CPUs with native bfloat16, float16 on CUDA, float32 elsewhere: what
            ``cianet predict`` uses; :mod:`cianet.run.precision`). The attribute ``precision`` holds what is
            computed ("fp32", "bf16" or "fp16"). The alignment network always runs in float32: its output is
            geometry that the boxes are mapped back through.
        timer: a :class:`cianet.utils.timing.StageTimer` charged with the stages resize, alignment, pairing,
            networks and boxes (None: not timed).
    """

    def __init__(
        self,
        bundle: dict[str, Any],
        device: str | torch.device = "cpu",
        mode: str = "bank",
        batch_size: int = 8,
        connectivity: int = 8,
        cell_threshold: float = 0.5,
        negative_images: NegativeImages | None = None,
        name: str = "<bundle>",
        precision: str = "fp32",
        timer: Any = None,
    ) -> None:
        validate_bundle(bundle, name)
        if mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {mode!r}")
        if connectivity not in (4, 8):
            raise UsageError(f"connectivity must be 4 or 8, got {connectivity}")
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.device = resolve_device(str(device))
        self.precision: str = resolve_precision(precision, self.device)
        self.timer = timer
        self.mode, self.batch_size = mode, int(batch_size)
        self.connectivity, self.cell_threshold = connectivity, float(cell_threshold)
        self.kind: str = bundle["kind"]
        self.labels: list[str] = list(bundle["labels"])
        self.box_labels: list[str] = list(bundle["box_labels"])
        self.input_size: int = int(bundle["input_size"])
        self.thresholds: dict[str, float] = dict(zip(self.labels, map(float, bundle["thresholds"])))
        self.model, self.config = network_from_weights(bundle["config"], bundle["model"], self.device, source=name)
        # prediction only: BatchNorm folded into the convolutions, channels-last weights (same function, faster)
        for_inference(self.model)
        #: side of the native grid (logits, attention maps)
        self.grid_side: int = grid_side(self.input_size, self.config.model.output_stride, self.config.model.last_stage)
        self.align_net = None
        if bundle["alignment"] is not None:
            align = bundle["alignment"]
            self.align_net = for_inference(alignment_from_weights(align["net_kwargs"], align["model"], self.device))
        self.canonical = bundle[CANONICAL_CHEST]
        bank = bundle["negatives"]
        self.bank_names: list[str] = list(bank["names"])
        self.bank_strategy: str = bank["strategy"]
        #: the bank's codes are of aligned images (the run paired with negatives.aligned_codes): hash queries so too
        self.bank_aligned_codes = bool(bank.get("aligned_codes", False)) and self.align_net is not None
        self.bank_maps = bank["maps"].float().to(self.device)  # (N, h, w)
        self.bank_images = bank.get("images")  # (N, S, S) uint8 or None
        self._index = None
        if self.kind == "cianet" and self.bank_strategy != CANONICAL:
            codes = bank["codes"].float().numpy()
            self._index = HashIndex(codes, self.bank_names, [""] * len(self.bank_names))
        self.negative_images = negative_images
        #: which model this is, written into every output record (cianet predict)
        self.model_info: dict[str, Any] = model_identity(bundle)
        #: the model card's training data (kind, name, images, labels: cianet.inference.domain); {} when unknown
        self.training_data: dict[str, Any] = dict((bundle.get("card") or {}).get("training_data") or {})
        if mode == "recompute" and self.kind == "cianet" and self.bank_images is None and negative_images is None:
            raise UsageError(
                f"{name}: mode='recompute' needs the negative images: rebuild the bundle with "
                "--with-negative-images or pass negative_images="
            )

    @classmethod
    def from_bundle(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", mode: str = "bank", **kw: Any
    ) -> Predictor:
        """Load a bundle file (:func:`cianet.run.bundle_file.load_bundle`, validated) and build a Predictor."""
        pred = cls(load_bundle(path), device=device, mode=mode, name=str(path), **kw)
        pred.model_info["sha256"] = file_sha256(path)
        return pred

    def with_precision(self, precision: str) -> Predictor:
        """A Predictor sharing this one's networks, bank and settings that computes in ``precision`` (as the
        constructor's argument): another precision without building the networks again."""
        other = copy.copy(self)
        other.precision = resolve_precision(precision, self.device)
        return other

    # ------------------------------------------------------------------------------------- negatives
    def choose_negatives(self, images_s: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Bank rows ``(B,)`` of the negatives for images ``(B, S, S)`` float [0, 1] (unaligned)."""
        if self._index is None:  # canonical strategy: the one entry
            return np.zeros(len(images_s), dtype=np.int64)
        u8 = to_uint8(images_s)
        if self.bank_aligned_codes:  # as the run's pairing: the 8-bit image, aligned
            codes = hash_codes(aligned_images(self.align_net, u8))
        else:
            codes = hash_codes(u8)  # (B, 256), as the run's pairing: 8-bit, unaligned
        excl = [Path(n).name for n in names]
        rows = self._index.query(codes, exclude_names=excl, k=2)  # (B, 2), best first
        # A bundle's bank names are anonymous, so the name rule cannot catch a bank image predicted again; its
        # hash code can: the codes are 256 real numbers (unit norm), equal to rounding for the same 8-bit image,
        # while distinct phantom images differ by >= 3.5e-3 in some entry (measured over 700 x 200 pairs).
        # Paired with itself, |M+ - M-| is rounding noise that the normalization of dM blows up to mean 1.
        unit = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
        same = np.array(
            [
                r >= 0 and float(np.abs(self._index.codes[r] - c).max()) <= SAME_CODE_ATOL
                for r, c in zip(rows[:, 0], unit)
            ]
        )
        rows = np.where(same & (rows[:, 1] >= 0), rows[:, 1], rows[:, 0])
        if (rows < 0).any():  # only when the bank's sole entry is the image itself
            rows = np.where(rows < 0, self._index.query(codes), rows)
        return rows

    def negative_image(self, row: int) -> np.ndarray:
        """The bank negative ``row`` as an 8-bit-quantized ``(S, S)`` float32 image (for ``recompute``)."""
        if self.bank_images is not None:
            return self.bank_images[row].numpy().astype(np.float32) / 255.0
        name = self.bank_names[row]
        src = self.negative_images
        img = src(name) if callable(src) else src[name]  # type: ignore[index, operator]
        img = np.asarray(img, dtype=np.float32)
        if img.shape != (self.input_size, self.input_size):
            img = resize_gray(img, self.input_size)
        return to_uint8(img).astype(np.float32) / 255.0

    # --------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def forward(
        self, images_s: np.ndarray, names: Sequence[str], priors: Sequence[np.ndarray | None] | None = None
    ) -> dict[str, Any]:
        """Network outputs for a batch of resized images ``(B, S, S)`` float [0, 1]; ``priors``: per image its
        prior study as :meth:`prepare_prior` returns it, or None for the bank's negative.

        Returns ``logits`` (B, C, h, w), ``test_logits`` (B, C, U, U), ``delta`` (B, h, w) or None,
        ``params`` (B, 5) or None, ``rows`` (B,) bank rows or None (torch tensors on CPU), ``with_prior`` the
        positions paired with their prior.
        """
        x = torch.from_numpy(np.ascontiguousarray(images_s, dtype=np.float32))[:, None].to(self.device)
        params = None
        if self.align_net is not None:
            with stage(self.timer, "alignment"):
                a = self.align_net(x)
                x, params = a["aligned"], a["params"]  # (B, 1, S, S), (B, 5)
        pos = gray_to_input(x)
        rows, neg = None, None
        with_prior = [i for i, p in enumerate(priors or ()) if p is not None]
        if with_prior and self.kind != "cianet":
            raise UsageError(f"{self.name}: a {self.kind} model takes no negative, so a prior study has no use here")
        prior_x = None
        if with_prior:  # read as the run read its negatives (8-bit, prepare_prior), aligned as they were
            prior_x = torch.from_numpy(np.stack([priors[i] for i in with_prior]).astype(np.float32))[:, None]
            prior_x = prior_x.to(self.device)
            if self.align_net is not None:
                with stage(self.timer, "alignment"):
                    prior_x = self.align_net(prior_x)["aligned"]
        if self.kind == "cianet":
            with stage(self.timer, "pairing"):
                rows = self.choose_negatives(images_s, names)
            if self.mode == "recompute":
                neg = torch.from_numpy(np.stack([self.negative_image(int(r)) for r in rows]))[:, None].to(self.device)
                if self.align_net is not None:
                    with stage(self.timer, "alignment"):
                        neg = self.align_net(neg)["aligned"]
                if with_prior:
                    neg[with_prior] = prior_x
        with stage(self.timer, "networks"), autocast(self.precision, self.device):
            if self.kind != "cianet":
                out = self.model(pos, upsample=False, return_feats=True)
            elif self.mode == "bank":
                m_neg = self.bank_maps[torch.as_tensor(rows, device=self.device)]
                if with_prior:  # the prior's M-, computed as the bundle computed its bank's maps
                    m_neg = m_neg.clone()
                    m_neg[with_prior] = self.model.attention_map(gray_to_input(prior_x)).float()
                out = self.model(pos, m_neg=m_neg, upsample=False, return_feats=True)
            else:
                out = self.model(pos, neg=gray_to_input(neg), upsample=False, return_feats=True)
            logits = out["logits"]
            test_logits = self.model.test_grid_logits(out["f_bar"]) if self.model.test_upsample else logits
        return {
            "logits": logits.float().cpu(),
            "test_logits": test_logits.float().cpu(),
            "delta": out["delta"].float().cpu() if "delta" in out else None,
            "params": None if params is None else params.double().cpu(),
            "rows": rows,
            "with_prior": with_prior,
        }

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A gray image ``(H, W)`` float [0, 1] resized to the network input ``(S, S)`` float32 (stage "resize");
        thread-safe, so that it can run ahead of the networks (:func:`cianet.inference.batch.predict_files`)."""
        with stage(self.timer, "resize"):
            return resize_gray(np.asarray(image, np.float32), self.input_size)

    def prepare_prior(self, prior: ImageInput, position: int = 0, image: str = "") -> tuple[np.ndarray, str]:
        """A prior study (a file path, a numpy array, a PIL image) -> ``((S, S) float32, its name)``: resized and
        quantized to 8 bits as a run reads its negatives; the name is the path as given (``prior-array-<i>`` /
        ``prior-image-<i>`` in memory). Errors name the prior (and ``image``, the image it is the prior of)."""
        what = "prior study" + (f" of {image}" if image else "")
        if isinstance(prior, (str, os.PathLike)):
            path = Path(prior)
            if image and path.exists() and Path(image).exists() and path.resolve() == Path(image).resolve():
                raise UsageError(f"{what} {path} is the image itself: an image is never its own negative")
            if not path.exists():
                raise MissingPathError(f"{what} {path} does not exist")
            if not path.is_file():
                raise InputError(f"{what} {path} is not a file")
            try:
                img = load_xray(path)
            except (XrayReadError, OSError) as exc:
                raise InputError(f"{what} {path} cannot be read: {exc}") from None
            name = str(prior)
        else:
            name = f"prior-{'array' if isinstance(prior, (np.ndarray, torch.Tensor)) else 'image'}-{position}"
            img = as_gray(prior, f"{what} ({name})")
        return to_uint8(resize_gray(img, self.input_size)).astype(np.float32) / 255.0, name

    def predict_arrays(
        self,
        images: Sequence[np.ndarray],
        names: Sequence[str],
        resized: np.ndarray | None = None,
        priors: Sequence[tuple[np.ndarray, str] | None] | None = None,
    ) -> list[PredictionResult]:
        """One forward pass over gray images ``[(H, W)]`` float [0, 1] of any sizes.

        ``resized``: the images already resized to ``(B, S, S)`` (:meth:`prepare`), e.g. ahead of time in
        another thread; computed here when None. ``priors``: per image, its prior study as
        :meth:`prepare_prior` returns it, or None (the bank's negative).
        """
        if not images:
            return []
        if priors is not None and len(priors) != len(images):
            raise UsageError(f"{len(priors)} priors for {len(images)} images")
        if resized is None:
            resized = np.stack([self.prepare(im) for im in images])
        out = self.forward(resized, names, None if priors is None else [p and p[0] for p in priors])
        with stage(self.timer, "boxes"):
            results = self._results(images, names, out)
        for i in out["with_prior"]:
            results[i].negative, results[i].negative_source = priors[i][1], PRIOR
        return results

    def _results(
        self, images: Sequence[np.ndarray], names: Sequence[str], out: dict[str, Any]
    ) -> list[PredictionResult]:
        """Image probabilities and boxes in each image file's frame from :meth:`forward`'s output."""
        # (B, C) on the native grid, with the MIL rescaling the run trained with (the bundle's loss.mil_rescale)
        scores = image_scores_from_logits(out["logits"], rescale=bool(self.config.loss.mil_rescale)).numpy()
        heat = torch.sigmoid(out["test_logits"]).numpy()  # (B, C, U, U)
        results = []
        for b, (img, name) in enumerate(zip(images, names)):
            h, w = img.shape
            params = None if out["params"] is None else tuple(float(v) for v in out["params"][b])
            probs = {lab: float(scores[b, k]) for k, lab in enumerate(self.labels)}
            boxes = []
            for k, lab in enumerate(self.box_labels):
                if probs[lab] < self.thresholds[lab]:
                    continue
                for x0, y0, bw, bh, s in boxes_from_heatmap(
                    heat[b, k], (w, h), params, self.cell_threshold, self.connectivity
                ):
                    boxes.append(PredictedBox(lab, x0, y0, bw, bh, s))
            rows = out["rows"]
            src = name if Path(name).is_file() else None  # in-memory input is named array-i / image-i
            results.append(
                PredictionResult(
                    domain=input_domain(self.training_data, src, (int(w), int(h))),
                    source=name,
                    image_size=(int(w), int(h)),
                    probabilities=probs,
                    boxes=boxes,
                    heatmaps=heat[b].astype(np.float32),
                    attention=None if out["delta"] is None else out["delta"][b].numpy(),
                    align_params=params,
                    negative=None if rows is None else self.bank_names[int(rows[b])],
                    negative_source=None if rows is None else CANONICAL if self.bank_strategy == CANONICAL else "bank",
                    logits=out["logits"][b].numpy(),
                    box_labels=tuple(self.box_labels),
                    image=img,
                )
            )
        return results

    def predict(
        self, image: ImageInput | Sequence[ImageInput], prior: ImageInput | None = None
    ) -> PredictionResult | list[PredictionResult]:
        """Predict one image: a file path (PNG/JPEG/DICOM), a numpy ``(H, W)`` array (uint8 or float in
        [0, 1]) or a PIL image. Unreadable files raise ``cianet.data.io.XrayReadError`` naming the file.

        ``prior``: the same patient's earlier No Finding study (same kinds of input), contrasted with the image
        instead of the bank's nearest negative (``negatives.strategy=prior``; the result's ``negative`` names
        it, ``negative_source`` is "prior"). A missing or unreadable prior is an error naming it.

        A list (or tuple) of images gives a list of results (:meth:`predict_batch`); a folder:
        :meth:`predict_folder`. Results keep an 8-bit copy of the image for display (``show()``)."""
        if isinstance(image, (list, tuple)):
            if prior is not None:
                raise UsageError("predict(list, prior=...): give one prior per image with predict_batch(priors=)")
            return self.predict_batch(list(image))
        if isinstance(image, (str, os.PathLike)) and Path(image).is_dir():
            raise UsageError(f"{image} is a folder: use Predictor.predict_folder({str(image)!r})")
        img, name = load_input(image, 0)
        priors = None if prior is None else [self.prepare_prior(prior, 0, name)]
        return self._for_python(self.predict_arrays([img], [name], priors=priors))[0]

    def predict_folder(
        self, folder: str | os.PathLike, batch_size: int | None = None, progress: bool = False
    ) -> list[PredictionResult]:
        """Predict every image file under ``folder`` (PNG/JPEG/DICOM, searched recursively, as ``cianet predict``
        does), in path order; raises on the first unreadable file."""
        if not Path(folder).is_dir():
            raise MissingPathError(f"{folder}: no such folder")
        files = [str(f) for f in image_files(Path(folder))]
        if not files:
            raise InputError(f"{folder}: no PNG, JPEG or DICOM files found")
        return self.predict_batch(files, batch_size=batch_size, progress=progress)

    def _for_python(self, results: list[PredictionResult]) -> list[PredictionResult]:
        """Results for the Python API: the kept image shrunk to an 8-bit preview; one warning per Predictor when
        a synthetic-trained model read an image of another kind (cianet.inference.domain)."""
        warn_out_of_domain(self, results)
        return [compact(r) for r in results]

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        batch_size: int | None = None,
        progress: bool = False,
        priors: Sequence[ImageInput | None] | None = None,
    ) -> list[PredictionResult]:
        """Predict many images, ``batch_size`` per forward pass; raises on the first unreadable file.
        ``priors``: one per image, its prior study or None (the bank's negative), as in :meth:`predict`."""
        if priors is not None and len(priors) != len(images):
            raise UsageError(f"{len(priors)} priors for {len(images)} images")
        bs = batch_size or self.batch_size
        results: list[PredictionResult] = []
        for i in chunk_progress(len(images), bs, "predict", not progress):
            loaded = [load_input(item, i + j) for j, item in enumerate(images[i : i + bs])]
            chunk = (
                None
                if priors is None
                else [
                    None if p is None else self.prepare_prior(p, i + j, loaded[j][1])
                    for j, p in enumerate(priors[i : i + bs])
                ]
            )
            results.extend(
                self._for_python(self.predict_arrays([a for a, _ in loaded], [n for _, n in loaded], priors=chunk))
            )
        return results
