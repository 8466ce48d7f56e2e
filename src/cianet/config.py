"""Run configuration: one dataclass per concern, loaded from YAML, overridable from the command line.

``load_config("paper")`` / ``load_config("tiny")`` load the shipped recipes (``cianet/configs/*.yaml``);
any other argument is a path to a YAML file. Overrides are ``section.field=value`` strings (YAML values).
Every value is type-, range- and choice-checked wherever it comes from (:func:`check_value`); an error
names the key, the value and what is allowed. The resolved config is saved as ``config.yaml`` next to
every checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cianet.errors import MissingPathError, UsageError
from cianet.utils.atomic import atomic_write_text

#: The data-set layouts cianet reads, the one declaration: `data.dataset`'s choices, every command's `--dataset`,
#: `cianet synth --layout` and the adapters of cianet.data.layouts (one per name) read it. Adding a layout:
#: docs/architecture.md, "Adding a data set".
NIH, RSNA, VINDR, CSV = "nih", "rsna", "vindr", "csv"
DATASETS: tuple[str, ...] = (NIH, RSNA, VINDR, CSV)
AUTO_DATASET = "auto"  # detect the layout from the data root's files
BOX_MERGES: tuple[str, ...] = ("mean", "union", "none")
#: data.label_map's choices: the data sets whose classes another data set's can be mapped to (NIH: ChestX-ray14's)
LABEL_MAPS: tuple[str, ...] = (NIH,)


@dataclass
class DataConfig:
    data_root: str = ""  # data folder in the layout of `dataset` (README, "Data sets")
    dataset: str = AUTO_DATASET  # one of DATASETS, or AUTO_DATASET (detected from the data root's files)
    # The class list of the run, box classes first: set by `cianet train` from the data set and saved with the
    # run, so its checkpoint, bundle and tables know their classes. null = ChestX-ray14's 14 (8 with boxes).
    labels: list[str] | None = None
    box_labels: list[str] | None = None
    box_merge: str = "mean"  # readers' boxes of one finding (VinDr-CXR), one of BOX_MERGES (docs/method.md)
    merge_iou: float = 0.4  # boxes of one class linked at IoU >= this are one finding
    label_map: str | None = None  # one of LABEL_MAPS ("nih": to ChestX-ray14's classes; cianet.data.label_maps)
    entry_csv: str | None = None  # override the Data_Entry file name/path
    bbox_csv: str | None = None  # override the BBox_List file name/path
    cache: str | None = None  # `cianet prepare` cache folder; read from it when present
    image_size: int = 512  # network input S (multiple of 32); paper: 512
    workers: int = 2  # DataLoader worker processes
    max_images: int | None = None  # cap the training and test lists (reduced runs)


@dataclass
class ProtocolConfig:
    kind: str = "localization"  # "localization" (5-fold, Tables 1-3, 5, 6) | "classification" (Table 4)
    splits: str | None = None  # splits JSON (`cianet splits`); made from the seed when absent
    fold: int = 0
    annotated_ratio: float = 0.8  # share of all annotated images used with boxes: 0, 0.4, 0.8
    unannotated_ratio: float = 0.5  # share of all unannotated images: 0.5 or 1.0
    unannotated_only: bool = False  # Table 2: no boxes in training, test on all annotated images
    allow_patient_overlap: bool = False  # reproduce the naive (leaky) split
    official: bool = False  # classification: NIH's official train_val/test lists
    # localization: share of the training images (whole patients) held out as the validation set that
    # run.eval_every scores; 0 = no validation (the classification protocol uses its own val split).
    # paper.yaml sets 0.1; the default is 0 because a config saved before this key existed had none.
    val_share: float = 0.0


@dataclass
class ModelConfig:
    kind: str = "cianet"  # "cianet" | "baseline"
    backbone: str = "resnet50"
    # "imagenet" (torchvision's weights: the torch hub cache, else a download; an error when neither works),
    # "none" (random init) or a state-dict file of the backbone (cianet.models.backbones.pretrained_weights).
    # true/false in older configs mean imagenet/none.
    pretrained: str = "imagenet"
    test_upsample: int | None = 128  # paper 3.3: upsample F_bar to 128x128 before the head at test time
    head_channels: int = 512
    output_stride: int = 32  # 32: the paper (16x16 grid at 512 px); 16 or 8 turn the last strides into dilation
    last_stage: str = "c5"  # F+ from this stage and attention from the one before: c5 (paper) or c4
    # Channels of the trunks' stems, doubling per stage: 64 is the standard ResNet (the paper, ImageNet weights);
    # less gives a narrower network of the same depth and grid (pretrained none). See docs/method.md.
    width: int = 64


#: The canonical chest's key wherever a file or a result holds it (align.pt, a bundle, `cianet canonical`'s
#: paths and JSON); the negative strategy CANONICAL below is named after it.
CANONICAL_CHEST = "canonical"


@dataclass
class AlignConfig:
    checkpoint: str | None = None  # alignment checkpoint for `cianet train`; None = no alignment
    canonical: str | None = None  # canonical chest PNG for `cianet train-align` (its crop is read from <stem>.json)
    canonical_n: int = 500
    backbone: str = "resnet18"
    pretrained: str = "imagenet"  # as model.pretrained; "none" also leaves the structure loss's feature net random
    width: int = 64  # the regressor trunk's stem channels, as model.width (64: standard; less needs pretrained none)
    input_size: int = 224  # the regressor sees a downsized copy; the warp applies at full size
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" (to 0 over the run) | "constant"
    # Bounds (docs/method.md, Alignment module): "crop" centres them on the canonical crop's zoom/shift
    # (z = 0 is the crop); "identity" centres them on the identity, widened to cover the crop.
    center: str = "crop"
    max_shift: float = 0.4  # normalized units around the centre
    max_scale: float = 1.4  # ratio around the centre, symmetric in log scale
    max_rotation: float = 0.35  # radians around the centre
    # Structure loss (docs/method.md, Structure loss), computed on the regressor's input_size copy.
    feat_weight: float = 1.0
    pixel_weight: float = 1.0
    feature_net: str = "vgg16"  # "vgg16" (relu2_2) | "resnet18" (layer1) | "none"
    feat_norm: str = "unit"  # "unit" (channel-normalized features) | "paper" (eq. 2 as printed)
    balance: bool = True  # divide each structure term by its value on the first batch (both start at 1)
    # Consistency under known random warps (equivariance; no ground truth needed).
    consistency_weight: float = 10.0  # 0 turns it off
    warp_rotation: float = 15.0  # degrees
    warp_scale: list[float] = field(default_factory=lambda: [0.8, 1.25])
    warp_shift: float = 0.16  # normalized units (0.16 = 8 % of the width)
    max_images: int | None = 5000  # alignment needs far fewer images than classification


@dataclass(frozen=True)
class NegativeStrategy:
    """What one negative strategy is and reads (the one declaration: config choices, ``cianet train
    --negatives``, :mod:`cianet.run.pairing`, :mod:`cianet.negatives` and docs/method.md read it)."""

    description: str  # one line, for --help and the docs
    pool: bool  # draws from the pool of No Finding training images (the labels of *training* images only)
    codes: bool  # needs perceptual-hash codes of the pool and of the image being paired
    base: bool  # needs nothing of the image but its pixels and patient: a valid negatives.prior_fallback
    reads: str  # what it reads besides pixels, for the record
    prior: str | None = None  # "earlier" | "any": the patient's own No Finding study (cianet.data.priors)
    upper_bound: bool = False  # reads the image's own finding-free twin: an upper bound, never evidence


#: The negative strategies' config names (negatives.strategy, `cianet train --negatives`): the keys below.
SIM = "sim"
RANDOM = "random"
CANONICAL = "canonical"
PRIOR = "prior"
PRIOR_ANY = "prior_any"
ORACLE = "oracle"
#: Every negative strategy, by its config name.
NEGATIVE_STRATEGIES: dict[str, NegativeStrategy] = {
    SIM: NegativeStrategy(
        "the paper's: the No Finding training image of another patient with the nearest perceptual-hash code",
        pool=True,
        codes=True,
        base=True,
        reads="the pool's labels (training images)",
    ),
    RANDOM: NegativeStrategy(
        "a random No Finding training image of another patient, redrawn every epoch (paper Table 5)",
        pool=True,
        codes=False,
        base=True,
        reads="the pool's labels (training images)",
    ),
    CANONICAL: NegativeStrategy(
        "the canonical chest (`cianet canonical`) for every image: capacity without a contrast (paper Table 5)",
        pool=False,
        codes=False,
        base=True,
        reads="nothing",
    ),
    PRIOR: NegativeStrategy(
        "the same patient's most recent earlier No Finding study; images without one: negatives.prior_fallback",
        pool=False,
        codes=False,
        base=False,
        prior="earlier",
        reads="patient ids, follow-up numbers and the labels of the patient's earlier studies",
    ),
    PRIOR_ANY: NegativeStrategy(
        "as prior, but a No Finding study at any other follow-up of the patient (earlier preferred on ties)",
        pool=False,
        codes=False,
        base=False,
        prior="any",
        reads="patient ids, follow-up numbers and the labels of the patient's other studies",
    ),
    ORACLE: NegativeStrategy(
        "UPPER BOUND, phantom only: the image's own finding-free re-render (`cianet synth --twins`)",
        pool=False,
        codes=False,
        base=False,
        reads="the image's own twin",
        upper_bound=True,
    ),
}
#: strategies that pair from the pool or the canonical chest alone: negatives.prior_fallback's choices
BASE_STRATEGIES: tuple[str, ...] = tuple(n for n, s in NEGATIVE_STRATEGIES.items() if s.base)


@dataclass
class NegativeConfig:
    strategy: str = SIM  # a key of NEGATIVE_STRATEGIES (docs/method.md, "Negative sampling")
    hash_index: str | None = None  # `cianet hash` output; built on the fly when absent
    exclude_same_patient: bool = True
    aligned_codes: bool = True  # "sim" codes of pool and queries from aligned images (when align.checkpoint is set)
    prior_fallback: str = SIM  # prior / prior_any: the strategy of images without such a study (BASE_STRATEGIES)

    def fallback_strategy(self) -> str | None:
        """The base strategy that pairs images the strategy leaves unpaired (prior, prior_any), else None."""
        return self.prior_fallback if NEGATIVE_STRATEGIES[self.strategy].prior else None

    def pool_strategy(self) -> str | None:
        """The pool strategy in use (sim or random: the strategy itself or prior's fallback), else None."""
        for name in (self.strategy, self.fallback_strategy()):
            if name is not None and NEGATIVE_STRATEGIES[name].pool:
                return name
        return None


@dataclass
class LossConfig:
    beta_b: float = 5.0  # weight of the box (grid BCE) term in eq. 6
    mil_rescale: bool = False  # Li et al.'s rescaling of (1 - p) into [0.98, 1]


@dataclass
class OptimConfig:
    epochs: int = 15
    batch_size: int = 6
    lr: float = 0.001
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # one of OPTIMIZERS: "sgd" (the paper: momentum, optionally Nesterov) | "adamw"
    lr_schedule: str = "step"  # one of LR_SCHEDULES: "step" (the paper) | "cosine" (to 0 at the last step)
    warmup: float = 0.0  # share of the run (in steps) over which the lr rises linearly from 0 to optim.lr
    lr_step: int = 5  # lr_schedule step: divide the lr by 1/lr_gamma every lr_step epochs
    lr_gamma: float = 0.1
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    channels_last: bool = True
    grad_clip: float | None = None
    box_share: float = 0.0  # minimum share of each batch given to box-supervised images (0: plain shuffle)


@dataclass
class RunConfig:
    out: str = "runs/run"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1"
    seed: int = 0
    eval_every: int = 1  # validate every N epochs (0: only at the end)
    progress: bool = True
    tensorboard: bool = True
    threads: int | None = None  # torch intra-op threads (None: torch default)
    # fp32 | bf16 | auto (bfloat16 where the CPU has it natively) | None: float32 on CPU, optim.amp on CUDA.
    # None by default: bfloat16 training is not switched on before its effect on results is measured
    # (cianet.run.precision, docs/performance.md).
    precision: str | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    negatives: NegativeConfig = field(default_factory=NegativeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}

# ------------------------------------------------------------------------------------------------ checks
# Every value is checked against its field's type (from the annotations) and, where it has one, a range or a
# set of choices, whether it comes from a YAML file, --set or a flag. Ranges say what the code can run, not
# what is sensible (that is the recipes' job).
#: optim.optimizer's choices (cianet.training.schedule builds them)
OPTIMIZERS = ("sgd", "adamw")
#: optim.lr_schedule's choices: "step" multiplies the lr by lr_gamma every lr_step epochs (the paper's recipe);
#: "cosine" anneals it to 0 over the run's steps; both after optim.warmup's linear rise
LR_SCHEDULES = ("step", "cosine")

_CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": (AUTO_DATASET, *DATASETS),
    "data.box_merge": BOX_MERGES,
    "data.label_map": LABEL_MAPS,
    "protocol.kind": ("localization", "classification"),
    "model.kind": ("cianet", "baseline"),
    "model.backbone": ("resnet18", "resnet34", "resnet50", "resnet101"),
    "model.last_stage": ("c4", "c5"),
    "align.backbone": ("resnet18", "resnet34", "resnet50", "resnet101"),
    "align.lr_schedule": ("cosine", "constant"),
    "align.center": ("crop", "identity"),
    "align.feature_net": ("vgg16", "resnet18", "none"),
    "align.feat_norm": ("unit", "paper"),
    "negatives.strategy": tuple(NEGATIVE_STRATEGIES),
    "negatives.prior_fallback": BASE_STRATEGIES,
    "optim.optimizer": OPTIMIZERS,
    "optim.lr_schedule": LR_SCHEDULES,
    "run.precision": ("fp32", "bf16", "auto"),  # or null (cianet.run.precision)
}
_INT_CHOICES: dict[str, tuple[int, ...]] = {"model.output_stride": (8, 16, 32)}


def choices(key: str) -> tuple:
    """The allowed values of config key ``key`` ("section.field"), for flags and docs; () when it has no list."""
    return _CHOICES.get(key, _INT_CHOICES.get(key, ()))


def _positive(v: float) -> bool:
    return v > 0


def _at_least(n: float):
    return lambda v: v >= n


def _between(lo: float, hi: float):
    """Bounds on both sides: an upper bound keeps a crafted file (a bundle's config) from asking for memory
    or time no run needs."""
    return lambda v: lo <= v <= hi


def _share(v: float) -> bool:
    return 0.0 <= v <= 1.0


#: the largest image side a run (data.image_size) or a cache (`cianet prepare`) takes
MAX_IMAGE_SIZE = 4096
#: key -> (test, what it allows); None values (where the type allows None) are not tested
_RANGES: dict[str, tuple[Any, str]] = {
    "data.image_size": (
        lambda v: 32 <= v <= MAX_IMAGE_SIZE and v % 32 == 0,
        f"a multiple of 32, at least 32 and at most {MAX_IMAGE_SIZE}",
    ),
    "data.workers": (_between(0, 256), ">= 0 and <= 256"),
    "data.max_images": (_between(1, 10**9), ">= 1 and <= 10^9 (or null: no cap)"),
    "data.merge_iou": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "data.labels": (
        lambda v: 0 < len(v) <= 1000 and len(set(v)) == len(v),
        "a non-empty list of at most 1000 distinct class names",
    ),
    "data.box_labels": (lambda v: len(v) <= 1000 and len(set(v)) == len(v), "at most 1000 distinct class names"),
    "protocol.fold": (lambda v: 0 <= v <= 4, "0 to 4"),
    "protocol.annotated_ratio": (_share, "in [0, 1]"),
    "protocol.unannotated_ratio": (_share, "in [0, 1]"),
    "protocol.val_share": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "model.test_upsample": (_between(1, 1024), ">= 1 and <= 1024 (or null: the native grid)"),
    "model.head_channels": (_between(1, 8192), ">= 1 and <= 8192"),
    "model.width": (_between(4, 256), ">= 4 and <= 256"),
    "align.canonical_n": (_between(1, 10**6), ">= 1 and <= 10^6"),
    "align.width": (_between(4, 256), ">= 4 and <= 256"),
    "align.input_size": (_between(32, 2048), ">= 32 and <= 2048"),
    "align.epochs": (_between(1, 10**5), ">= 1 and <= 10^5"),
    "align.batch_size": (_between(1, 4096), ">= 1 and <= 4096"),
    "align.lr": (lambda v: 0 < v <= 10, "> 0 and <= 10"),
    "align.max_shift": (lambda v: 0 < v <= 10, "> 0 and <= 10"),
    "align.max_scale": (lambda v: 1.0 < v <= 100, "> 1 and <= 100"),
    "align.max_rotation": (_between(0, 2 * math.pi), ">= 0 and <= 2 pi"),
    "align.feat_weight": (_between(0, 1e6), ">= 0 and <= 10^6"),
    "align.pixel_weight": (_between(0, 1e6), ">= 0 and <= 10^6"),
    "align.consistency_weight": (_between(0, 1e6), ">= 0 and <= 10^6"),
    "align.warp_rotation": (_between(0, 180), ">= 0 and <= 180 (degrees)"),
    "align.warp_scale": (
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 100,
        "two numbers [lo, hi] with 0 < lo <= hi <= 100",
    ),
    "align.warp_shift": (_between(0, 10), ">= 0 and <= 10"),
    "align.max_images": (_between(1, 10**9), ">= 1 and <= 10^9 (or null: no cap)"),
    "loss.beta_b": (_between(0, 1e6), ">= 0 and <= 10^6"),
    "optim.epochs": (_between(1, 10**5), ">= 1 and <= 10^5"),
    "optim.batch_size": (_between(1, 4096), ">= 1 and <= 4096"),
    "optim.lr": (lambda v: 0 < v <= 10, "> 0 and <= 10"),
    "optim.momentum": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "optim.weight_decay": (_between(0, 1), ">= 0 and <= 1"),
    "optim.lr_step": (_between(1, 10**6), ">= 1 and <= 10^6"),
    "optim.warmup": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "optim.lr_gamma": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "optim.grad_clip": (lambda v: 0 < v <= 1e9, "> 0 and <= 10^9 (or null: no clipping)"),
    "optim.box_share": (_share, "in [0, 1]"),
    "run.device": (
        lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
        "auto, cpu, mps, cuda or cuda:N",
    ),
    "run.seed": (_between(0, 2**32 - 1), ">= 0 and <= 2^32 - 1"),
    "run.eval_every": (_between(0, 10**6), ">= 0 and <= 10^6"),
    "run.threads": (_between(1, 1024), ">= 1 and <= 1024 (or null: the torch default)"),
}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _typed(value: Any, tp: Any, name: str) -> Any:
    """``value`` as type ``tp`` (an int is a valid float), or ValueError saying what was expected."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        tp = args[0]
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise UsageError(f"{name} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_typed(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    ok = (
        isinstance(value, bool)
        if tp is bool
        else isinstance(value, int) and not isinstance(value, bool)
        if tp is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is float
        else isinstance(value, tp)
    )
    if not ok:
        raise UsageError(f"{name} must be {_type_name(tp)}, got {value!r}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, got {value!r}")
    return value


@functools.cache
def _section_hints(section: str) -> dict[str, Any]:
    """The field types of config section ``section`` (resolving them costs ~0.5 ms; configs check every key)."""
    return typing.get_type_hints(type(getattr(Config(), section)))


def check_value(section: str, key: str, value: Any) -> Any:
    """``value`` checked (and an int made a float where a float is expected) for ``section.key``.

    Raises ValueError naming the key, the value and what is allowed.
    """
    name = f"{section}.{key}"
    if key == "pretrained" and isinstance(value, bool):  # configs saved before imagenet|none|PATH
        value = "imagenet" if value else "none"
    hints = _section_hints(section)
    value = _typed(value, hints[key], name)
    if value is None:
        return value
    if name in _CHOICES and value not in _CHOICES[name]:
        raise UsageError(f"{name} must be one of {', '.join(_CHOICES[name])}, got {value!r}")
    if name in _INT_CHOICES and value not in _INT_CHOICES[name]:
        raise UsageError(f"{name} must be one of {', '.join(map(str, _INT_CHOICES[name]))}, got {value!r}")
    if name in _RANGES:
        test, allowed = _RANGES[name]
        if not test(value):
            raise UsageError(f"{name} must be {allowed}, got {value!r}")
    return value


def validate_config(cfg: Config, source: str = "config", flags: dict[str, str] | None = None) -> Config:
    """Check every value of ``cfg`` (see :func:`check_value`); raises UsageError naming ``source`` (or, for a
    key in ``flags``, the command-line flag that set it)."""
    for section in SECTIONS:
        part = getattr(cfg, section)
        for f in dataclasses.fields(part):
            try:
                setattr(part, f.name, check_value(section, f.name, getattr(part, f.name)))
            except ValueError as exc:
                raise UsageError(f"{(flags or {}).get(f'{section}.{f.name}', source)}: {exc}") from None
    return cfg


#: config keys that name an input file or folder, with the flag that sets them
PATH_KEYS = {
    "data.data_root": "--data-root",
    "data.cache": "--cache",
    "protocol.splits": "--splits",
    "align.checkpoint": "--align",
    "align.canonical": "--canonical",
    "negatives.hash_index": "--hash-index",
}
#: every config key that names a file or folder it reads: PATH_KEYS and the metadata tables (data.entry_csv,
#: data.bbox_csv, which may be given relative to the data root and are kept as written)
INPUT_PATH_KEYS = (*PATH_KEYS, "data.entry_csv", "data.bbox_csv")


def check_paths_exist(cfg: Config) -> None:
    """Every input path the config names must exist (none is silently replaced by a computed default).

    ``data.cache`` is exempt: a run reads the cache when it is there. Raises MissingPathError naming the key.
    """

    for key, flag in PATH_KEYS.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key == "data.cache" or not value:
            continue
        if not Path(value).exists():
            raise MissingPathError(f"{flag} {value} ({key}) does not exist")


def resolve_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` with every input path (``PATH_KEYS``) absolute, as a run saves it: the run folder's
    config then means the same files from any working folder (``cianet bundle --run R`` from elsewhere).
    Files meant to be shared (bundles, ONNX) carry no paths at all."""
    cfg = copy.deepcopy(cfg)
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value:
            setattr(getattr(cfg, section), name, str(Path(value).expanduser().resolve()))
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from a nested dict; unknown sections or keys raise ValueError naming them."""
    cfg = Config()
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if section not in SECTIONS:
            raise UsageError(f"{source}: unknown config section {section!r} (known: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UsageError(f"{source}: section {section!r} must be a mapping")
        current = getattr(cfg, section)
        known = {f.name for f in dataclasses.fields(current)}
        for key, value in values.items():
            if key not in known:
                raise UsageError(f"{source}: unknown key {section}.{key} (known: {', '.join(sorted(known))})")
            try:
                setattr(current, key, check_value(section, key, value))
            except ValueError as exc:
                raise UsageError(f"{source}: {exc}") from None
    return cfg


def shipped_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cianet.configs").iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a shipped recipe by name ("paper", "tiny") or a YAML file, then apply ``section.key=value`` overrides."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named "tiny" never shadows the recipe
        if not path.is_file():
            raise MissingPathError(f"config file {path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        res = resources.files("cianet.configs") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise UsageError(
                f"unknown config {name_or_path!r}: give a YAML path or one of {', '.join(shipped_configs())}"
            )
        text, source = res.read_text(), f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {exc}") from None
    cfg = config_from_dict(data, source)
    apply_overrides(cfg, overrides or [])
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UsageError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.01)")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            raise UsageError(f"override {item!r}: the value is not valid YAML") from None
        checked = config_from_dict({section: {key: value}}, source=f"override {item!r}")  # validates name and value
        setattr(getattr(cfg, section), key, getattr(getattr(checked, section), key))
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, cfg.to_yaml())
