"""Semantic segmentation models on the zoo's backbones (chosen by registry name): FCN-32s /
16s / 8s, DeconvNet, U-Net, DeepLab v3. Each returns per-pixel class scores at the input
resolution, `(logits [B, H, W, num_classes] float32, features)`; every family file adds its
`MODELS` below."""

MODELS: dict = {}
