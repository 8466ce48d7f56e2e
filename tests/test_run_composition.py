"""What a run's loaders feed the model: declared batch composition and the phantom's oracle twins."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import tiny_config, write_tiny_nih


def _loaders(cfg):
    from cianet.run.loaders import make_loaders
    from cianet.run.protocol import build_run_data

    data = build_run_data(cfg)
    return data, make_loaders(cfg, data)


def test_every_training_batch_holds_its_box_share(tmp_path):
    root = write_tiny_nih(tmp_path / "nih", n_patients=40)
    cfg = tiny_config(tmp_path / "run", root, optim__box_share=0.5, model__kind="baseline")
    data, (train_ds, train_loader, _, _) = _loaders(cfg)
    assert 0 < len(data.box_names) < len(data.train) / 2  # boxes are a minority of the training list
    for epoch in (0, 1):
        batches = list(train_loader(epoch))
        assert batches
        for batch in batches:
            names = [train_ds.names[i] for i in batch["index"].tolist()]
            assert sum(n in data.box_names for n in names) >= 4  # half of 8
            assert float(batch["box_mask"].sum(1).gt(0).sum()) >= 4  # and their boxes supervise
    # same seed and epoch, same batches (a resumed run sees what an uninterrupted one saw)
    first = [b["index"].tolist() for b in train_loader(1)]
    assert first == [b["index"].tolist() for b in _loaders(cfg)[1][1](1)]


@pytest.mark.slow
def test_oracle_pairs_every_image_with_its_twin(tmp_path):
    from PIL import Image

    from cianet.errors import MissingPathError
    from cianet.phantom.generator import TWINS_DIR, generate_dataset

    root = tmp_path / "phantom"
    generate_dataset(root, n_images=40, size=64, seed=2, workers=1, progress=False, twins=True)
    cfg = tiny_config(tmp_path / "run", root, negatives__strategy="oracle")
    data, (train_ds, train_loader, test_ds, _) = _loaders(cfg)
    checked = 0
    for ds in (train_ds, test_ds):
        ds.set_epoch(0)
        for i, name in enumerate(ds.names):
            item = ds[i]
            twin = root / TWINS_DIR / name  # No Finding images too: the oracle reads no label
            want = np.asarray(Image.open(twin), np.float32) / 255.0
            np.testing.assert_allclose(item["neg"][0].numpy(), want, atol=1 / 255)
            assert not np.array_equal(item["neg"].numpy(), item["image"].numpy())  # never the image itself
            checked += not data.labels[name]
    assert checked > 5
    (root / TWINS_DIR).rename(root / "elsewhere")
    with pytest.raises(MissingPathError, match="synth --twins"):
        _loaders(cfg)
