"""How big each benchmark part is in each mode. `full` is the study; `quick` fits a 2-core CPU in under 2 minutes; `tiny` is for tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchSize:
    mode: str
    # (a) pre-processing: generated JPEGs of about MIMIC-CXR-JPG's size
    n_files: int
    file_hw: tuple[int, int]  # (height, width) of the generated JPEGs
    pre_size: int  # decoded side (the study's 224)
    # (b) training throughput
    backbone: str
    image_size: int
    batch_size: int
    warmup: int  # iterations not timed (first-call costs, DataLoader workers starting)
    iterations: int  # timed iterations, ours
    baseline_iterations: int  # timed iterations, each baseline
    # (c) the protocol end to end
    protocol_backbone: str
    protocol_size: int
    protocol_n_per_class: int
    protocol_phantom_px: int  # side of the generated demo images it reads
    protocol_folds: int
    protocol_iterations: int
    # (d) heat maps: images per fold (the protocol's backbone and size)
    heatmap_images: int

    @property
    def scaled_down(self) -> bool:
        return self.mode != "full"

    def protocol_note(self) -> str:
        if not self.scaled_down:
            return ("the study's protocol: ResNet-50, 224 px, 10 folds x 250 iterations x batch 25, out-of-fold "
                    "evaluation, Grad-CAM of every held-out image; weights=none (timing is the same as ImageNet's)")
        return (f"SCALED DOWN for this mode: {self.protocol_backbone}, {self.protocol_size} px, {self.protocol_folds} folds x "
                f"{self.protocol_iterations} iterations x batch {self.batch_size}, {2 * self.protocol_n_per_class} images; "
                "the study is ResNet-50, 224 px, 10 folds x 250 iterations (run without --quick on a GPU)")


SIZES: dict[str, BenchSize] = {
    "full": BenchSize(
        mode="full", n_files=256, file_hw=(3000, 2500), pre_size=224,
        backbone="resnet50", image_size=224, batch_size=25, warmup=15, iterations=100, baseline_iterations=60,
        protocol_backbone="resnet50", protocol_size=224, protocol_n_per_class=500, protocol_phantom_px=256,
        protocol_folds=10, protocol_iterations=250, heatmap_images=100,
    ),
    "quick": BenchSize(
        mode="quick", n_files=64, file_hw=(3000, 2500), pre_size=224,
        backbone="resnet18", image_size=64, batch_size=25, warmup=3, iterations=20, baseline_iterations=15,
        protocol_backbone="resnet18", protocol_size=64, protocol_n_per_class=100, protocol_phantom_px=128,
        protocol_folds=10, protocol_iterations=3, heatmap_images=100,
    ),
    "tiny": BenchSize(
        mode="tiny", n_files=6, file_hw=(600, 500), pre_size=64,
        backbone="resnet18", image_size=32, batch_size=4, warmup=1, iterations=2, baseline_iterations=2,
        protocol_backbone="resnet18", protocol_size=32, protocol_n_per_class=6, protocol_phantom_px=64,
        protocol_folds=2, protocol_iterations=2, heatmap_images=5,
    ),
}
