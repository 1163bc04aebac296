"""Backbones, weights and the head's learning-rate factor."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision import models as tvm

from core import CxrError
from core.training.models import BACKBONES, build_model, imagenet_cache_file, make_optimizer, param_groups


def test_head_learns_ten_times_faster_than_the_backbone():
    model, _ = build_model("resnet18", 2, "none")
    groups = param_groups(model, "resnet18", lr=1e-2, head_lr_factor=10.0, freeze_backbone=False)
    opt = make_optimizer("sgdm", groups, momentum=0.0, weight_decay=0.0)
    before = copy.deepcopy(model.state_dict())
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    after = model.state_dict()
    # plain SGD: delta = -lr * grad, so the effective lr of each tensor is measurable
    def effective_lr(name):
        g = grads[name]
        return float(((before[name] - after[name]) * g).sum() / (g * g).sum())

    assert effective_lr("fc.weight") == pytest.approx(0.1, rel=1e-4)
    assert effective_lr("fc.bias") == pytest.approx(0.1, rel=1e-4)
    assert effective_lr("layer4.1.conv2.weight") == pytest.approx(0.01, rel=1e-4)
    assert effective_lr("conv1.weight") == pytest.approx(0.01, rel=1e-4)


def test_frozen_backbone_trains_only_the_head():
    model, _ = build_model("resnet18", 3, "none")
    groups = param_groups(model, "resnet18", lr=1e-3, head_lr_factor=10.0, freeze_backbone=True)
    assert [g["name"] for g in groups] == ["head"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_gets_a_new_head_for_the_classes(name):
    model, report = build_model(name, 3, "none")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert report.used == "none"


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(CxrError, match="resnet50"):
        build_model("vgg11", 2, "none")


def _save_resnet18(path, **edits):
    state = tvm.resnet18(weights=None).state_dict()
    state.update(edits)
    torch.save(state, path)
    return state


def test_local_weights_file_loads_exactly(tmp_path):
    state = _save_resnet18(tmp_path / "w.pth")
    model, report = build_model("resnet18", 2, str(tmp_path / "w.pth"))
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert report.used.startswith("file:")


def test_weights_file_missing_and_unexpected_keys_are_reported_not_ignored(tmp_path):
    state = tvm.resnet18(weights=None).state_dict()
    del state["layer4.1.conv2.weight"]
    state["extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    _, report = build_model("resnet18", 2, str(tmp_path / "w.pth"))
    assert report.missing_keys == ["layer4.1.conv2.weight"]
    assert report.unexpected_keys == ["extra.weight"]
    assert "1 missing" in report.message and "1 unexpected" in report.message


def test_weights_for_another_architecture_are_refused(tmp_path):
    torch.save(tvm.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(CxrError, match="shape mismatch"):
        build_model("resnet18", 2, str(tmp_path / "r50.pth"))
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(CxrError, match="no key"):
        build_model("resnet18", 2, str(tmp_path / "foreign.pth"))


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/cxr_pwned",))


def test_a_pickle_with_code_in_a_weights_file_is_not_executed(tmp_path):
    import os
    import pickle

    if os.path.exists("/tmp/cxr_pwned"):
        os.remove("/tmp/cxr_pwned")
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"fc.weight": _Payload()}, fh)
    with pytest.raises(CxrError, match="not a plain state dict"):
        build_model("resnet18", 2, str(tmp_path / "evil.pth"))
    assert not os.path.exists("/tmp/cxr_pwned")


def test_imagenet_weights_come_from_the_torch_hub_cache(torch_home):
    # No download here: weights the test made stand in for torchvision's file in the hub cache.
    target = imagenet_cache_file("resnet18")
    assert str(target).startswith(str(torch_home))
    target.parent.mkdir(parents=True)
    state = tvm.resnet18(weights=None).state_dict()
    torch.save(state, target)
    for requested in ("imagenet", "auto"):
        model, report = build_model("resnet18", 2, requested)
        assert report.used == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
        assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_imagenet_unavailable_offline_stops_with_advice(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CxrError) as err:
        build_model("resnet50", 2, "imagenet")
    message = str(err.value)
    assert "not available offline" in message and str(imagenet_cache_file("resnet50")) in message
    assert "weights=none" in message


def test_auto_weights_train_from_scratch_and_say_so_when_not_cached(torch_home):
    _, report = build_model("resnet18", 2, "auto")
    assert report.used == "none (ImageNet weights not cached)"
    assert "from scratch" in report.message
