"""PyTorch reference for the benchmark: the same SimpleCNN + head, NT-Xent (fixed), Adam,
and per-example random resized crop + rotation (+ slant and elastic distortion for
configs/mnist.py) via affine_grid / grid_sample; ResNet-18 with SimCLR's CIFAR views and
LARS for configs/cifar10.py. torch only."""

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
  # Made on z's device: a CPU tensor in a compiled graph stops inductor's CUDA graphs.
  targets = torch.cat([torch.arange(n, 2 * n, device=z.device),
                       torch.arange(n, device=z.device)])
  return F.cross_entropy(logits, targets)


def random_views(images, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), degrees=10.0,
                 shear_degrees=0.0, elastic_alpha=0.0, elastic_grid=4):
  """Per-example random resized crop, rotation and (configs/mnist.py) slant as one affine
  warp, with an elastic displacement (N(0, alpha^2) pixels on a grid x grid lattice,
  upsampled bicubically) added to the sampling grid; bilinear, zeros outside."""
  n, _, height, width = images.shape
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
  # The slant in (x, y) = (col, row): x_in = x + tan(shear) y, before the rotation.
  tan = torch.tan(torch.deg2rad(torch.empty(n, device=device).uniform_(-shear_degrees,
                                                                        shear_degrees)))
  theta = torch.stack([torch.stack([crop_w * cos, crop_w * (cos * tan - sin), centre_x], 1),
                       torch.stack([crop_h * sin, crop_h * (sin * tan + cos), centre_y], 1)], 1)
  grid = F.affine_grid(theta, list(images.shape), align_corners=False)
  if elastic_alpha > 0:
    coarse = elastic_alpha * torch.randn(n, 2, elastic_grid, elastic_grid, device=device)
    pixels = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    # Pixels to grid_sample's [-1, 1] coordinates: (x, y) order, 2 / size per pixel.
    scale_xy = torch.tensor([2 / width, 2 / height], device=device)
    grid = grid + pixels.permute(0, 2, 3, 1) * scale_xy
  return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def compiled(function, device):
  """`torch.compile`d as a PyTorch user tuning for speed would: on a GPU in mode
  "reduce-overhead", which replays the compiled kernels as CUDA graphs."""
  return torch.compile(function, mode="reduce-overhead" if device == "cuda" else None)


class TorchTraining:
  """One training step on an in-memory uint8 dataset [N, 1, 28, 28]: eager, as the replaced
  example is written, or with `fast` as a PyTorch user would tune it: the views, forward and
  loss under `torch.compile` (CUDA graphs on a GPU), channels-last, a fused Adam on a GPU,
  and bf16 autocast if asked (as cl_jax's dtype)."""

  def __init__(self, images, batch_size, device="cpu", lr=1e-3, temperature=0.5, seed=0,
               fast=False, bfloat16=False, views=None):
    """views: keyword arguments of `random_views` (the default recipe's slant and elastic
    distortion); None = configs/mnist_seed.py's crop and rotation."""
    torch.manual_seed(seed)
    self.views = views or {}
    self.device = device
    self.images = images.to(device)
    self.batch_size = batch_size
    self.temperature = temperature
    self.fast, self.bfloat16 = fast, bfloat16
    self.model = SimpleCNN().to(device)
    if fast:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr,
                                      fused=fast and device == "cuda")
    self.loss = compiled(self._loss, device) if fast else self._loss
    self.permutation = torch.randperm(len(images), device=device)

  def _loss(self, batch):
    views = torch.cat([random_views(batch, **self.views), random_views(batch, **self.views)])
    if self.fast:
      views = views.contiguous(memory_format=torch.channels_last)
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bfloat16):
      _, projections = self.model(views)
    z1, z2 = projections.float().chunk(2)
    return nt_xent(z1, z2, self.temperature)

  def step(self, step):
    start = (step * self.batch_size) % (len(self.images) - self.batch_size + 1)
    batch = self.images[self.permutation[start:start + self.batch_size]].float() / 255.0
    self.optimizer.zero_grad(set_to_none=True)
    if self.fast and self.device == "cuda":
      torch.compiler.cudagraph_mark_step_begin()  # the last step's graph memory may go
    loss = self.loss(batch)
    loss.backward()
    self.optimizer.step()
    return loss.detach().clone()  # CUDA graphs overwrite their outputs at the next replay


