"""Helpers shared by several test modules (tests never import each other; they import this and conftest).

One NIH-layout writer (:func:`write_nih`) serves the two tiny data sets the tests use: small square chests
with bright square lesions (:func:`write_tiny_nih`, for training and evaluation) and non-square phantom-like
chests (:func:`write_chest_nih`, for bundles and prediction). One tiny recipe (:func:`tiny_config`) serves
every test that builds a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 64  # network input of the tiny recipe
#: native grid side of the tiny recipe's models at SIZE (its trunks are dilated to output stride 8)
GRID = SIZE // 8
U = 16  # its test grid
IMG_W, IMG_H = 80, 96  # the chest set's files are not square and not at the network size

ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


@dataclass
class TinyImage:
    name: str
    pixels: np.ndarray  # (H, W) uint8
    label: str  # NIH "Finding Labels" text
    patient: int
    follow_up: int = 0
    box: tuple[int, int, int, int] | None = None  # (x, y, w, h), written to the box list


def write_nih(root: Path, images: list[TinyImage]) -> Path:
    """Write ``images`` in the NIH layout: images/*.png, Data_Entry_2017.csv, BBox_List_2017.csv."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries, boxes = [ENTRY_HEADER], [BOX_HEADER]
    for im in images:
        Image.fromarray(im.pixels, mode="L").save(root / "images" / im.name)
        h, w = im.pixels.shape
        entries.append(f"{im.name},{im.label},{im.follow_up},{im.patient},40,M,PA,{w},{h},0.1,0.1")
        if im.box is not None:
            boxes.append(f"{im.name},{im.label},{','.join(str(v) for v in im.box)}")
    (root / "Data_Entry_2017.csv").write_text("\n".join(entries) + "\n")
    (root / "BBox_List_2017.csv").write_text("\n".join(boxes) + "\n")
    return root


def write_tiny_nih(root: Path, n_patients: int = 24, size: int = 64, seed: int = 0) -> Path:
    """Two images per patient; about half No Finding; Nodule/Mass as bright squares, every other one boxed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 0.3 + 0.2 * np.exp(-(((xx - size / 2) / (size / 3)) ** 2))
    images, k = [], 0
    for p in range(1, n_patients + 1):
        for f in range(2):
            name = f"{p:08d}_{f:03d}.png"
            img = base + rng.normal(0, 0.02, (size, size))
            label, box = "No Finding", None
            if rng.random() < 0.5:
                label = "Nodule" if rng.random() < 0.5 else "Mass"
                side = size // 8 if label == "Nodule" else size // 4
                x, y = rng.integers(4, size - side - 4, size=2)
                img[y : y + side, x : x + side] += 0.4
                if k % 2 == 0:
                    box = (int(x), int(y), side, side)
                k += 1
            images.append(TinyImage(name, (np.clip(img, 0, 1) * 255).astype(np.uint8), label, p, f, box))
    return write_nih(root, images)


def synthetic_chest(rng: np.random.Generator, w: int = IMG_W, h: int = IMG_H, lesion: bool = False) -> np.ndarray:
    """A phantom-like gray chest (H, W) float in [0, 1] spanning the full range: body, two dark lungs, noise."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 0.55 + 0.1 * rng.standard_normal() * yy
    for cx in (0.3 + 0.03 * rng.standard_normal(), 0.7 + 0.03 * rng.standard_normal()):
        img -= 0.35 * (((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    if lesion:
        img += 0.3 * (((xx - 0.3) / 0.06) ** 2 + ((yy - 0.45) / 0.06) ** 2 < 1)
    img += 0.03 * rng.standard_normal((h, w))
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)


def write_chest_nih(root: Path, n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """n chests (one per patient), even ones No Finding, odd ones Nodule (no boxes). Returns name -> image."""
    rng = np.random.default_rng(seed)
    images, written = {}, []
    for i in range(n):
        name = f"{i + 1:08d}_000.png"
        u8 = np.rint(synthetic_chest(rng, lesion=i % 2 == 1) * 255).astype(np.uint8)
        images[name] = u8.astype(np.float32) / 255.0
        written.append(TinyImage(name, u8, "No Finding" if i % 2 == 0 else "Nodule", i + 1))
    write_nih(root, written)
    return images


#: the stem width of the tests' ResNet trunks (alignment regressors included): a quarter of the tiny recipe's 32
#: and an eighth of the standard 64, so that building and training the hundreds of networks the suite makes
#: costs little (a ResNet-18 draws its weights in 6 ms instead of 19 or 97). What the tests check (files, shapes,
#: resumption, agreement between code paths) does not depend on it.
TEST_WIDTH = 16
#: the same for a command line of the tiny recipe
NARROW = ("--set", f"model.width={TEST_WIDTH}", "--set", f"align.width={TEST_WIDTH}")


def narrow(cfg):
    """``cfg`` with TEST_WIDTH trunks (the model's and the alignment regressor's); returns it."""
    cfg.model.width = cfg.align.width = TEST_WIDTH
    return cfg


def tiny_config(out, data_root="", **over):
    """The tiny recipe at 64 px on one CPU thread; ``section__key=value`` overrides."""
    from cianet.config import load_config

    cfg = load_config("tiny")
    cfg.data.data_root = str(data_root)
    cfg.data.image_size = SIZE
    cfg.data.workers = 0
    cfg.model.backbone = "resnet18"
    narrow(cfg)
    cfg.model.test_upsample = U
    cfg.model.head_channels = 16
    cfg.optim.epochs = 2
    cfg.optim.batch_size = 8
    cfg.optim.lr = 0.01
    cfg.run.out = str(out)
    cfg.run.progress = False
    cfg.run.eval_every = 0
    cfg.run.threads = 1
    cfg.protocol.annotated_ratio = 0.8
    cfg.protocol.unannotated_ratio = 0.5
    for key, value in over.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def pairwise_auc(scores, labels) -> float:
    """The AUC by its definition (Mann-Whitney): the share of (positive, negative) pairs the scores rank right,
    a tie counting one half, by a float64 double loop; NaN without a positive or a negative."""
    pos = [float(s) for s, y in zip(scores, labels, strict=True) if y > 0.5]
    neg = [float(s) for s, y in zip(scores, labels, strict=True) if y <= 0.5]
    if not pos or not neg:
        return float("nan")
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


#: (what was built, seed) -> (its state dict, torch's random state right after the build), for seeded_build
_SEEDED_BUILDS: dict[tuple, tuple[dict, torch.Tensor]] = {}


def seeded_build(key: tuple, seed: int, build):
    """``build()`` after ``torch.manual_seed(seed)``, remembered per ``(key, seed)`` in this process: a repeat
    loads a copy of the same weights into a network built without initialization (drawing a ResNet's random
    weights costs ~0.15 s) and leaves torch's random state where the build left it, so callers see no
    difference."""
    from cianet.run.networks import with_weights

    if (key, seed) not in _SEEDED_BUILDS:
        torch.manual_seed(seed)
        module = build()
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        _SEEDED_BUILDS[key, seed] = state, torch.get_rng_state()
        return module
    state, rng = _SEEDED_BUILDS[key, seed]
    module = with_weights(build, {k: v.clone() for k, v in state.items()})
    torch.set_rng_state(rng)
    return module.train()  # as build() returns it; callers choose the mode


def tiny_model(cfg, seed: int = 0):
    """The network of ``cfg`` with random but non-trivial BatchNorm statistics (eval mode is not the identity)."""
    from cianet.run.networks import build_network

    key = ("network", repr(cfg.model), repr(cfg.data.labels), repr(cfg.data.box_labels))
    model = seeded_build(key, seed, lambda: build_network(cfg)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model


def write_alignment(path: Path, tx: float = 0.0, ty: float = 0.0) -> Path:
    """align.pt of an AlignmentNet that outputs exactly (tx, ty, 1, 1, 0) for any image."""
    from cianet.models.alignment import AlignmentNet

    kwargs = {"backbone": "resnet18", "input_size": SIZE, "width": TEST_WIDTH}
    net = seeded_build(("alignment", SIZE, TEST_WIDTH), 3, lambda: AlignmentNet(**kwargs))
    with torch.no_grad():  # the last layer is zero: z = bias; t = max_shift * tanh(z)
        net.fc.bias[0] = math.atanh(tx / net.max_shift)
        net.fc.bias[1] = math.atanh(ty / net.max_shift)
    torch.save(
        {
            "kind": "alignment",
            "format_version": 1,
            "model": net.state_dict(),
            "epoch": 0,
            "config": {},
            "net_kwargs": kwargs,
            "canonical": torch.rand(SIZE, SIZE),
            "input_size": SIZE,
        },
        path,
    )
    return path


def make_run(tmp: Path, kind: str = "cianet", shift: float | None = None, n: int = 10) -> tuple[Path, dict]:
    """A finished-looking training run folder over a chest data root; returns (run dir, name -> image)."""
    from cianet.config import save_config
    from cianet.run.checkpoints import checkpoint_payload, save_checkpoint
    from cianet.utils.atomic import atomic_write_json

    root, run = tmp / "data", tmp / f"run-{kind}-{shift}"
    images = write_chest_nih(root, n)
    align = str(write_alignment(tmp / "align.pt", tx=shift)) if shift is not None else None
    cfg = tiny_config(run, root, model__kind=kind, align__checkpoint=align)
    model = tiny_model(cfg)
    run.mkdir(parents=True)
    save_checkpoint(checkpoint_payload(model, cfg, epoch=3), run / "checkpoint.pt")
    save_config(cfg, run / "config.yaml")
    names = sorted(images)
    # Test images: the last two (one No Finding, one Nodule); the No Finding one must stay out of the bank.
    atomic_write_json(
        run / "split.json",
        {"description": "tiny", "train": names[:-2], "test": names[-2:], "box_supervised": [], "excluded": {}},
    )
    return run, images


def local_paths(obj, root: Path) -> list[str]:
    """Every string inside ``obj`` (nested dicts, lists, tuples) that names ``root`` or lies under it, or is any
    absolute path: what a checkpoint must not hold."""
    found = []
    if isinstance(obj, dict):
        for value in obj.values():
            found += local_paths(value, root)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found += local_paths(value, root)
    elif isinstance(obj, str) and (str(root) in obj or Path(obj).is_absolute()):
        found.append(obj)
    return found


def one_line(err: str, *words: str) -> str:
    """The one non-empty line of a command's stderr (no traceback), holding every word of ``words``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def predict_workers_in_process(keep: tuple[str, ...] = ()):
    """A stand-in for ``cianet.bench.speed.run_worker`` (for ``monkeypatch.setattr``) that runs the predict
    bench's workers in this process: each fresh interpreter costs an import of torch, ~5 s of CPU. Modes in
    ``keep`` still run in a fresh process, as `cianet bench` runs them. Peak memory is then this process's."""
    import json

    from cianet.bench import speed

    real = speed.run_worker

    def run_worker(spec: dict, timeout: float = 900) -> dict:
        if spec["mode"] in keep:
            return real(spec, timeout)
        return json.loads(json.dumps(speed.predict_worker(spec)))  # what the subprocess prints, read back

    return run_worker


def in_fork(fn):
    """``fn()`` in a child forked from this process: its return value, sent back pickled; its exception raised
    here as an AssertionError with the child's traceback. For work that leaves process-wide state behind:
    torch's dynamo ONNX exporter starts autograd's device threads, after which torch refuses to train in any
    child forked from this process, as tests/test_safety.py's kill tests do."""
    import multiprocessing
    import traceback

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            send.send((True, fn()))
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
            send.send((False, traceback.format_exc()))

    proc = ctx.Process(target=child)
    proc.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:
        proc.join()
        raise AssertionError(f"the forked child died (exit status {proc.exitcode})") from None
    proc.join()
    if not ok:
        raise AssertionError(f"in the forked child:\n{value}")
    return value
