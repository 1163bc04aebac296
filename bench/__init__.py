"""Benchmarks behind `python -m core bench`: pre-processing, training throughput and the paper protocol, each against a baseline.

- `bench.sizes`: the three sizes (`tiny` for tests, `quick` for a 2-core CPU, `full` = the study on a GPU).
- `bench.preprocess`: generated MIMIC-sized JPEGs; naive full PIL decode + resize vs our cache (draft mode, processes).
- `bench.train_throughput`: our training loop vs a plain PyTorch Dataset/DataLoader/torchvision-transforms loop.
- `bench.protocol`: the whole k-fold protocol end to end through the engine and a throw-away store.
- `bench.run`: runs the three in one process, prints the table and writes the JSON.
"""
