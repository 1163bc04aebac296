"""Class heat maps (pytorch-grad-cam) of held-out images, and how well they localise a lesion.

Two methods, chosen per run (`gradcam_method`):
- `gradcam`: Grad-CAM (Selvaraju et al. 2017) on each backbone's last convolutional block
  (`Backbone.cam_layer`, `layer4[-1]` for ResNets), as the study. Its stride is 32: a 64 px input
  gives a 2 x 2 map, 224 px a 7 x 7 map.
- `layercam`: LayerCAM (Jiang et al. 2021, IEEE TIP 30:5875) on the block before it
  (`Backbone.fine_layer`, `layer3[-1]`, stride 16: 4 x 4 at 64 px, 14 x 14 at 224 px). Grad-CAM
  averages the gradient over the map, which blurs a shallower layer's evidence; LayerCAM weights
  each position by its own positive gradient, which is what keeps a finer layer's map meaningful.
With `gradcam_flip`, each map is averaged with the map of the mirrored image, mirrored back
(the horizontal flip of pytorch-grad-cam's `aug_smooth`, without its intensity scalings): a
model trained for a few iterations puts part of its evidence on the wrong side, and the mirror
image rarely does the same. Measured in the quick demo (docs/benchmarks.md): Grad-CAM points at
the effusion in 64 % of positives (chance 41 %), LayerCAM mirror-averaged in 90 % (chance 18 %).
Localisation scores allow one map cell of tolerance and report the chance level beside each
score (../shared/ARCHITECTURE.md, "Grad-CAM resolution").
The maps are pytorch-grad-cam's (`grad_cams` calls the library and is the reference), computed in one
forward pass per batch for both of a gallery's targets (`cams_for_targets`).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.ndimage import distance_transform_edt
from torch import nn

from core.training.models import BACKBONES, get_module
from core.training.runtime import fixed_batches, pad_rows
from core.training.train import normalize, to_input

CAM_CLASSES = {"gradcam": GradCAM, "layercam": LayerCAM}


def cam_target(backbone: str, method: str = "gradcam") -> tuple[str, int]:
    """The layer a method reads (dotted path) and its stride (input pixels per map cell)."""
    spec = BACKBONES[backbone]
    if method not in CAM_CLASSES:
        raise ValueError(f"unknown heat-map method {method!r}; choose one of: {', '.join(CAM_CLASSES)}")
    return (spec.fine_layer, spec.fine_stride) if method == "layercam" else (spec.cam_layer, spec.cam_stride)


def cam_layer(model: nn.Module, backbone: str, method: str = "gradcam") -> nn.Module:
    return get_module(model, cam_target(backbone, method)[0])


def grad_cams(model: nn.Module, backbone: str, images_u8: torch.Tensor, targets: list[int], device: torch.device, *,
              method: str = "gradcam", flip: bool = False, batch_size: int = 32) -> np.ndarray:
    """Heat maps (N, H, W) in [0, 1] at the input's resolution, one per image for its target class, by pytorch-grad-cam itself.

    The reference: the engine and the Predict page compute the same maps faster (`cams_for_targets`), and the
    tests and the benchmark compare them with these.

    Args:
        images_u8: (N, H, W) uint8 images as the model saw them (before normalisation).
        targets: class index per image (e.g. the predicted class, or the positive class).
        method: "gradcam" or "layercam" (each on its own layer, `cam_target`).
        flip: average each map with the mirrored image's map, mirrored back.
    """
    model.eval()
    layer = cam_layer(model, backbone, method)
    out = []
    with CAM_CLASSES[method](model=model, target_layers=[layer]) as cam:
        for i in range(0, len(images_u8), batch_size):
            x = normalize(to_input(images_u8[i : i + batch_size].to(device))).requires_grad_(True)
            batch_targets = [ClassifierOutputTarget(int(t)) for t in targets[i : i + batch_size]]
            maps = cam(input_tensor=x, targets=batch_targets)
            if flip:
                mirrored = normalize(to_input(images_u8[i : i + batch_size].flip(-1).to(device))).requires_grad_(True)
                maps = (maps + cam(input_tensor=mirrored, targets=batch_targets)[..., ::-1]) / 2
            out.append(maps)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0, 0), np.float32)


def cams_and_probs(model: nn.Module, backbone: str, images_u8: torch.Tensor, targets: list[int], device: torch.device, *,
                   method: str = "gradcam", flip: bool = False, batch_size: int = 32,
                   fixed: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The maps `grad_cams` gives, and the softmax probabilities (N, C), from one forward pass per batch.

    The one-target case of `cams_for_targets`; the Predict page's path, where one image must answer at once.
    """
    maps, probs = cams_for_targets(model, backbone, images_u8, [targets], device, method=method, flip=flip,
                                   batch_size=batch_size, fixed=fixed)
    return maps[0], probs


