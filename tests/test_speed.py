"""Speed settings that must not change the science: bf16 vs fp32, memory format, torch.compile fallback,
threads, data resident on the device, and per-image augmentation drawn with exactly the study's distribution."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from core.training.augment import AugmentSpec, augment_batch, sample_params
from core.training.models import build_model
from core.training.runtime import Execution, physical_cores, resident_pixels, resolve, setup_device
from core.training.train import train_fold

from conftest import tiny_config


def _separable(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 1 has a brighter lower third: learnable in a handful of iterations from scratch."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = g.integers(20, 120, (n, size, size)).astype(np.uint8)
    x[y == 1, size * 2 // 3 :] += g.integers(60, 100, (int((y == 1).sum()), 1, 1)).astype(np.uint8)
    return torch.from_numpy(x), torch.from_numpy(y).long()


# the CPU always, the GPU too where there is one (bench/gpu_check.sh runs these on an H200)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _fit(cfg, seed=0):
    x_train, y_train = _separable(64, 0)
    x_test, y_test = _separable(40, 1)
    torch.manual_seed(seed)
    model, _ = build_model("resnet18", 2, "none")
    out = train_fold(cfg, model, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                     fold=0, device=torch.device(cfg.device))
    return out, roc_auc_score(y_test.numpy(), out.test_probs[:, 1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.slow
def test_bf16_autocast_agrees_with_fp32_within_the_stated_auc_tolerance(device):
    """Same seed, same batches, same augmentation: fp32 and bf16 autocast (CPU) agree on held-out AUC within 0.05.

    Tolerance (also in docs/benchmarks.md): |AUC_bf16 - AUC_fp32| <= 0.05 on this tiny separable task
    (ResNet-18 from scratch, 32 px, 6 iterations of 6 images, 40 held-out images), and the first
    iteration's loss, before the trajectories can drift apart, within 5 % (bf16 keeps 8 bits of mantissa).
    Measured: AUC 1.000 vs 1.000 (seeds 0, 1) and 0.993 vs 1.000 (seed 2) on a CPU without bf16 instructions,
    first losses within 2 %; on a CPU with AVX512-BF16 (real bf16 arithmetic) AUC 1.000 vs 1.000 for seeds
    0-3 and first losses 3.0, 1.8, 0.06 and 0.2 % apart.
    """
    cfg = tiny_config(max_iterations=6, batch_size=6, eval_every=100, augment=True, device=device)
    fp32, auc32 = _fit(cfg.replace(precision="fp32"))
    bf16, auc16 = _fit(cfg.replace(precision="bf16"))
    assert auc32 >= 0.9 and auc16 >= 0.9
    assert abs(auc16 - auc32) <= 0.05
    first32, first16 = fp32.curve[0]["loss"], bf16.curve[0]["loss"]
    assert first16 == pytest.approx(first32, rel=0.05)
    assert first16 != first32  # bf16 really ran
    assert fp32.model.fc.weight.dtype == bf16.model.fc.weight.dtype == torch.float32  # autocast: weights stay fp32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.slow
def test_channels_last_computes_the_same_forward_pass_and_reaches_the_same_auc(device):
    """NHWC changes only the order of float sums: the first loss agrees to 1e-4. Later iterations drift
    further apart than that (measured: BatchNorm over 6 images at a 1 x 1 map cancels gradients, so
    early-layer gradients differ by up to 1 %), so the end point is compared by AUC, as for bf16."""
    cfg = tiny_config(max_iterations=6, batch_size=6, eval_every=100, augment=True, device=device)
    nchw, auc_nchw = _fit(cfg.replace(channels_last="off"))
    nhwc, auc_nhwc = _fit(cfg.replace(channels_last="on"))
    assert nhwc.curve[0]["loss"] == pytest.approx(nchw.curve[0]["loss"], rel=1e-4)
    assert auc_nchw >= 0.9 and abs(auc_nhwc - auc_nchw) <= 0.05
    assert nhwc.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_failing_torch_compile_falls_back_to_eager_with_identical_results(monkeypatch, caplog):
    cfg = tiny_config(max_iterations=3, batch_size=6, eval_every=100, augment=False)
    eager, _ = _fit(cfg)

    def broken_compile(model, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("inductor: no working C++ compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="core.training.runtime"):
        compiled, _ = _fit(cfg.replace(torch_compile=True))
    assert "torch.compile failed" in caplog.text
    assert [r["loss"] for r in compiled.curve] == [r["loss"] for r in eager.curve]


def test_compiling_uses_cuda_graphs_on_a_gpu_and_the_default_mode_on_the_cpu(monkeypatch):
    from core.training.runtime import maybe_compile

    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode="default": modes.append(mode) or model)
    for device in ("cuda", "cpu"):
        ex = resolve(torch.device(device), "fp32", "off", torch_compile=True)
        maybe_compile(torch.nn.Identity(), ex.compile, ex.compile_mode)
    assert modes == ["reduce-overhead", "default"]


def test_auto_settings_resolve_per_device(monkeypatch):
    import core.training.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    cpu = resolve(torch.device("cpu"))
    assert cpu.amp_dtype is None and not cpu.channels_last and cpu.precision == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)  # AVX512-BF16 or AMX: bf16 is the faster one
    assert resolve(torch.device("cpu")).precision == "bf16" and resolve(torch.device("cpu"), "fp32").precision == "fp32"
    assert resolve(torch.device("cpu")).channels_last  # oneDNN's bf16 kernels want NHWC
    assert not resolve(torch.device("cpu"), "fp32").channels_last  # in fp32 NHWC gave no consistent gain
    assert resolve(torch.device("cuda"), "fp32").channels_last and not resolve(torch.device("cpu"), "bf16", "off").channels_last
    assert resolve(torch.device("cpu"), "bf16", "on").amp_dtype == torch.bfloat16
    assert resolve(torch.device("cpu"), "bf16", "on").describe() == "bf16, channels_last"
    with pytest.raises(ValueError):
        resolve(torch.device("cpu"), "fp16")


def test_native_bf16_is_read_from_the_cpu_flags():
    from core.training.runtime import has_bf16_flags

    flags = "flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw"
    assert not has_bf16_flags(flags)  # AVX-512 alone only emulates bf16 (20x slower than fp32, measured)
    assert has_bf16_flags(flags + " avx512_bf16 avx512_vnni")
    assert has_bf16_flags(flags + " amx_tile amx_bf16")
    assert not has_bf16_flags("flags : avx512_bf16x")  # whole flags only


def test_threads_default_to_the_physical_cores():
    before = torch.get_num_threads()
    try:
        assert setup_device(torch.device("cpu"), 0) == physical_cores() == torch.get_num_threads()
        assert setup_device(torch.device("cpu"), 1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_the_data_set_is_transferred_once_per_run():
    class Prepared:
        pixels = np.zeros((5, 8, 8), np.uint8)

    data = Prepared()
    first = resident_pixels(data, torch.device("cpu"))
    assert first is resident_pixels(data, torch.device("cpu")) and first.dtype == torch.uint8


def test_predict_in_bf16_returns_float_probabilities():
    from core.training.train import predict_probs

    torch.manual_seed(0)
    model, _ = build_model("resnet18", 2, "none")
    x, _ = _separable(4, 0)
    probs = predict_probs(model, x, torch.device("cpu"), execution=Execution(torch.device("cpu"), torch.bfloat16, False))
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)


# -- augmentation: per image, exactly the study's distribution --------------------------------------


def _flip_kind(out: torch.Tensor, x: torch.Tensor) -> str:
    for name, ref in (("none", x), ("h", x.flip(-1)), ("v", x.flip(-2)), ("hv", x.flip(-1).flip(-2))):
        if torch.allclose(out, ref, atol=1e-4):
            return name
    return "other"


def test_each_image_in_a_batch_is_flipped_on_its_own_coin():
    """p = 0.5: about half of every batch is flipped horizontally (and, independently, vertically), never all or none."""
    x = torch.rand(1, 1, 16, 16).expand(200, -1, -1, -1).contiguous()  # one asymmetric image, 200 times
    flips_only = AugmentSpec(prob=0.5, scale=0.0, crop=1.0, translate=0.0)  # the other transforms become identities
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        kinds = [_flip_kind(o, x[0]) for o in augment_batch(x, flips_only, gen)]
        assert "other" not in kinds
        h = np.mean([k in ("h", "hv") for k in kinds])
        v = np.mean([k in ("v", "hv") for k in kinds])
        assert 0.38 < h < 0.62 and 0.38 < v < 0.62  # binomial(200, 0.5): 4 standard deviations
        assert {"none", "h", "v", "hv"} <= set(kinds)  # all four combinations in one batch: independent coins


def test_scale_crop_and_shift_are_uniform_over_the_study_ranges():
    spec = AugmentSpec(prob=0.5, scale=0.1, crop=0.8, translate=0.1)
    p = sample_params(20000, spec, torch.Generator().manual_seed(1))
    scaled = p["scale"][p["scale"] != 1].numpy()
    assert stats.kstest(scaled, stats.uniform(loc=0.9, scale=0.2).cdf).pvalue > 1e-3
    cropped = p["crop"][p["crop"] != 1].numpy()
    assert stats.kstest(cropped, stats.uniform(loc=0.8, scale=0.2).cdf).pvalue > 1e-3
    shifted = p["shift"][(p["shift"] != 0).any(1)].numpy().ravel()
    assert stats.kstest(shifted, stats.uniform(loc=-0.1, scale=0.2).cdf).pvalue > 1e-3
    # each transform on its own coin: about a quarter of the images are both scaled and cropped
    both = ((p["scale"] != 1) & (p["crop"] != 1)).float().mean().item()
    assert both == pytest.approx(0.25, abs=0.02)


def test_torchvision_v2_on_a_batch_draws_once_which_is_why_we_do_not_use_it():
    """The contrast that justifies core.training.augment: v2's RandomHorizontalFlip on a batch tensor flips all images or none."""
    from torchvision.transforms import v2

    x = torch.rand(1, 1, 16, 16).expand(64, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    for _ in range(5):
        kinds = {_flip_kind(o, x[0]) for o in v2.RandomHorizontalFlip(p=0.5)(x)}
        assert len(kinds) == 1


def test_a_folds_heat_maps_for_both_targets_take_one_forward_pass_and_equal_the_librarys():
    """The gallery's two maps per image (predicted and positive class) come from one forward pass per batch, and are
    still pytorch-grad-cam's: each equal to the library's own pass for that target."""
    from core.training import explain

    torch.manual_seed(0)
    model, _ = build_model("resnet18", 2, "none")
    x, y = _separable(6, 0, size=64)
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.8, 0.2]], np.float32)
    forwards = []
    handle = model.register_forward_hook(lambda _m, inputs, _out: forwards.append(len(inputs[0])))
    arrays, rows = explain.explain_fold(model, "resnet18", x, image_ids=[str(i) for i in range(6)], labels=y.numpy(), probs=probs, positive=1,
                                        mask_paths=None, cap=0, store_size=16, device=torch.device("cpu"))
    handle.remove()
    assert forwards == [6]  # one pass for both targets (the library would take two, each with a backward through every layer)
    cpu = torch.device("cpu")
    for target, classes in (("positive", [1] * 6), ("predicted", [int(t) for t in probs.argmax(1)])):
        library = explain.to_u8(explain.grad_cams(model, "resnet18", x, classes, cpu), 16)
        assert np.abs(arrays[target].astype(int) - library.astype(int)).max() <= 1, target
    predicted_positive = probs.argmax(1) == 1
    assert np.array_equal(arrays["predicted"][predicted_positive], arrays["positive"][predicted_positive])
    assert len(rows) == 12


