"""Semantic segmentation models on the zoo's backbones (chosen by registry name): FCN-32s /
16s / 8s (the paper's, on VGG-16), torchvision's FCN head on a dilated ResNet, DeconvNet,
U-Net and DeepLab v3. Each returns per-pixel class scores at the input resolution,
`(logits [B, H, W, num_classes] float32, features)`."""

from cnnjax.models.segmentation import deconvnet, deeplab, fcn, unet

MODELS: dict = {**fcn.MODELS, **deconvnet.MODELS, **unet.MODELS, **deeplab.MODELS}
