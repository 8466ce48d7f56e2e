"""Backbones: input convention, trunk shapes, offline ImageNet weights handling."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from cianet.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cached_weights_path,
    gray_to_input,
    pretrained_weights,
    resnet_trunk,
)
from cianet.models.cianet import CIANet


def test_gray_to_input_matches_formula():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 4, 5)
    y = gray_to_input(x)
    assert y.shape == (2, 3, 4, 5)
    for c in range(3):
        for b in range(2):
            expected = (x[b, 0].double() - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
            torch.testing.assert_close(y[b, c].double(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        gray_to_input(y)


@pytest.mark.slow
@pytest.mark.parametrize("name,c4,c5", [("resnet18", 256, 512), ("resnet50", 1024, 2048)])
def test_trunk_shapes(name, c4, c5):
    x = torch.randn(1, 3, 64, 96)
    t4, ch4 = resnet_trunk(name, upto="c4")
    t5, ch5 = resnet_trunk(name, upto="c5")
    assert (ch4, ch5) == (c4, c5)
    with torch.no_grad():
        assert t4.eval()(x).shape == (1, c4, 4, 6)
        assert t5.eval()(x).shape == (1, c5, 2, 3)


@pytest.mark.slow  # builds torchvision's ResNets and ours (~3 s)
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])  # one of each block kind; the depths: next test
def test_our_resnets_are_torchvisions_to_the_bit(name):
    """Same parameter names, same seeded random weights, same outputs (train and eval mode), and the generator
    left in the same state: saved runs, bundles and ImageNet weights load, and seeded runs retrain the same."""
    import torchvision.models as tvm

    from cianet.models.resnet import resnet

    torch.manual_seed(3)
    ref, after_ref = getattr(tvm, name)(weights=None), torch.rand(3)
    torch.manual_seed(3)
    ours, after_ours = resnet(name), torch.rand(3)
    assert torch.equal(after_ref, after_ours)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 64, 64)
    for train in (True, False):
        ref.train(train), ours.train(train)
        with torch.no_grad():
            assert torch.equal(ref(x), ours(x)), train
    assert torch.equal(ref.layer2[0].bn1.running_mean, ours.layer2[0].bn1.running_mean)  # train mode updated both


@pytest.mark.slow  # imports torchvision (and with it torch._dynamo: seconds)
def test_every_resnet_has_torchvisions_tensors():
    import torchvision.models as tvm

    from cianet.models.backbones import no_fill_on_meta
    from cianet.models.resnet import ARCHITECTURES, resnet

    with torch.device("meta"), no_fill_on_meta():  # names and shapes only: no values drawn
        for name in ARCHITECTURES:
            ref, ours = getattr(tvm, name)(weights=None).state_dict(), resnet(name).state_dict()
            assert [(k, v.shape) for k, v in ref.items()] == [(k, v.shape) for k, v in ours.items()], name


def test_building_a_network_imports_no_torchvision(monkeypatch):
    """torchvision's import pulls in torch._dynamo (seconds per process): training, prediction and the CLI
    build their ResNets (cianet.models.resnet) and the loss's VGG-16 blocks without it; only ImageNet weights
    (torchvision's weights API) import it. A meta-device build (loading saved weights) skips every init fill: a
    meta normal_ would import it too."""
    import importlib
    import sys

    from cianet.models.cianet import CIANet
    from cianet.run.networks import with_weights

    for name in ("cianet.cli", "cianet.training.loop", "cianet.inference.predictor", "cianet.evaluation.evaluate"):
        importlib.import_module(name)

    def from_torchvision(value) -> bool:
        return any(str(getattr(value, a, "") or "").startswith("torchvision") for a in ("__name__", "__module__"))

    held = [
        f"{name}.{key}"
        for name, module in list(sys.modules.items())
        if name.split(".")[0] == "cianet" and module is not None
        for key, value in vars(module).items()
        if from_torchvision(value)
    ]
    assert held == []  # no module of the package imports torchvision when it is imported
    # ... nor while a network is built, randomly or on the meta device to take saved weights: either import fails now
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torch._dynamo", None)

    def build():
        return CIANet(num_classes=2, backbone="resnet18", pretrained="none", head_channels=16)

    with_weights(build, build().state_dict())


def test_unknown_backbone_raises():
    with pytest.raises(ValueError, match="resnet7"):
        resnet_trunk("resnet7")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub dir and no network: a download attempt fails as an offline machine's does."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    attempts = []

    def no_network(url, *a, **k):
        attempts.append(url)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return attempts


@pytest.mark.slow  # imports torchvision for its weight tables (and with it torch._dynamo: seconds)
@pytest.mark.parametrize("spec", ["imagenet", True])
def test_imagenet_without_cache_or_network_is_an_error_that_says_what_to_do(empty_hub, spec):
    from cianet.errors import MissingPathError

    with pytest.raises(MissingPathError) as err:
        CIANet(num_classes=2, backbone="resnet18", pretrained=spec)
    msg = str(err.value)
    assert "resnet18" in msg and "--pretrained none" in msg and "--pretrained PATH" in msg and "\n" not in msg
    assert str(cached_weights_path(torchvision_entry("resnet18"))) in msg and "Name or service not known" in msg
    assert len(empty_hub) == 1  # one download was tried (through torchvision's weights API), once


def torchvision_entry(name):
    import torchvision.models as tvm

    return {"resnet18": tvm.ResNet18_Weights, "resnet34": tvm.ResNet34_Weights}[name].IMAGENET1K_V1


@pytest.mark.slow
def test_imagenet_read_from_local_cache_without_download(empty_hub):
    import torchvision.models as tvm

    torch.manual_seed(1)
    ref = tvm.resnet18(weights=None)
    path = cached_weights_path(torchvision_entry("resnet18"))
    os.makedirs(path.parent, exist_ok=True)
    torch.save(ref.state_dict(), path)
    sd = pretrained_weights("resnet18", "imagenet")
    assert sd is not None and not empty_hub
    trunk, _ = resnet_trunk("resnet18", pretrained="imagenet")
    torch.testing.assert_close(trunk.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert not hasattr(trunk, "fc")
    path.write_bytes(b"torn")  # a broken cache file is named, not silently replaced by random weights
    with pytest.raises(ValueError, match="unreadable"):
        pretrained_weights("resnet18", "imagenet")


@pytest.mark.slow  # three ResNets built (~3 s)
def test_state_dict_file_and_none(empty_hub, tmp_path):
    import torchvision.models as tvm

    from cianet.errors import InputError, MissingPathError

    torch.manual_seed(2)
    ref = tvm.resnet18(weights=None)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}  # a trunk without classifier
    torch.save(state, tmp_path / "trunk.pt")
    model = CIANet(num_classes=2, backbone="resnet18", pretrained=str(tmp_path / "trunk.pt"))
    torch.testing.assert_close(model.upper.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    torch.testing.assert_close(model.attn_trunk.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "trunk.safetensors"))
    sd = pretrained_weights("resnet18", tmp_path / "trunk.safetensors")
    torch.testing.assert_close(sd["layer1.0.conv1.weight"], ref.layer1[0].conv1.weight)
    with pytest.raises(MissingPathError, match="absent.pt"):
        pretrained_weights("resnet18", tmp_path / "absent.pt")
    torch.save(tvm.resnet34(weights=None).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(InputError, match="r34.pt"):
        pretrained_weights("resnet18", tmp_path / "r34.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(InputError, match="junk.pt: not a readable state-dict file"):
        pretrained_weights("resnet18", tmp_path / "junk.pt")
    assert pretrained_weights("resnet18", "none") is None and pretrained_weights("resnet18", False) is None
    assert not empty_hub


def test_pretrained_config_values_and_old_booleans(tmp_path):
    from cianet.config import apply_overrides, config_from_dict, load_config

    assert load_config("paper").model.pretrained == "imagenet" and load_config("tiny").align.pretrained == "none"
    old = config_from_dict({"model": {"pretrained": False}, "align": {"pretrained": True}})  # a run saved earlier
    assert (old.model.pretrained, old.align.pretrained) == ("none", "imagenet")
    cfg = apply_overrides(load_config("tiny"), ["model.pretrained=/weights/r18.pt", "align.pretrained=true"])
    assert (cfg.model.pretrained, cfg.align.pretrained) == ("/weights/r18.pt", "imagenet")


@pytest.mark.slow  # imports torchvision for its weight tables (and with it torch._dynamo: seconds)
def test_train_commands_refuse_unavailable_weights_before_reading_data(empty_hub, tmp_path, capsys):
    from cianet.cli import main

    rc = main(
        [
            "train",
            "--config",
            "tiny",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--pretrained",
            "imagenet",
            "--set",
            "model.width=64",  # the width ImageNet's weights fit
            "--no-progress",
        ]
    )
    assert rc == 2 and "--pretrained none" in capsys.readouterr().err and len(empty_hub) == 1
    rc = main(
        [
            "train-align",
            "--config",
            "tiny",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "al"),
            "--pretrained",
            str(tmp_path / "nope.pt"),
            "--set",
            "align.width=64",  # the width a state-dict file fits
            "--no-progress",
        ]
    )
    assert rc == 2 and f"--pretrained {tmp_path / 'nope.pt'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "al").exists()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_narrow_trunks_scale_every_stage(name):
    """model.width: a width-16 trunk has a quarter of the channels at every stage, the same depth and strides,
    and the channel count the models build their heads from."""
    from cianet.models.backbones import trunk_channels
    from cianet.models.resnet import resnet

    standard, narrow = resnet(name), resnet(name, width=16)
    assert len(list(standard.modules())) == len(list(narrow.modules()))
    for (key, a), (key_n, b) in zip(standard.state_dict().items(), narrow.state_dict().items()):
        assert key == key_n
        if a.ndim == 4 and key != "conv1.weight":  # both channel axes scale by 16/64
            assert b.shape == (a.shape[0] // 4, a.shape[1] // 4, *a.shape[2:]), key
    x = torch.randn(1, 3, 64, 64)
    for upto, side in (("c3", 8), ("c4", 4), ("c5", 2)):
        trunk, channels = resnet_trunk(name, upto=upto, width=16)
        assert channels == trunk_channels(name, upto) // 4 == trunk_channels(name, upto, 16)
        with torch.no_grad():
            assert trunk.eval()(x).shape == (1, channels, side, side)


def test_narrow_models_refuse_initial_weights_and_train_from_config(empty_hub, tmp_path, capsys):
    from cianet.config import apply_overrides, load_config
    from cianet.errors import InputError
    from cianet.run.networks import build_network, network_from_weights

    with pytest.raises(InputError, match="model.width 32 needs pretrained none"):
        CIANet(backbone="resnet18", pretrained="imagenet", width=32)
    cfg = apply_overrides(load_config("tiny"), ["model.width=16", "data.image_size=64"])
    net = build_network(cfg)
    assert net.attn_conv.in_channels == 32 and net.head.conv.in_channels == 64  # C3 and C4 of a width-16 ResNet-18
    rebuilt, _ = network_from_weights(dataclasses.asdict(cfg), net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), rebuilt.state_dict().values()))
    assert_narrow_width_refused("train", "model.width", tmp_path / "run", empty_hub, capsys)


def assert_narrow_width_refused(command, key, out, empty_hub, capsys):
    """``key`` rejects a width below 4; ``command`` refuses a narrow trunk with ImageNet weights before any
    download or data (exit 2, naming the key)."""
    from cianet.cli import main
    from cianet.config import apply_overrides, load_config
    from cianet.errors import UsageError

    with pytest.raises(UsageError, match=key):
        apply_overrides(load_config("tiny"), [f"{key}=2"])
    argv = [command, "--config", "tiny", "--data-root", str(out.parent), "--out", str(out)]
    rc = main([*argv, "--pretrained", "imagenet", "--set", f"{key}=32", "--no-progress"])
    assert rc == 2 and f"{key} 32 needs pretrained none" in capsys.readouterr().err
    assert not empty_hub and not out.exists()


def test_narrow_alignment_net_refuses_initial_weights_and_reloads(empty_hub, tmp_path, capsys):
    """align.width: the regressor's trunk narrows like model.width, starts at its centre, reloads from its
    checkpoint arguments; a checkpoint written before the option (no width) is the standard network."""
    from cianet.config import apply_overrides, load_config
    from cianet.errors import InputError
    from cianet.models.alignment import AlignmentNet
    from cianet.run.networks import alignment_from_weights, alignment_net_kwargs, build_alignment_net

    with pytest.raises(InputError, match="align.width 32 needs pretrained none"):
        AlignmentNet(pretrained="imagenet", width=32)
    cfg = apply_overrides(load_config("tiny"), ["align.width=16"])
    net = build_alignment_net(cfg)
    kwargs = alignment_net_kwargs(cfg)
    assert kwargs["width"] == 16 and net.fc.in_features == 128  # C5 of a width-16 ResNet-18: 512 / 4
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.predict_params(x), torch.tensor([net.center] * 3))  # zero-initialized head
    reloaded = alignment_from_weights(kwargs, net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reloaded.state_dict().values()))
    old = {k: v for k, v in kwargs.items() if k != "width"}
    assert AlignmentNet(pretrained=False, **old).fc.in_features == 512
    assert_narrow_width_refused("train-align", "align.width", tmp_path / "al", empty_hub, capsys)