def test_fp32_on_a_gpu_is_fp32_not_tf32():
    """torch lets cuDNN convolutions use TF32 unless told otherwise; a run's precision=fp32 must mean fp32."""
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.get_num_threads()
    try:
        setup_device(torch.device("cuda"))  # sets flags only: no GPU needed
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_num_threads(before[2])


def _curve(device: str, *, read_late: bool, **changes) -> list[dict]:
    """One fold's curve rows (without times) with each step's numbers read at once or one step late."""
    import dataclasses

    cfg = tiny_config(max_iterations=7, eval_every=3, device=device, **changes)
    dev = torch.device(device)
    execution = dataclasses.replace(resolve(dev, "fp32", "auto", cuda_graphs=cfg.cuda_graphs), read_late=read_late)
    x_train, y_train = _separable(32, 0)
    x_test, y_test = _separable(10, 1)
    torch.manual_seed(0)
    model, _ = build_model("resnet18", 2, "none")
    seen = []
    out = train_fold(cfg, model, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, fold=0, device=dev,
                     on_iteration=seen.append, execution=execution)
    assert seen == out.curve  # what the live store gets is what the fold keeps
    return [{k: v for k, v in row.items() if k != "elapsed_s" and v == v} for row in out.curve]  # v == v: not the held-out rows' NaN lr


