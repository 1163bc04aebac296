"""Runs as background processes: starting, resuming and cancelling them (`launch`), telling whether the process
behind a stored run is alive or was interrupted (`lifecycle`), and one CUDA run at a time per runs folder (`gpuqueue`).
"""
