"""SimSiam (Chen & He, CVPR 2021, arXiv:2011.10566) as a LightningModule, built from lightly's parts.

Sec. 3 of the paper: two views x1, x2 -> encoder f (backbone + projector) -> z; predictor h -> p;
loss D(p1, stopgrad(z2))/2 + D(p2, stopgrad(z1))/2 with D the negative cosine similarity.
lightly's NegativeCosineSimilarity + `z.detach()` is exactly that symmetrised loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields

import pytorch_lightning as pl
import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from lightly.utils.debug import std_of_l2_normalized
from pytorch_lightning.callbacks import Timer

from jobs import stop
from training.augment import augment_for
from training.backbone import build_backbone
from training.settings import Settings

# z-std below this fraction of the healthy 1/sqrt(d) means the outputs are collapsing to a constant.
COLLAPSE_FRACTION = 0.2


def effective_rank(f: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular-value energies of centred NxC features (Roy & Vetterli, 2007)."""
    s = torch.linalg.svdvals(f - f.mean(0))
    p = s**2 / (s**2).sum().clamp_min(1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def augment_seed(seed: int, rank: int) -> int:
    """The seed of a rank's device-augmentation generator: its own per rank, and not the model's seed."""
    return seed * 1_000_003 + rank + 1


def cosine_lr(peak_lr: float, progress: float) -> float:
    """Cosine decay from peak_lr at progress 0 to 0 at progress >= 1 (paper Sec. 4)."""
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class SimSiam(pl.LightningModule):
    def __init__(self, settings: Settings | dict, steps_per_epoch: int = 1, global_batch: int | None = None) -> None:
        """settings: Settings, or its dict as saved in a checkpoint, so `SimSiam.load_from_checkpoint(path)` rebuilds
        the model in one line; global_batch: batch x world size (default: the settings' batch_size)."""
        super().__init__()
        if not isinstance(settings, Settings):
            known = {f.name for f in fields(Settings)}
            settings = Settings(**{k: v for k, v in settings.items() if k in known})
        global_batch = global_batch or settings.batch_size
        self.save_hyperparameters(
            {"settings": settings.to_dict(), "steps_per_epoch": steps_per_epoch, "global_batch": global_batch}
        )
        self.settings = settings
        self.backbone, feature_dim = build_backbone(settings.backbone, settings.small_stem)
        # NHWC convolutions: +17 % images/s for resnet18 at 64 px on CPU (bench/train_throughput.py), and the
        # layout tensor cores want under AMP on GPU. Export converts back (training/train.py).
        self.backbone.to(memory_format=torch.channels_last)
        self.projection_head = SimSiamProjectionHead(feature_dim, settings.proj_dim, settings.proj_dim)
        self.prediction_head = SimSiamPredictionHead(settings.proj_dim, settings.pred_hidden_dim, settings.proj_dim)
        self.criterion = NegativeCosineSimilarity()
        self.augment = augment_for(settings)
        self.total_steps = max(1, settings.epochs * steps_per_epoch)
        # Paper Sec. 4: lr = base_lr x batch / 256, with the *global* batch under DDP.
        self.peak_lr = settings.lr * global_batch / 256
        self.collapse_floor = COLLAPSE_FRACTION / math.sqrt(settings.proj_dim)
        self._fit_start = 0.0
        self._draws: torch.Generator | None = None  # set in on_train_start: on the device ...
        self._host_draws: torch.Generator | None = None  # ... and on the CPU, for host-side choices
        self._z_std: list[torch.Tensor] = []  # per step, kept on the device: a float() would sync every step

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, p, _ = self._encode(x)
        return z, p

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.backbone(x.contiguous(memory_format=torch.channels_last))  # NxC
        z = self.projection_head(f)  # Nxd
        p = self.prediction_head(z)  # Nxd
        return z, p, f

    def loss(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(symmetrised loss, z of view 0, backbone features of view 0) for two views of one batch."""
        z0, p0, f0 = self._encode(x0)
        z1, p1, _ = self._encode(x1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach())), z0, f0

    def on_after_batch_transfer(self, batch: list[torch.Tensor], dataloader_idx: int) -> list[torch.Tensor]:
        # uint8 views are crops from loader workers that left colour, grey and blur to the device (augment_on):
        # finish them here, on the GPU, outside autocast (Lightning calls this before training_step).
        x0, x1 = batch
        if x0.dtype == torch.uint8:
            return self.augment.finish(torch.cat([x0, x1]), self._draws, self._host_draws)
        return batch

    def on_train_start(self) -> None:
        # The device augmentation's own generator, seeded per rank: seed_everything gives every DDP process the
        # same seed, so draws from torch's default generator would repeat the same flips, jitters and blurs on
        # every GPU (the loader workers' seeds already differ per rank).
        self._draws = torch.Generator(device=self.device)
        self._draws.manual_seed(augment_seed(self.settings.seed, self.global_rank))
        self._host_draws = torch.Generator().manual_seed(augment_seed(self.settings.seed, self.global_rank))
        # A resumed run's optimiser comes back with the interrupted run's hyperparameters: this run's settings
        # rule (the encoder's lr is set every step; the predictor's fixed lr, momentum and decay here).
        for group in self.optimizers().param_groups:
            group.update(momentum=self.settings.momentum, weight_decay=self.settings.weight_decay)
            if group["fixed_lr"]:
                group["lr"] = self.peak_lr

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0, x1 = batch
        loss, z0, f0 = self.loss(x0, x1)
        self._z_std.append(std_of_l2_normalized(z0.detach().float()))
        if batch_idx == 0:
            # z can look healthy while the backbone features (what the probe and the served model use) collapse
            # onto a few directions; the effective rank of f shows it (1 = one direction, up to min(N, C)).
            self.log(
                "f_erank",
                effective_rank(f0.detach().float()),
                prog_bar=True,
                on_step=False,
                on_epoch=True,
                batch_size=x0.shape[0],
            )
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x0.shape[0])
        encoder_lr = next(g["lr"] for g in self.optimizers().param_groups if g["name"] == "encoder")
        self.log("lr", encoder_lr, on_step=True, on_epoch=False)
        return loss

    def on_fit_start(self) -> None:
        self._fit_start = time.monotonic()

    def elapsed_s(self) -> float:
        """Training seconds so far, across resumes: Lightning's Timer (there whenever max_time is set) restores
        the time of the interrupted run from the checkpoint; without one, the time since this fit started."""
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        return timer.time_elapsed("train") if timer is not None else time.monotonic() - self._fit_start

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        stop.check()  # a Ctrl-C or SIGTERM that landed where it was swallowed (jobs/stop.py) stops the fit here
        # Cosine decay of the encoder lr (paper Sec. 4). With a wall-clock budget the schedule follows
        # whichever ends first, so a CPU run stopped by the budget still ends at a low lr.
        progress = self.global_step / self.total_steps
        if self.settings.time_budget_s > 0:
            elapsed = self.elapsed_s()
            if self.trainer.world_size > 1:  # one clock, rank 0's: every replica steps with the same lr
                elapsed = self.trainer.strategy.broadcast(elapsed, src=0)
            progress = max(progress, elapsed / self.settings.time_budget_s)
        for group in self.optimizers().param_groups:
            if not group["fixed_lr"]:
                group["lr"] = cosine_lr(self.peak_lr, progress)

    def on_train_epoch_end(self) -> None:
        z_std = float(torch.stack(self._z_std).mean()) if self._z_std else 0.0
        self._z_std.clear()
        self.log("z_std", z_std, prog_bar=True, sync_dist=True)
        self.log("z_std_healthy", 1.0 / math.sqrt(self.settings.proj_dim))
        if z_std < self.collapse_floor and self.trainer.is_global_zero:
            self.print(
                f"WARNING: representation collapse: std of l2-normalised z is {z_std:.4f}, healthy is "
                f"~{1 / math.sqrt(self.settings.proj_dim):.4f}; lower lr or check the augmentations"
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        s = self.settings
        encoder = list(self.backbone.parameters()) + list(self.projection_head.parameters())
        # Paper Sec. 4 / Table 1: the predictor keeps a fixed lr (no decay) -- it works better.
        return torch.optim.SGD(
            [
                {"params": encoder, "lr": self.peak_lr, "name": "encoder", "fixed_lr": False},
                {
                    "params": self.prediction_head.parameters(),
                    "lr": self.peak_lr,
                    "name": "predictor",
                    "fixed_lr": True,
                },
            ],
            lr=self.peak_lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
        )