@pytest.mark.parametrize("device", DEVICES)
def test_reading_each_steps_loss_one_step_late_keeps_the_curve_and_its_order(device):
    """On a GPU the host reads step t's loss after launching step t+1 (core.training.train.StepReader); the rows must
    be the same rows, each held-out check still after its own training row, none lost at the end."""
    late, at_once = _curve(device, read_late=True), _curve(device, read_late=False)
    order = [(row["phase"], row["iteration"]) for row in late]
    assert order == [("train", 1), ("train", 2), ("train", 3), ("heldout", 3), ("train", 4), ("train", 5), ("train", 6),
                     ("heldout", 6), ("train", 7), ("heldout", 7)]
    assert order == [(row["phase"], row["iteration"]) for row in at_once]
    if device == "cpu":  # the same arithmetic: the same numbers
        assert late == at_once
    else:  # a GPU's autotuned kernels may differ in the last bits, which this tiny task amplifies: the first step only
        assert late[0]["loss"] == pytest.approx(at_once[0]["loss"], rel=1e-3)
        assert all(np.isfinite(row["loss"]) for row in late)


def test_a_diverging_loss_read_one_step_late_still_names_its_own_iteration():
    from core.training.train import DivergedError

    errors = []
    for read_late in (False, True):
        with pytest.raises(DivergedError) as caught:
            _curve("cpu", read_late=read_late, optimizer="sgdm", learning_rate=1e6)
        errors.append((caught.value.fold, caught.value.iteration))
    assert errors[0] == errors[1]


def test_only_a_gpu_reads_its_losses_late():
    assert resolve(torch.device("cpu")).read_late is False
    assert Execution(torch.device("cpu"), None, False).read_late is False
