"""RunConfig: the paper preset is the study, overrides are typed and validated, errors say how to fix them."""

from __future__ import annotations

import json

import pytest

from core import CxrError
from core.config import PRESETS, RunConfig, apply_overrides, preset


def test_paper_preset_is_the_study_protocol():
    # ../shared/PAPER.md: ResNet-50, ImageNet, 224 px, SGD momentum 0.9, L2 1e-4, lr 1e-4 constant,
    # head factor 10, mini-batch 25, 250 iterations, max 64 epochs, 10 folds, augmentation p = 0.5.
    cfg = preset("paper")
    assert (cfg.backbone, cfg.weights, cfg.image_size) == ("resnet50", "imagenet", 224)
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.learning_rate) == ("sgdm", 0.9, 1e-4, 1e-4)
    assert (cfg.head_lr_factor, cfg.batch_size, cfg.max_iterations, cfg.max_epochs, cfg.folds) == (10.0, 25, 250, 64, 10)
    assert cfg.augment and cfg.aug_prob == 0.5 and not cfg.freeze_backbone
    assert (cfg.gradcam_method, cfg.gradcam_flip) == ("gradcam", False)  # the study's Grad-CAM on the last block


def test_quick_preset_trains_offline_with_a_small_model():
    cfg = preset("quick")
    assert cfg.weights == "auto"  # ImageNet when cached, else from scratch
    assert cfg.backbone == "resnet18" and cfg.image_size <= 128
    # at 64 px Grad-CAM's map is 2 x 2; LayerCAM's 4 x 4 map, mirror-averaged, is the one that points (measured)
    assert (cfg.gradcam_method, cfg.gradcam_flip) == ("layercam", True)


def test_a_run_stored_before_the_heat_map_method_existed_reads_as_the_grad_cam_it_was_made_with():
    stored = json.loads(RunConfig().to_json())
    del stored["gradcam_method"], stored["gradcam_flip"]
    cfg = RunConfig.from_dict(stored)
    assert (cfg.gradcam_method, cfg.gradcam_flip) == ("gradcam", False)


def test_every_preset_is_valid():
    for name in PRESETS:
        assert isinstance(preset(name), RunConfig)


@pytest.mark.parametrize(
    "assignment, field, value",
    [
        ("max_iterations=500", "max_iterations", 500),
        ("learning_rate=3e-4", "learning_rate", 3e-4),
        ("augment=false", "augment", False),
        ("backbone=resnet18", "backbone", "resnet18"),
        ("weights=/tmp/w.pth", "weights", "/tmp/w.pth"),
    ],
)
def test_set_parses_values_by_field_type(assignment, field, value):
    assert getattr(apply_overrides(preset("paper"), [assignment]), field) == value


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("max_iteration=5", "Did you mean 'max_iterations'"),
        ("learning_rate=-1", "learning_rate must be greater than 0"),
        ("batch_size=0", "batch_size must be at least 1"),
        ("batch_size=ten", "batch_size must be a whole number"),
        ("backbone=vgg", "backbone must be one of"),
        ("folds", "expects field=value"),
    ],
)
def test_bad_overrides_say_what_to_do(assignment, message):
    with pytest.raises(CxrError, match=message):
        apply_overrides(preset("paper"), [assignment])


def test_config_round_trips_through_json():
    cfg = apply_overrides(preset("quick"), ["seed=7", "data=/x"])
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_a_run_nobody_named_is_named_by_its_preset_and_what_differs_from_it():
    from core.config import auto_name, preset

    quick = preset("quick")
    assert auto_name(quick, "quick") == "quick"
    assert auto_name(quick.replace(learning_rate=1e-4, seed=1), "quick") == "quick · lr 1e-4 · seed 1"
    assert auto_name(quick.replace(image_size=128, augment=True, backbone="resnet50"), "quick") == "quick · 128 px · resnet50 · augment on"
    # the data set and settings that change no result are not part of a name
    assert auto_name(quick.replace(data="/x", save_models=True, device="cpu", parallel_folds=2), "quick") == "quick"
    assert auto_name(RunConfig(max_iterations=500), "") == "custom · iters 500"
    # a sweep names only what it sweeps, even a value equal to the preset's
    assert auto_name(quick.replace(learning_rate=1e-3, seed=3), "quick", among=["learning_rate"]) == "quick · lr 1e-3"


def test_settings_that_change_no_result_are_not_differences_between_runs():
    from core.config import RESULT_NEUTRAL

    assert {"save_models", "device", "num_threads", "cuda_graphs"} <= RESULT_NEUTRAL
    assert not {"learning_rate", "seed", "folds", "image_size", "precision", "gradcam_max"} & RESULT_NEUTRAL


@pytest.mark.slow
def test_the_disk_cost_shown_before_a_run_uses_the_backbones_true_size():
    from core.config import BACKBONE_MILLION_PARAMS, BACKBONES
    from core.training.models import build_model

    for name in BACKBONES:
        model, _ = build_model(name, 2, "none")
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(BACKBONE_MILLION_PARAMS[name], abs=0.01), name


def test_adam_ignores_the_momentum_setting_and_sgdm_reads_it():
    from core.config import OPTIMIZERS, ignored_by_optimizer

    assert ignored_by_optimizer("adam") == {"momentum"} and ignored_by_optimizer("sgdm") == set()
    assert set(OPTIMIZERS) == {"sgdm", "adam"}  # a new optimiser must say here what it ignores


def test_a_fold_reserves_one_gpu_where_the_cluster_has_them_or_the_fraction_asked_for():
    from core.training.ray_executor import gpus_per_fold

    assert gpus_per_fold(RunConfig(), cluster_gpus=8) == 1.0  # -1: one GPU per fold on a GPU cluster
    assert gpus_per_fold(RunConfig(), cluster_gpus=0) == 0.0  # and none on a CPU-only one
    assert gpus_per_fold(RunConfig(gpus_per_fold=0.5), cluster_gpus=1) == 0.5  # two folds share a GPU
    with pytest.raises(CxrError, match="gpus_per_fold"):
        RunConfig(gpus_per_fold=-2)
