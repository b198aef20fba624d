"""Twin architectures by name (plain data, so the command line can list them without importing torch)."""

PRESETS = {
    "tiny": dict(channels=(8, 8), spatial_kernels=(5, 3), temporal_kernels=(3, 3), first_stride=2),
    "small": dict(channels=(16, 32, 32), spatial_kernels=(9, 5, 5), temporal_kernels=(9, 7, 5), first_stride=2),
    # The SENSORIUM 2023 factorized baseline size.
    "base": dict(channels=(32, 64, 128), spatial_kernels=(11, 5, 5), temporal_kernels=(11, 5, 5), first_stride=1),
    # Factorized spatial/temporal transformers (`training/transformer.py`); receptive field 1 + depth·(window - 1).
    "vit-tiny": dict(core="transformer", dim=16, depth=1, heads=2, window=4, patch=4, channels=8, mlp_ratio=2),
    "vit-small": dict(core="transformer", dim=64, depth=2, heads=4, window=10, patch=4, channels=32),
    "vit-base": dict(core="transformer", dim=128, depth=4, heads=4, window=8, patch=4, channels=64),
}
