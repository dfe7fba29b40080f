"""What the dropout in front of a ResNet's last layer does to it, measured while it trains.

torchvision's ResNet-18 with a dropout head (``fc = Sequential(Dropout(p), Linear(512, 10))``)
is trained on scikit-learn's digits with the squared loss to one-hot targets (the loss of the
paper's theory, summed over samples). After every epoch, :class:`structdrop.HeadMonitor` makes
one pass over the training set (eval mode, no masks) and prints what the theory says of the
head (Thm 3.1, Prop. 3.3 / Thm 2.7; docs/guide/head.md):

* the deterministic objective ``||Y - U G - b 1^T||^2 + <Cbar, (U^T U) * (G G^T)>`` whose
  stochastic gradients the masked training follows, and its regularizer's share;
* the gap to the best head for the current features (the least objective over ``U`` and
  ``b``: a linear system), which training closes first;
* the gap to the capacity bound (the least objective over heads *and* features at width 512),
  which only the features can close.

Run: ``python examples/head_monitor.py`` (about a minute on a 2-core CPU; ``--epochs``,
``--train-size`` and ``--p`` change the run).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from torch import nn

import structdrop as sd


def digits(train_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (bundled: no download) as standardized 3-channel images."""
    bunch = load_digits()
    images = torch.as_tensor(bunch.images[:train_size], dtype=torch.float32)[:, None]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = images.repeat(1, 3, 1, 1)
    images = (images - images.mean()) / images.std()
    return images, torch.as_tensor(bunch.target[:train_size], dtype=torch.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()

    torch.manual_seed(options.seed)
    images, labels = digits(options.train_size, options.image_size)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.fc = nn.Sequential(nn.Dropout(options.p), nn.Linear(512, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = sd.HeadMonitor(model)  # finds model.fc[1] and the Dropout in front of it
    print(f"head {monitor.head_name}, law {monitor.scheme}")
    batches = list(zip(images.split(256), labels.split(256), strict=True))  # the monitor's pass

    generator = torch.Generator().manual_seed(options.seed)
    for epoch in range(1, options.epochs + 1):
        model.train()
        for index in torch.randperm(len(labels), generator=generator).split(options.batch_size):
            targets = F.one_hot(labels[index], 10).float()
            loss = ((model(images[index]) - targets) ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        # BatchNorm's running averages lag behind the weights: measure the network with the
        # statistics of the training set at its current weights (torch's "precise BN")
        torch.optim.swa_utils.update_bn(batches, model)
        report = monitor.measure(batches)
        print(f"epoch {epoch}: {report.summary()}")
    print(
        f"capacity bound {report.capacity_bound:.4g} ({report.capacity_note}); trained "
        f"singular values {[round(v, 2) for v in report.singular_values[:4]]}, predicted "
        f"{[round(v, 2) for v in (report.predicted_singular_values or ())[:4]]}"
    )


if __name__ == "__main__":
    main()
