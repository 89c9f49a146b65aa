"""VGG16 as SSD/RefineDet use it: a flat ModuleList whose indices are the checkpoint's key names."""
from __future__ import annotations

from torch import nn

# 'M' = 2x2/2 max pool, 'C' = the same with ceil_mode (keeps 75 -> 38 style sizes as Caffe does).
VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512,
)


def vgg16_reduced_fc(in_channels: int = 3, pool5_stride2: bool = True) -> nn.ModuleList:
    """VGG16 conv1_1..conv5_3, pool5, then fc6/fc7 as convolutions (dilated 3x3, then 1x1).

    Indices (for 320 input): 22 = conv4_3 ReLU (40x40), 29 = conv5_3 ReLU (20x20), 34 = fc7 ReLU (10x10).
    ``pool5_stride2``: RefineDet uses a 2x2/2 pool5; SSD uses 3x3/1 (not built here yet).
    """
    if not pool5_stride2:
        raise NotImplementedError("SSD's 3x3/1 pool5 is not used by any zoo model yet")
    layers: list[nn.Module] = []
    channels = in_channels
    for v in VGG16_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    layers += [
        nn.MaxPool2d(kernel_size=2, stride=2, padding=0),  # pool5
        nn.Conv2d(512, 1024, kernel_size=3, padding=3, dilation=3),  # fc6
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, kernel_size=1),  # fc7
        nn.ReLU(inplace=True),
    ]
    return nn.ModuleList(layers)