def cams_for_targets(model: nn.Module, backbone: str, images_u8: torch.Tensor, target_sets: list[list[int]],
                     device: torch.device, *, method: str = "gradcam", flip: bool = False, batch_size: int = 32,
                     fixed: bool | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """pytorch-grad-cam's maps of the same images for each list of targets, and the probabilities, in one forward pass per batch.

    Why: pytorch-grad-cam's backward runs through the whole network and fills every weight's gradient,
    although both methods need the gradient at the target layer only, and it runs the network again for
    each target. Here the layer's output is cut from the graph and made a leaf, so a backward covers only
    what follows it, and each further target is one more such backward from the same forward pass: a fold's
    maps for two targets cost about one forward pass (2.7 s instead of the library's 15.7 s for 100 images,
    ResNet-18 at 224 px on a CPU, docs/benchmarks.md), and that pass also gives the probabilities (of the image
    as it is; with `flip` the mirrored images ride in the same batch). The maps are then weighted, rectified
    and scaled exactly as pytorch-grad-cam does (its `scale_cam_image`, twice, as its single-layer CAMs);
    tests/test_explain.py checks they equal the library's for every backbone and method.

    Args:
        target_sets: one list of class indices per set of maps wanted, each as long as `images_u8`.
        fixed: pad the last batch to `batch_size` images (default: on a GPU, `core.training.runtime.fixed_batches`).

    Returns:
        One (N, H, W) float32 array per target set, and the (N, C) probabilities.
    """
    from pytorch_grad_cam.utils.image import scale_cam_image

    pad = fixed_batches(device) if fixed is None else fixed
    copies = 2 if flip else 1
    model.eval()
    captured: list[torch.Tensor] = []

    def cut(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    def weigh(activations: np.ndarray, grads: np.ndarray, n: int, side: tuple[int, int]) -> np.ndarray:
        if method == "layercam":
            cam = (np.maximum(grads, 0) * activations).sum(axis=1)
        else:
            cam = (grads.mean(axis=(2, 3))[:, :, None, None] * activations).sum(axis=1)
        cam = scale_cam_image(scale_cam_image(np.maximum(cam, 0), side))
        return (cam[:n] + cam[n:, :, ::-1]) / 2 if flip else cam

    handle = cam_layer(model, backbone, method).register_forward_hook(cut)
    maps: list[list[np.ndarray]] = [[] for _ in target_sets]
    probs = []
    try:
        for i in range(0, len(images_u8), batch_size):
            batch = images_u8[i : i + batch_size]
            n = len(batch)
            x = (torch.cat([batch, batch.flip(-1)]) if flip else batch).to(device)
            real = len(x)  # the rows that are images; padding rows are blank and get no gradient
            x = normalize(to_input(pad_rows(x, batch_size * copies) if pad else x))
            captured.clear()
            with torch.enable_grad():  # autograd.grad to the leaf alone: nothing before the cut is differentiated
                logits = model(x)
                rows = torch.arange(real, device=logits.device)
                activations = captured[0].detach()[:real].cpu().numpy()
                side = (x.shape[-1], x.shape[-2])
                done: dict[tuple[int, ...], np.ndarray] = {}
                for j, targets in enumerate(target_sets):
                    wanted = tuple(int(t) for t in targets[i : i + batch_size]) * copies
                    if wanted not in done:  # a set equal to an earlier one on this batch: the same maps
                        score = logits[rows, torch.as_tensor(wanted, device=logits.device)].sum()
                        (grads,) = torch.autograd.grad(score, captured[0], retain_graph=j < len(target_sets) - 1)
                        done[wanted] = weigh(activations, grads[:real].cpu().numpy(), n, side)
                    maps[j].append(done[wanted])
            probs.append(torch.softmax(logits[:n].detach().float(), dim=1).cpu().numpy())
    finally:
        handle.remove()
    if not probs:
        return [np.zeros((0, 0, 0), np.float32) for _ in target_sets], np.zeros((0, 0), np.float32)
    return [np.concatenate(m).astype(np.float32) for m in maps], np.concatenate(probs)


def localisation(cam: np.ndarray, mask: np.ndarray, *, cell_px: int) -> dict:
    """Pointing game and energy inside the lesion mask, each with its chance level, at the map's own resolution.

    The target layer's map has one cell per `cell_px` input pixels (32 for ResNets), and its
    upsampled peak can only sit where a cell puts it. So the pointing game asks whether the
    *hottest cell* points at the lesion: its centre lies within half a cell of the mask (the
    slightly dilated mask). pointing_chance is the share of cells for which that holds (a
    uniformly random cell's hit rate). energy_in_mask is the share of the heat map's sum inside
    the mask; its chance level is the mask's share of the image (a flat map).
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = cam.shape
    ny, nx = -(-h // cell_px), -(-w // cell_px)
    cells = np.array([[cam[i * cell_px : (i + 1) * cell_px, j * cell_px : (j + 1) * cell_px].mean() for j in range(nx)] for i in range(ny)])
    cy = np.minimum((np.arange(ny) + 0.5) * cell_px, h - 1).astype(int)
    cx = np.minimum((np.arange(nx) + 0.5) * cell_px, w - 1).astype(int)
    distance = distance_transform_edt(~mask) if mask.any() else np.full(mask.shape, np.inf)
    hits = distance[np.ix_(cy, cx)] <= cell_px / 2
    best = np.unravel_index(int(np.argmax(cells)), cells.shape)
    total = float(cam.sum())
    return {
        "pointing_hit": bool(hits[best]),
        "pointing_chance": float(hits.mean()),
        "energy_in_mask": float(cam[mask].sum() / total) if total > 0 else 0.0,
        "mask_fraction": float(mask.mean()),
        "peak_y": int(cy[best[0]]),
        "peak_x": int(cx[best[1]]),
    }


def pick_for_gallery(outcomes: list[str], probs: np.ndarray, cap: int) -> np.ndarray:
    """Indices of at most `cap` images (0 = all) that still cover every outcome (TP, FP, FN, TN) present.

    Round-robin over the outcomes, most confident first within each, so a small cap keeps a
    few of each kind instead of only the most common one.
    """
    n = len(outcomes)
    if cap <= 0 or cap >= n:
        return np.arange(n)
    confidence = np.abs(np.asarray(probs) - 0.5)
    queues = {o: sorted((i for i in range(n) if outcomes[i] == o), key=lambda i: -confidence[i]) for o in ("TP", "FP", "FN", "TN")}
    chosen: list[int] = []
    while len(chosen) < cap:
        progressed = False
        for queue in queues.values():
            if queue and len(chosen) < cap:
                chosen.append(queue.pop(0))
                progressed = True
        if not progressed:
            break
    return np.array(sorted(chosen))


def outcome(is_positive: bool, called_positive: bool) -> str:
    return {(True, True): "TP", (True, False): "FN", (False, True): "FP", (False, False): "TN"}[(is_positive, called_positive)]


def to_u8(cams: np.ndarray, size: int) -> np.ndarray:
    """Compact storage: (N, size, size) uint8, resized with torch's area/bilinear interpolation."""
    if cams.size == 0:
        return np.zeros((0, size, size), np.uint8)
    t = torch.from_numpy(cams)[:, None]
    if t.shape[-1] != size:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return (t[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def load_mask(path: str, size: int) -> np.ndarray | None:
    """A lesion mask resized to the model's input (nearest neighbour), or None when absent or unreadable."""
    from PIL import Image

    if not path:
        return None
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L").resize((size, size), Image.NEAREST)) > 127
    except (OSError, ValueError):
        return None


def _mask(entry, size: int) -> np.ndarray | None:
    """A mask given as its file (read now) or already read (a Ray worker gets the arrays, not the files)."""
    return entry if entry is None or isinstance(entry, np.ndarray) else load_mask(entry, size)


def explain_fold(
    model: nn.Module,
    backbone: str,
    images_u8: torch.Tensor,
    *,
    image_ids: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    positive: int,
    mask_paths: list | None,  # per image: a mask file ('' = none), or the mask already read (bool array or None)
    cap: int,
    store_size: int,
    device: torch.device,
    method: str = "gradcam",
    flip: bool = False,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Heat maps of one fold's held-out images for the predicted and the positive class, with localisation.

    Returns the arrays to save (`image_ids`, `predicted`, `positive`: (n, store_size, store_size)
    uint8) and one index row per image and target for the store.
    """
    pred = probs.argmax(1)
    outcomes = [outcome(bool(y == positive), bool(p == positive)) for y, p in zip(labels, pred)]
    chosen = pick_for_gallery(outcomes, probs[:, positive], cap)
    if len(chosen) == 0:
        return {}, []
    imgs = images_u8[torch.from_numpy(chosen)]
    size = imgs.shape[-1]
    (positive_maps, predicted_maps), _ = cams_for_targets(model, backbone, imgs, [[positive] * len(chosen), [int(p) for p in pred[chosen]]],
                                                          device, method=method, flip=flip)
    # An image predicted positive has one map for both targets, whatever the batch it was computed in.
    same = pred[chosen] == positive
    predicted_maps[same] = positive_maps[same]
    maps = {"predicted": predicted_maps, "positive": positive_maps}
    cell = cam_target(backbone, method)[1]  # input pixels per cell of the layer's map
    rows = []
    for slot, i in enumerate(chosen):
        mask = _mask(mask_paths[i], size) if mask_paths else None
        for target, cams in maps.items():
            row = {"image_id": image_ids[i], "target": target, "target_class": int(pred[i]) if target == "predicted" else positive,
                   "slot": slot, "outcome": outcomes[i], "prob_positive": float(probs[i, positive]), "has_mask": mask is not None,
                   "pointing_hit": None, "pointing_chance": None, "energy_in_mask": None, "mask_fraction": None, "peak_y": None, "peak_x": None}
            if mask is not None and mask.any():
                row.update(localisation(cams[slot], mask, cell_px=cell))
            rows.append(row)
    arrays = {"image_ids": np.array([image_ids[i] for i in chosen]), **{k: to_u8(v, store_size) for k, v in maps.items()}}
    return arrays, rows


def summarize_localisation(cams) -> dict:
    """Run-level scores over positives with masks, from the positive-class maps (pandas rows of the cams table)."""
    sel = cams[(cams["target"] == "positive") & cams["has_mask"].astype(bool) & cams["pointing_hit"].notna()]
    if sel.empty:
        return {}
    return {"pointing_game": float(sel["pointing_hit"].astype(float).mean()), "pointing_chance": float(sel["pointing_chance"].mean()),
            "energy_in_mask": float(sel["energy_in_mask"].mean()), "energy_chance": float(sel["mask_fraction"].mean()),
            "n_localised": int(len(sel))}