# CIFAR shape: configs/cifar10.py's recipe (ResNet-18 with the CIFAR stem, a 2048-256
# projector with BN, NT-Xent at t = 0.2, SimCLR's views, solo-learn's LARS) in PyTorch.

class BasicBlock(nn.Module):
  """torchvision's BasicBlock."""

  def __init__(self, inputs, features, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inputs, features, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.shortcut = nn.Sequential()
    if stride != 1 or inputs != features:
      self.shortcut = nn.Sequential(nn.Conv2d(inputs, features, 1, stride, bias=False),
                                    nn.BatchNorm2d(features))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18Cifar(nn.Module):
  """torchvision's resnet18 with the CIFAR stem (3x3 conv, stride 1, no max pool), no
  classifier, and SimCLR's projector 512 -> 2048 (BN, ReLU) -> 256."""

  def __init__(self):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                              nn.ReLU())
    blocks, inputs = [], 64
    for stage, features in enumerate((64, 128, 256, 512)):
      for index in range(2):
        blocks.append(BasicBlock(inputs, features, 2 if stage > 0 and index == 0 else 1))
        inputs = features
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Sequential(nn.Linear(512, 2048), nn.BatchNorm1d(2048), nn.ReLU(),
                              nn.Linear(2048, 256))

  def forward(self, x):
    features = self.blocks(self.stem(x)).mean(dim=(2, 3))
    return features, self.head(features)


LUMA = (0.2989, 0.587, 0.114)


def _luma(x):
  return (LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]).unsqueeze(1)


def _per_example(values, n):
  return values.view(n, 1, 1, 1)


def _hue_shift(x, shift):
  """torchvision's adjust_hue (its _rgb2hsv / _hsv2rgb), per example."""
  r, g, b = x.unbind(1)
  maxc, minc = x.max(1).values, x.min(1).values
  equal = maxc == minc
  chroma = maxc - minc
  s = chroma / torch.where(equal, torch.ones_like(maxc), maxc)
  divisor = torch.where(equal, torch.ones_like(chroma), chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = torch.fmod(h / 6.0 + 1.0 + shift.view(-1, 1, 1), 1.0)
  i = torch.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.to(torch.int64) % 6
  v = maxc
  p = (v * (1 - s)).clamp(0, 1)
  q = (v * (1 - s * f)).clamp(0, 1)
  t = (v * (1 - s * (1 - f))).clamp(0, 1)
  table = torch.stack([torch.stack(c, 1) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p),
                                                   (p, p, t, v, v, q))], 1)  # [n, 3, 6, H, W]
  return torch.gather(table, 2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def simclr_views(images, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """SimCLR's CIFAR views per example on the device: random resized crop (affine_grid),
  flip 0.5, colour jitter 0.4 / 0.4 / 0.2 / 0.1 with probability 0.8 (one order per
  batch: the same work as torchvision's per-image order), grayscale 0.2."""
  n, device = images.shape[0], images.device
  area = torch.empty(n, device=device).uniform_(*scale)
  aspect = torch.exp(torch.empty(n, device=device).uniform_(math.log(ratio[0]),
                                                             math.log(ratio[1])))
  crop_h = torch.sqrt(area / aspect).clamp(max=1.0)
  crop_w = torch.sqrt(area * aspect).clamp(max=1.0)
  centre_y = (torch.rand(n, device=device) * (1 - crop_h) + crop_h / 2) * 2 - 1
  centre_x = (torch.rand(n, device=device) * (1 - crop_w) + crop_w / 2) * 2 - 1
  flip = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
  zeros = torch.zeros_like(crop_w)
  theta = torch.stack([torch.stack([crop_w * flip, zeros, centre_x], 1),
                       torch.stack([zeros, crop_h, centre_y], 1)], 1)
  grid = F.affine_grid(theta, list(images.shape), align_corners=False)
  x = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
  jittered = x
  uniform = lambda low, high: _per_example(torch.empty(n, device=device).uniform_(low, high), n)
  for op in torch.randperm(4).tolist():
    if op == 0:
      jittered = (jittered * uniform(0.6, 1.4)).clamp(0, 1)
    elif op == 1:
      mean = _luma(jittered).mean(dim=(1, 2, 3), keepdim=True)
      factor = uniform(0.6, 1.4)
      jittered = (factor * jittered + (1 - factor) * mean).clamp(0, 1)
    elif op == 2:
      factor = uniform(0.8, 1.2)
      jittered = (factor * jittered + (1 - factor) * _luma(jittered)).clamp(0, 1)
    else:
      jittered = _hue_shift(jittered, torch.empty(n, device=device).uniform_(-0.1, 0.1))
  x = torch.where(_per_example(torch.rand(n, device=device) < 0.8, n), jittered, x)
  gray = torch.rand(n, device=device) < 0.2
  return torch.where(_per_example(gray, n), _luma(x).expand(-1, 3, -1, -1), x)


class Lars(torch.optim.Optimizer):
  """solo-learn's LARS (solo/utils/lars.py) with clip_lr and exclude_bias_n_norm."""

  def __init__(self, params, lr, weight_decay, eta=0.02, momentum=0.9):
    super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "eta": eta,
                              "momentum": momentum})

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      for p in group["params"]:
        if p.grad is None:
          continue
        d_p = p.grad
        if p.ndim != 1:
          p_norm, g_norm = torch.norm(p), torch.norm(d_p)
          ratio = group["eta"] * p_norm / (g_norm + p_norm * group["weight_decay"])
          scale = torch.where((p_norm > 0) & (g_norm > 0),
                              torch.clamp(ratio / group["lr"], max=1.0), torch.ones_like(ratio))
          d_p = (d_p + group["weight_decay"] * p) * scale
        state = self.state[p]
        if "buffer" not in state:
          state["buffer"] = d_p.clone()
        else:
          state["buffer"].mul_(group["momentum"]).add_(d_p)
        p.add_(state["buffer"], alpha=-group["lr"])


class CifarTraining:
  """One training step of configs/cifar10.py's recipe on an in-memory uint8 dataset
  [N, 3, 32, 32]: channels-last, bf16 autocast if asked (as cl_jax's dtype), the model
  `compiled` with `fast`."""

  def __init__(self, images, batch_size, device="cpu", fast=False, bfloat16=False, seed=0):
    self.bfloat16 = bfloat16
    torch.manual_seed(seed)
    self.device = device
    self.images = images.to(device)
    self.batch_size = batch_size
    self.model = ResNet18Cifar().to(device).to(memory_format=torch.channels_last)
    self.optimizer = Lars(self.model.parameters(), lr=0.4 * batch_size / 256, weight_decay=1e-4)
    self.forward = compiled(self.model, device) if fast else self.model
    self.permutation = torch.randperm(len(images), device=device)

  def step(self, step):
    start = (step * self.batch_size) % (len(self.images) - self.batch_size + 1)
    batch = self.images[self.permutation[start:start + self.batch_size]].float() / 255.0
    views = torch.cat([simclr_views(batch), simclr_views(batch)]).contiguous(
        memory_format=torch.channels_last)
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bfloat16):
      _, projections = self.forward(views)
    z1, z2 = projections.float().chunk(2)
    loss = nt_xent(z1, z2, 0.2)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss
