"""PyTorch reference for the benchmark: the same SimpleCNN + head, NT-Xent (fixed), Adam,
and per-example random resized crop + rotation via affine_grid / grid_sample. torch only."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class SimpleCNN(nn.Module):
  """conv16-relu-pool, conv32-relu-pool, dense 128 + relu; projection head 128 -> 64."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
    self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
    self.dense = nn.Linear(32 * 7 * 7, 128)
    self.head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    features = F.relu(self.dense(x.flatten(1)))
    return features, self.head(features)


def nt_xent(z1, z2, temperature):
  """Mean over 2N anchors; the positive of anchor i is its other view (not the diagonal)."""
  z = F.normalize(torch.cat([z1, z2]), dim=1)
  n = z1.shape[0]
  logits = z @ z.T / temperature
  logits.fill_diagonal_(float("-inf"))
  targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
  return F.cross_entropy(logits, targets)


def random_views(images, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), degrees=10.0):
  """Per-example random resized crop then rotation, as one affine warp (bilinear, zeros)."""
  n = images.shape[0]
  device = images.device
  area = torch.empty(n, device=device).uniform_(*scale)
  aspect = torch.exp(torch.empty(n, device=device).uniform_(math.log(ratio[0]),
                                                             math.log(ratio[1])))
  crop_h = torch.sqrt(area / aspect).clamp(max=1.0)  # fractions of the image
  crop_w = torch.sqrt(area * aspect).clamp(max=1.0)
  centre_y = (torch.rand(n, device=device) * (1 - crop_h) + crop_h / 2) * 2 - 1
  centre_x = (torch.rand(n, device=device) * (1 - crop_w) + crop_w / 2) * 2 - 1
  angle = torch.deg2rad(torch.empty(n, device=device).uniform_(-degrees, degrees))
  cos, sin = torch.cos(angle), torch.sin(angle)
  theta = torch.stack([torch.stack([crop_w * cos, -crop_w * sin, centre_x], 1),
                       torch.stack([crop_h * sin, crop_h * cos, centre_y], 1)], 1)
  grid = F.affine_grid(theta, list(images.shape), align_corners=False)
  return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class TorchTraining:
  """One training step on an in-memory uint8 dataset [N, 1, 28, 28]."""

  def __init__(self, images, batch_size, device="cpu", lr=1e-3, temperature=0.5, seed=0):
    torch.manual_seed(seed)
    self.device = device
    self.images = images.to(device)
    self.batch_size = batch_size
    self.temperature = temperature
    self.model = SimpleCNN().to(device)
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
    self.permutation = torch.randperm(len(images), device=device)

  def step(self, step):
    start = (step * self.batch_size) % (len(self.images) - self.batch_size + 1)
    batch = self.images[self.permutation[start:start + self.batch_size]].float() / 255.0
    view1, view2 = random_views(batch), random_views(batch)
    _, projections = self.model(torch.cat([view1, view2]))
    z1, z2 = projections.chunk(2)
    loss = nt_xent(z1, z2, self.temperature)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss
