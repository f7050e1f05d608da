"""GPS (Zhang et al., CVPR 2024): gradient-based parameter selection.

Following the authors' release (github.com/FightingFighting/GPS: ``train_gps.py``,
``calculate_gradient``; ``utils/pruning.py``, ``prune_by_percentile_gradient_perCell``;
``utils/loss_utils.py``, ``SupConLoss``):

- before training, one pass over the training set sums each weight's gradient (signed, over
  the batches) of a supervised contrastive loss: two augmented views of every image
  (random resized crop of scale 0.08-1, horizontal flip, colour jitter 0.4/0.4/0.4/0.1 with
  p 0.8, grayscale with p 0.2), their pooled features L2-normalised, temperature 0.07, every
  other sample of the same class a positive; the classifier plays no part;
- in every weight matrix (a conv's weight read as out x (in * kh * kw)) the K entries of
  largest |summed gradient| in each row, i.e. per output neuron, train; every bias and
  layer-scale ``gamma`` (and Swin's relative-position bias tables, "bias" by name) train in
  full; norms, position embeddings and class tokens stay frozen.

Our choices: the selected entries train as a sparse update beside the frozen weight (values
at fixed indices, zero at initialisation, so the model is unchanged and the count is exact;
the release masks the dense weight's gradient, which is the same update under its Adam
without weight decay). On a task without image labels (detection, segmentation, pose) the
selection gradient is the task's own training loss, with its decoder as initialised; the
release covers classification only. K is the width knob: ViT-B's 3.5 M (Table 4) is K = 41
(83,712 rows on ViT-B/16, 42 x 83,712 with the biases); ViT-L's 14.9 M (Table 7, which
counts SETR-PUP's 13.14 M of heads too) K = 7.
Mergeable: the update folds into the weights.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import v2

from .base import MethodConfig, PEFTMethod, SelectionBatch, width_field
from .hosts import BackboneHost, LayerDelta
from .registry import register_method

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
LAYERS = (nn.Linear, nn.Conv2d)


@dataclasses.dataclass
class GPSConfig(MethodConfig):
    per_neuron: int = width_field(1, "K: weights selected in each row (output neuron) of each "
                                  "weight matrix", budget=(1, 4096, 1))
    temperature: float = 0.07  # of the supervised contrastive loss (its base temperature too)

    def validate(self) -> None:
        if not (isinstance(self.per_neuron, int) and self.per_neuron >= 1):
            raise ValueError(f"gps: per_neuron must be a positive integer, got {self.per_neuron!r}")
        if not self.temperature > 0:
            raise ValueError(f"gps: temperature must be positive, got {self.temperature!r}")


class SparseUpdate(LayerDelta):
    """Trainable values at ``k`` chosen entries of each row of a Linear's or Conv2d's weight,
    added to its output; the indices are a buffer the selection fills."""

    def __init__(self, layer: nn.Module, k: int):
        super().__init__(layer)
        rows, width = layer.weight.shape[0], layer.weight[0].numel()
        self.k = min(k, width)
        self.values = nn.Parameter(torch.zeros(rows, self.k))
        self.register_buffer("index", torch.arange(self.k).repeat(rows, 1))

    def delta_weight(self) -> torch.Tensor:
        dense = self.values.new_zeros(self.shape[0], math.prod(self.shape[1:]))
        return dense.scatter(1, self.index, self.values).view(self.shape)


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """Khosla et al.'s loss over (views, B, C) features, all views as anchors: for each anchor,
    minus the mean log-softmax (over all other samples) of its positives, the samples of its
    class; temperature and base temperature equal, so the loss is not rescaled."""
    views, batch = features.shape[:2]
    z = F.normalize(features.flatten(0, 1), dim=1)
    logits = z @ z.T / temperature
    self_pair = torch.eye(views * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pair, float("-inf"))
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    classes = labels.repeat(views)
    positive = (classes[:, None] == classes[None, :]) & ~self_pair
    return -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1)).mean()


AUGMENT = v2.Compose([
    v2.RandomHorizontalFlip(0.5),
    v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
    v2.RandomGrayscale(0.2),
])


def views(images: torch.Tensor, count: int = 2) -> torch.Tensor:
    """``count`` contrastive views of each image in [0, 1] (B, 3, H, W) -> (count, B, 3, H, W),
    each image its own random draw (the global RNG's)."""
    crop = v2.RandomResizedCrop(images.shape[-2:], scale=(0.08, 1.0), antialias=True)
    return torch.stack([torch.stack([AUGMENT(crop(image)) for image in images])
                        for _ in range(count)])


def selectable_layers(host: BackboneHost) -> list[tuple[str, nn.Module]]:
    """The backbone's Linear and Conv2d layers (their weights are selected in), classifier out."""
    return [(name, m) for name, m in host.model.named_modules()
            if isinstance(m, LAYERS) and not (name + ".").startswith(host.classifier_prefixes)]


@register_method
class GPS(PEFTMethod):
    name = "gps"
    paper_name = "GPS"
    description = ("GPS: the K weights of largest contrastive-loss gradient per output neuron "
                   "train, with every bias")
    config_class = GPSConfig

    def attach(self, host: BackboneHost) -> None:
        for name, layer in selectable_layers(host):
            host.add_to_layer(name, SparseUpdate(layer, self.config.per_neuron))

    def trainable(self, host: BackboneHost) -> Iterable[nn.Parameter]:
        """The sparse updates, the layers' biases, and the other parameters named bias or gamma
        outside norms (layer scales, relative-position bias tables)."""
        out = list(host.added_parameters())
        owners = {id(p): m for m in host.model.modules() for p in m.parameters(recurse=False)}
        for name, p in host.model.named_parameters():
            leaf, owner = name.rpartition(".")[2], owners[id(p)]
            if (("bias" in leaf or "gamma" in leaf) and not isinstance(owner, NORMS)
                    and not (name + ".").startswith(host.classifier_prefixes)):
                out.append(p)
        return out

    def select(self, host: BackboneHost, batches: Iterable[SelectionBatch]) -> None:
        layers = [(layer, branch) for _, layer in selectable_layers(host)
                  for branch in layer.peft_branches if isinstance(branch, SparseUpdate)]
        for layer, _ in layers:
            layer.weight.requires_grad_(True)
            layer.weight.grad = None
        for batch in batches:
            if batch.images is None:
                loss = batch.loss()
            else:
                pair = views(batch.images)
                features = batch.features(pair.flatten(0, 1)).unflatten(0, pair.shape[:2])
                loss = supervised_contrastive(features, batch.labels, self.config.temperature)
            loss.backward()
        if layers and layers[0][0].weight.grad is None:
            raise ValueError("gps: the selection saw no training batch (an empty training set?)")
        with torch.no_grad():
            for layer, branch in layers:
                score = layer.weight.grad.abs().flatten(1)
                branch.index.copy_(score.topk(branch.k, dim=1).indices.sort(dim=1).values)
                layer.weight.grad = None
                layer.weight.requires_grad_(False)

    def merge(self, host: BackboneHost) -> None:
        host.fold_branches()
