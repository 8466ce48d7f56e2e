"""Run configuration: one dataclass per concern, loaded from YAML, overridable from the command line.

``load_config("paper")`` / ``load_config("tiny")`` load the shipped recipes (``cianet/configs/*.yaml``);
any other argument is a path to a YAML file. Overrides are ``section.field=value`` strings (YAML values).
The resolved config is saved as ``config.yaml`` next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    data_root: str = ""  # NIH-layout folder (Data_Entry_2017*.csv, BBox_List_2017.csv, images)
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
    pretrained: bool = True  # ImageNet weights when in the local torch cache
    test_upsample: int | None = 128  # paper 3.3: upsample F_bar to 128x128 before the head at test time
    head_channels: int = 512
    output_stride: int = 32  # 32: the paper (16x16 grid at 512 px); 16 or 8 turn the last strides into dilation
    last_stage: str = "c5"  # F+ from this stage and attention from the one before: c5 (paper) or c4


@dataclass
class AlignConfig:
    checkpoint: str | None = None  # alignment checkpoint for `cianet train`; None = no alignment
    canonical: str | None = None  # canonical chest PNG for `cianet train-align` (its crop is read from <stem>.json)
    canonical_n: int = 500
    backbone: str = "resnet18"
    pretrained: bool = True
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


@dataclass
class NegativeConfig:
    strategy: str = "sim"  # "sim" | "random" | "canonical" (paper Table 5) | "oracle" (phantom twins)
    hash_index: str | None = None  # `cianet hash` output; built on the fly when absent
    exclude_same_patient: bool = True
    aligned_codes: bool = True  # "sim" codes of pool and queries from aligned images (when align.checkpoint is set)


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
    lr_step: int = 5  # divide the lr by 1/lr_gamma every lr_step epochs
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


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from a nested dict; unknown sections or keys raise ValueError naming them."""
    cfg = Config()
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if section not in SECTIONS:
            raise ValueError(f"{source}: unknown config section {section!r} (known: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping")
        current = getattr(cfg, section)
        known = {f.name for f in dataclasses.fields(current)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"{source}: unknown key {section}.{key} (known: {', '.join(sorted(known))})")
            setattr(current, key, value)
    return cfg


def shipped_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cianet.configs").iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a shipped recipe by name ("paper", "tiny") or a YAML file, then apply ``section.key=value`` overrides."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        res = resources.files("cianet.configs") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ValueError(
                f"unknown config {name_or_path!r}: give a YAML path or one of {', '.join(shipped_configs())}"
            )
        text, source = res.read_text(), f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML: {exc}") from None
    cfg = config_from_dict(data, source)
    apply_overrides(cfg, overrides or [])
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.01)")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        config_from_dict({section: {key: value}}, source=f"override {item!r}")  # validates names
        setattr(getattr(cfg, section), key, value)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from cianet.utils.atomic import atomic_write_text

    atomic_write_text(path, cfg.to_yaml())
