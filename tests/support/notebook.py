"""The report's notebook network, re-stated independently of resnet_lite (SEED.md), used only to produce the
state_dicts a notebook run would have saved: resnet_lite must load them as they are."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SeedBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SeedNet(nn.Module):
    def __init__(self, blocks, widths, strides, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        in_channels = 32
        for i, (n, w, s) in enumerate(zip(blocks, widths, strides, strict=True), 1):
            layers = [SeedBlock(in_channels, w, s)] + [SeedBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            in_channels = w
        self.n = len(blocks)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.n + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.gap(x), 1))


SEED_ARCH = {
    "lite_r4b2": ((2, 2, 2, 2), (32, 64, 128, 256), (1, 2, 2, 2)),
    "lite_r4b3": ((3, 3, 3, 3), (32, 64, 128, 256), (1, 2, 2, 2)),
    "lite_r5b2": ((2, 2, 2, 2, 3), (32, 64, 128, 128, 256), (1, 2, 2, 2, 2)),
}
