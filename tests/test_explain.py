"""Grad-CAM: the right layer, maps aligned with the image, localisation scores with their chance levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.config import CAM_CELL_PX
from core.training.explain import cam_layer, cam_target, cams_and_probs, grad_cams, localisation, pick_for_gallery
from core.training.models import BACKBONES, build_model
from core.training.train import predict_probs


def test_resnets_use_the_last_block_of_layer4_for_gradcam_and_of_layer3_for_layercam():
    model, _ = build_model("resnet18", 2, "none")
    assert cam_layer(model, "resnet18") is model.layer4[-1]
    assert cam_layer(model, "resnet18", "gradcam") is model.layer4[-1]
    assert cam_layer(model, "resnet18", "layercam") is model.layer3[-1]
    with pytest.raises(ValueError, match="layercam"):
        cam_target("resnet18", "scorecam")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_each_layer_has_the_stride_the_localisation_scores_assume(backbone, method):
    """The pointing game's cell is the declared stride: a 64 px image must give a map of 64 / stride cells a side."""
    model, _ = build_model(backbone, 2, "none")
    path, stride = cam_target(backbone, method)
    seen = []
    handle = cam_layer(model, backbone, method).register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-2:]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64))
    handle.remove()
    assert tuple(seen[0]) == (64 // stride, 64 // stride), path
    assert stride == CAM_CELL_PX[method]  # what the pages' captions quote


class _Probe(nn.Module):
    """Its "last block" is the identity, and class 1's logit is the mean of that map: the CAM is the image itself."""

    def __init__(self) -> None:
        super().__init__()
        self.layer4 = nn.Sequential(nn.Identity())
        self.scale = nn.Parameter(torch.ones(1))  # pytorch-grad-cam reads the device from a parameter

    def forward(self, x):
        feat = self.layer4(x[:, :1])
        mean = feat.mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([-mean, mean], dim=1)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("one_pass", [False, True])
def test_cams_are_aligned_with_the_image_not_flipped_or_shifted(monkeypatch, method, flip, one_pass):
    """Also with the mirror average: a map of the mirrored image not mirrored back would light the patch's mirror."""
    import core.training.models as models

    probe = models.Backbone("head", "layer4.0", "layer4.0", cam_stride=1, fine_stride=1)
    monkeypatch.setitem(models.BACKBONES, "probe", probe)
    img = torch.zeros((1, 16, 16), dtype=torch.uint8)
    img[0, 2:5, 10:14] = 255  # an off-centre, asymmetric bright patch: top, right
    if one_pass:
        cams, _ = cams_and_probs(_Probe(), "probe", img, [1], torch.device("cpu"), method=method, flip=flip)
    else:
        cams = grad_cams(_Probe(), "probe", img, [1], torch.device("cpu"), method=method, flip=flip)
    assert cams.shape == (1, 16, 16)
    assert cams[0, 2:5, 10:14].min() > 0.9
    outside = np.ones((16, 16), bool)
    outside[2:5, 10:14] = False
    assert cams[0][outside].max() < 0.1


@pytest.mark.parametrize(("backbone", "method", "flip"), [(b, "gradcam", False) for b in sorted(BACKBONES)]
                         + [(b, "layercam", True) for b in sorted(BACKBONES)] + [("resnet18", "layercam", False), ("resnet18", "gradcam", True)])
@pytest.mark.slow
def test_the_one_pass_maps_and_probabilities_equal_the_librarys_and_a_plain_forward(backbone, method, flip):
    """cams_and_probs (the Predict page's path) differentiates only what follows the target layer; its maps must
    still be pytorch-grad-cam's, and its probabilities those of an ordinary forward pass; the model is left as it was."""
    torch.manual_seed(0)
    model, _ = build_model(backbone, 3, "none")
    images = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    targets = [2, 0, 1]
    maps, probs = cams_and_probs(model, backbone, images, targets, torch.device("cpu"), method=method, flip=flip, batch_size=2)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # no weight gradient was computed
    assert not cam_layer(model, backbone, method)._forward_hooks  # its hook is gone
    library = grad_cams(model, backbone, images, targets, torch.device("cpu"), method=method, flip=flip)
    np.testing.assert_allclose(maps, library, atol=1e-4)  # float dust of batching
    np.testing.assert_allclose(probs, predict_probs(model, images, torch.device("cpu")), atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_padding_the_last_batch_to_a_fixed_shape_changes_no_real_result(flip):
    """On a GPU every evaluation and heat-map batch is padded to one shape (cuDNN autotunes each new shape); the blank
    rows must not change a real image's map or probability, and the network must see only full batches."""
    from core.training.explain import cams_for_targets

    torch.manual_seed(0)
    model, _ = build_model("resnet18", 2, "none")
    images = torch.randint(0, 256, (7, 32, 32), dtype=torch.uint8)
    sets = [[1] * 7, [0, 1, 0, 1, 0, 1, 0]]
    cpu = torch.device("cpu")
    shapes = []
    handle = model.register_forward_hook(lambda _m, inputs, _out: shapes.append(len(inputs[0])))
    padded_maps, padded_probs = cams_for_targets(model, "resnet18", images, sets, cpu, flip=flip, batch_size=3, fixed=True)
    assert set(shapes) == {3 * (2 if flip else 1)}  # 3 + 3 + 1 images, every pass full
    shapes.clear()
    plain_maps, plain_probs = cams_for_targets(model, "resnet18", images, sets, cpu, flip=flip, batch_size=3, fixed=False)
    assert shapes[-1] == (2 if flip else 1)
    handle.remove()
    for padded, plain in zip(padded_maps, plain_maps):
        assert padded.shape == plain.shape == (7, 32, 32)
        np.testing.assert_allclose(padded, plain, atol=1e-5)
    np.testing.assert_allclose(padded_probs, plain_probs, atol=1e-6)
    np.testing.assert_allclose(predict_probs(model, images, cpu, batch_size=3, fixed=True),
                               predict_probs(model, images, cpu, batch_size=3, fixed=False), atol=1e-6)


def test_only_a_gpu_pads_its_batches():
    from core.training.runtime import fixed_batches, pad_rows

    assert fixed_batches(torch.device("cuda")) and not fixed_batches(torch.device("cpu"))
    x = torch.ones(2, 4, 4, dtype=torch.uint8)
    padded = pad_rows(x, 5)
    assert padded.shape == (5, 4, 4) and padded.dtype == torch.uint8 and padded[2:].eq(0).all() and padded[:2].eq(1).all()
    assert pad_rows(x, 2) is x


def test_localisation_scores_and_chance_levels():
    mask = np.zeros((64, 64), bool)
    mask[48:60, 40:56] = True  # inside the bottom-right cell of a 2 x 2 map (32 px cells)
    cam = np.zeros((64, 64))
    cam[50:58, 44:52] = 1.0
    inside = localisation(cam, mask, cell_px=32)
    assert inside["pointing_hit"] and inside["energy_in_mask"] == pytest.approx(1.0)
    assert inside["pointing_chance"] == pytest.approx(0.25)  # 1 of 4 cells points at the lesion
    assert inside["mask_fraction"] == pytest.approx(mask.mean())
    assert (inside["peak_y"], inside["peak_x"]) == (48, 48)
    far = np.zeros((64, 64))
    far[2:6, 2:6] = 1.0
    outside = localisation(far, mask, cell_px=32)
    assert not outside["pointing_hit"] and outside["energy_in_mask"] == 0.0
    # at pixel resolution (1 px cells) the pointing game is the classic one
    near = np.zeros((64, 64))
    near[47, 45] = 1.0  # one pixel above the mask: within half a cell? no (1 > 0.5)
    assert not localisation(near, mask, cell_px=1)["pointing_hit"]
    near[47, 45], near[50, 45] = 0.0, 1.0
    assert localisation(near, mask, cell_px=1)["pointing_hit"]


def test_a_capped_gallery_still_covers_every_outcome():
    outcomes = ["TP"] * 50 + ["TN"] * 40 + ["FP"] * 3 + ["FN"] * 2
    probs = np.linspace(0, 1, len(outcomes))
    chosen = pick_for_gallery(outcomes, probs, 8)
    assert len(chosen) == 8 and {outcomes[i] for i in chosen} == {"TP", "TN", "FP", "FN"}
    assert len(pick_for_gallery(outcomes, probs, 0)) == len(outcomes)


@pytest.mark.slow
def test_a_model_trained_on_demo_data_points_at_the_effusion_more_often_than_chance(tmp_path):
    """Fails if Grad-CAM were taken from the wrong place or misaligned: the score would fall to chance."""
    from core.config import preset
    from core.data.phantom import make_demo_dataset
    from core.training.engine import run_cross_validation
    from core.results.store import Store

    make_demo_dataset(tmp_path / "demo", n_per_class=60, size=128, seed=3)
    cfg = preset("quick").replace(data=str(tmp_path / "demo"), weights="none", folds=2, max_iterations=40, device="cpu")
    store = Store(tmp_path / "runs")
    run = store.run(run_cross_validation(cfg, store=store).run_id)
    assert run["pointing_game"] > run["pointing_chance"] + 0.1, (run["pointing_game"], run["pointing_chance"])
    assert run["energy_in_mask"] > run["energy_chance"]
