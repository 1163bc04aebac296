"""The training loop: per-image augmentation, the iteration budget, and a held-out fold that cannot influence training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.training.augment import AugmentSpec, affine_matrices, augment_batch, sample_params
from core.training.models import build_model
from core.config import budget
from core.training.train import train_fold


def test_augmentation_parameters_are_drawn_per_image_with_probability_p():
    params = sample_params(20000, AugmentSpec(prob=0.5), torch.Generator().manual_seed(0))
    for key in ("hflip", "vflip"):
        assert params[key].float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (params["scale"] != 1).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (params["crop"] != 1).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (params["shift"].abs().sum(1) > 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert params["scale"].min() >= 0.9 and params["scale"].max() <= 1.1
    assert params["shift"].abs().max() <= 0.1
    # the crop window stays inside the image
    assert (params["crop_offset"].abs() <= (1 - params["crop"])[:, None] + 1e-6).all()


def test_images_in_one_batch_get_different_transforms():
    x = torch.rand(1, 1, 32, 32).expand(16, -1, -1, -1).contiguous()
    out = augment_batch(x, AugmentSpec(prob=0.5), torch.Generator().manual_seed(1))
    distinct = {tuple(o.flatten()[:50].round(decimals=4).tolist()) for o in out}
    assert len(distinct) > 4


def test_probability_zero_is_the_identity_and_flip_flips():
    x = torch.rand(3, 1, 16, 16)
    assert torch.allclose(augment_batch(x, AugmentSpec(prob=0.0), torch.Generator()), x, atol=1e-5)
    params = {k: v for k, v in sample_params(3, AugmentSpec(prob=0.0), torch.Generator()).items()}
    params["hflip"] = torch.ones(3, dtype=torch.bool)
    grid = torch.nn.functional.affine_grid(affine_matrices(params), [3, 1, 16, 16], align_corners=False)
    flipped = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_budget_counts_iterations_with_matlab_epochs(tiny_cfg):
    assert budget(tiny_cfg.replace(max_iterations=250, batch_size=25), 900) == (250, 36)
    assert budget(tiny_cfg.replace(max_iterations=0, max_epochs=2, batch_size=25), 110) == (8, 4)


def _train(cfg, x_test, y_test):
    g = torch.Generator().manual_seed(0)
    x_train = (torch.rand(40, 32, 32, generator=g) * 255).to(torch.uint8)
    y_train = torch.arange(40) % 2
    torch.manual_seed(0)
    model, _ = build_model("resnet18", 2, "none")
    return train_fold(cfg, model, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                      fold=0, device=torch.device("cpu"))


@pytest.mark.slow
def test_the_held_out_fold_does_not_influence_training(tiny_cfg):
    cfg = tiny_cfg.replace(max_iterations=6, eval_every=1)
    g = torch.Generator().manual_seed(5)
    test_a = (torch.rand(10, 32, 32, generator=g) * 255).to(torch.uint8)
    test_b = 255 - test_a[:7]
    a = _train(cfg, test_a, torch.arange(10) % 2)
    b = _train(cfg, test_b, torch.ones(7, dtype=torch.long))
    train_a = [r["loss"] for r in a.curve if r["phase"] == "train"]
    train_b = [r["loss"] for r in b.curve if r["phase"] == "train"]
    assert train_a == train_b
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the held-out curve was really drawn (every iteration but the last, plus the final evaluation)
    assert [r["iteration"] for r in a.curve if r["phase"] == "heldout"] == [1, 2, 3, 4, 5, 6]
    assert a.test_probs.shape == (10, 2) and np.allclose(a.test_probs.sum(1), 1)


def test_every_iteration_is_recorded(tiny_cfg):
    out = _train(tiny_cfg.replace(max_iterations=5, eval_every=100), torch.zeros(4, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    rows = [r for r in out.curve if r["phase"] == "train"]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rows)
