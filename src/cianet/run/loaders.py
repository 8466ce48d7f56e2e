"""The data loaders of a run. Building them reads the data set and the run's ``pairs.json``; it writes nothing."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from cianet.config import ORACLE, Config
from cianet.data.batches import box_share_batches
from cianet.run.datasets import ImageSource, PairedXrayDataset, collate
from cianet.run.pairing import pair_negatives


def image_source(cfg: Config, index):
    """The run's images at ``cfg.data.image_size``: from the cache when it has them, else from their files.

    With ``negatives.strategy=oracle`` the phantom's twins are readable too, as ``"twin:NAME"``."""
    paths = {r.name: r.path for r in index.records}
    if cfg.negatives.strategy == ORACLE and cfg.model.kind != "baseline":
        # lazy: tests replace cianet.run.pairing.twin_paths
        from cianet.run.pairing import twin_paths

        paths.update(twin_paths(cfg.data.data_root))
    return ImageSource(cfg.data.image_size, cfg.data.cache, paths)


def make_loaders(cfg: Config, data, rank: int = 0, world: int = 1, pairing=None):
    """Datasets and loaders for a run: (train_ds, train_loader_factory(epoch), test_ds, test_loader).

    ``pairing`` (:func:`cianet.run.pairing.pair_negatives`) is computed here when not given.
    """
    source = image_source(cfg, data.index)
    if pairing is None:
        pairing = pair_negatives(cfg, data, source)
    labels, boxes = data.labels, data.boxes
    train_ds = PairedXrayDataset(
        data.train,
        labels,
        boxes,
        source,
        data.box_names,
        None,
        pairing.canonical,
        pair_fn=pairing.train,
        label_set=data.label_set,
    )
    test_names = list(data.test) + list(data.auc_extra)
    test_ds = PairedXrayDataset(
        test_names, labels, boxes, source, set(data.test), pairing.test(0), pairing.canonical, label_set=data.label_set
    )

    def train_loader(epoch: int):
        train_ds.set_epoch(epoch)
        if cfg.optim.box_share > 0:  # declared batch composition (cianet.data.batches)
            is_box = [n in data.box_names for n in train_ds.names]
            batches = box_share_batches(
                is_box,
                cfg.optim.batch_size,
                cfg.optim.box_share,
                cfg.run.seed,
                epoch,
                drop_last=len(train_ds) > cfg.optim.batch_size,
            )
            return DataLoader(
                train_ds,
                batch_sampler=batches[rank::world],
                num_workers=cfg.data.workers,
                collate_fn=collate,
                pin_memory=torch.cuda.is_available(),
            )
        if world > 1:
            sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.run.seed)
            sampler.set_epoch(epoch)
            kw = {"sampler": sampler}
        else:
            g = torch.Generator().manual_seed(cfg.run.seed * 1000 + epoch)  # same order after a resume
            kw = {"shuffle": True, "generator": g}
        return DataLoader(
            train_ds,
            batch_size=cfg.optim.batch_size,
            num_workers=cfg.data.workers,
            collate_fn=collate,
            drop_last=len(train_ds) > cfg.optim.batch_size,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            **kw,
        )

    test_loader = DataLoader(
        test_ds,
        batch_size=max(1, cfg.optim.batch_size),
        shuffle=False,
        num_workers=cfg.data.workers,
        collate_fn=collate,
    )
    return train_ds, train_loader, test_ds, test_loader


def make_val_loader(cfg: Config, data, pairing, source=None):
    """(val_ds, val_loader) over the run's validation images (``data.val``), or (None, None) when it has none.

    Scored like the test images (all boxes of a validation image count, negatives from ``pairing.test``), so
    that validation and test metrics are the same measurement on disjoint images.
    """
    if not data.val:
        return None, None
    source = source if source is not None else image_source(cfg, data.index)
    val_ds = PairedXrayDataset(
        list(data.val),
        data.labels,
        data.boxes,
        source,
        set(data.val),
        pairing.test(0),
        pairing.canonical,
        label_set=data.label_set,
    )
    loader = DataLoader(
        val_ds, batch_size=max(1, cfg.optim.batch_size), shuffle=False, num_workers=cfg.data.workers, collate_fn=collate
    )
    return val_ds, loader
