"""MAR's diffusion head (DiffLoss): a small AdaLN MLP that denoises one latent token at a time.

The decoder output ``z`` of every token conditions a Gaussian diffusion over that token's
16 latent channels. Training (paper Eq. 17) draws a timestep and noise per row and returns
the noise MSE plus the variational-bound term of the learned variance (improved DDPM's hybrid
loss, as MAR trains it); sampling runs the respaced reverse process, optionally with
classifier-free guidance on the noise prediction.

Facts this follows (docs/upstream/harmon.md section 4): 1000-step cosine schedule, epsilon
prediction, learned-range variance, ``loss = mse + vb`` per row, 100 respaced sampling steps,
temperature scales the per-step noise, CFG mixes only the eps channels. Parameter names match
``mar.diffloss.net.*`` in the released checkpoints. Unlike upstream, every random draw takes a
``torch.Generator`` so generation is reproducible on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# --- the Gaussian diffusion ----------------------------------------------------------------------


def cosine_betas(num_steps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = np.arange(num_steps, dtype=np.float64)
    return np.array(
        [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in steps]
    )


def spaced_timesteps(num_steps: int, count: int) -> list[int]:
    """``count`` evenly spread timesteps of ``num_steps``, as ``space_timesteps`` with one section
    (improved-diffusion / MAR / Harmon ``respace.py``): the fractional stride ``(num_steps - 1) /
    (count - 1)`` is added to a running float total one step at a time and each total is rounded
    (Python ``round``, half to even). This is not ``round(i * stride)``: the accumulated sum drifts
    in the last bits, which picks another timestep for 278 of the 1000 counts (21 steps: 499, where
    ``round(10 * 49.95)`` gives 500)."""
    if not 1 <= count <= num_steps:
        raise ValueError(f"cannot take {count} sampling steps out of {num_steps}")
    stride = 1 if count == 1 else (num_steps - 1) / (count - 1)
    taken, total = [], 0.0
    for _ in range(count):
        taken.append(round(total))
        total += stride
    return sorted(set(taken))


def _normal_kl(mean1, logvar1, mean2, logvar2):  # noqa: ANN001, ANN202 - elementwise tensor algebra
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log likelihood of x under a Gaussian discretised into 8-bit bins on [-1, 1] (the t = 0 term)."""

    def cdf(v: torch.Tensor) -> torch.Tensor:  # tanh approximation of the standard normal CDF
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))

    inv_std = torch.exp(-log_scale)
    cdf_plus = cdf(inv_std * (x - mean + 1.0 / 255))
    cdf_min = cdf(inv_std * (x - mean - 1.0 / 255))
    log_probs = torch.where(
        x < -0.999,
        cdf_plus.clamp_min(1e-12).log(),
        torch.where(
            x > 0.999, (1.0 - cdf_min).clamp_min(1e-12).log(), (cdf_plus - cdf_min).clamp_min(1e-12).log()
        ),
    )
    return -log_probs


class GaussianDiffusion:
    """A (possibly respaced) discrete Gaussian diffusion with learned-range variance.

    ``timestep_map[i]`` is the original timestep the network sees at respaced step i.
    """

    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None) -> None:
        self.num_timesteps = len(betas)
        self.timestep_map = torch.tensor(timestep_map or list(range(len(betas))))
        acp = np.cumprod(1.0 - betas)
        acp_prev = np.append(1.0, acp[:-1])
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        self._arrays = {
            "sqrt_acp": np.sqrt(acp),
            "sqrt_1m_acp": np.sqrt(1.0 - acp),
            "sqrt_recip_acp": np.sqrt(1.0 / acp),
            "sqrt_recipm1_acp": np.sqrt(1.0 / acp - 1),
            # the first posterior variance is 0: use the second, as improved DDPM does
            "post_log_var": np.log(np.append(post_var[1], post_var[1:])),
            "post_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
            "post_coef2": (1.0 - acp_prev) * np.sqrt(1.0 - betas) / (1.0 - acp),
            "log_betas": np.log(betas),
        }
        self._tensors: dict[torch.device, dict[str, torch.Tensor]] = {}

    @classmethod
    def respaced(cls, base_betas: np.ndarray, count: int) -> GaussianDiffusion:
        """The diffusion restricted to ``count`` of the base timesteps, with betas recomputed."""
        keep = spaced_timesteps(len(base_betas), count)
        acp = np.cumprod(1.0 - base_betas)
        betas, last = [], 1.0
        for t in keep:
            betas.append(1.0 - acp[t] / last)
            last = acp[t]
        return cls(np.array(betas), keep)

    def _take(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """arr[t] as float32 (N, 1), cached per device."""
        per_device = self._tensors.setdefault(
            t.device, {k: torch.from_numpy(v).float().to(t.device) for k, v in self._arrays.items()}
        )
        return per_device[name][t].unsqueeze(-1)

    def p_mean_variance(
        self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t) from the network output (eps | v), Eq. 17's eps."""
        C = x_t.shape[-1]
        eps, v = out[:, :C], out[:, C:]
        frac = (v + 1) / 2  # learned range between the posterior variance and beta
        log_var = frac * self._take("log_betas", t) + (1 - frac) * self._take("post_log_var", t)
        x0 = self._take("sqrt_recip_acp", t) * x_t - self._take("sqrt_recipm1_acp", t) * eps
        mean = self._take("post_coef1", t) * x0 + self._take("post_coef2", t) * x_t
        return mean, log_var

    def training_losses(
        self, net: Callable[..., torch.Tensor], x0: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Per-row loss: eps MSE + the vb term of the variance (the mean is frozen there)."""
        x_t = self._take("sqrt_acp", t) * x0 + self._take("sqrt_1m_acp", t) * noise
        out = net(x_t, self.timestep_map.to(t.device)[t], c).float()
        C = x0.shape[-1]
        mse = (noise - out[:, :C]).pow(2).mean(-1)
        frozen = torch.cat([out[:, :C].detach(), out[:, C:]], dim=1)
        mean, log_var = self.p_mean_variance(frozen, x_t, t)
        true_mean = self._take("post_coef1", t) * x0 + self._take("post_coef2", t) * x_t
        kl = _normal_kl(true_mean, self._take("post_log_var", t), mean, log_var).mean(-1) / math.log(2.0)
        nll = _discretized_gaussian_nll(x0, mean, 0.5 * log_var).mean(-1) / math.log(2.0)
        return mse + torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def p_sample_loop(
        self, net: Callable[..., torch.Tensor], x: torch.Tensor, c: torch.Tensor, temperature: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:  # fmt: skip
        """Run the reverse process from noise ``x``; the per-step noise is scaled by ``temperature``."""
        timestep_map = self.timestep_map.to(x.device)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            mean, log_var = self.p_mean_variance(net(x, timestep_map[t], c).float(), x, t)
            if i == 0:
                x = mean
            else:
                x = mean + torch.exp(0.5 * log_var) * _randn(x.shape, generator, x.device) * temperature
        return x


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise from ``generator`` (drawn on its device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


# --- the denoising network (names as in MAR's SimpleMLPAdaLN) -------------------------------------


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (cos then sin, 256 of them) through a two-layer MLP."""

    def __init__(self, hidden: int, frequencies: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frequencies = frequencies

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """eps (and variance) of one noisy token, conditioned on timestep + decoder output (y = t + c)."""

    def __init__(self, in_channels: int, width: int, out_channels: int, z_channels: int, depth: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, out_channels)
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for layer in [
            *(b.adaLN_modulation[-1] for b in self.res_blocks),
            self.final_layer.adaLN_modulation[-1],
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x.to(self.input_proj.weight.dtype))
        y = self.time_embed(t) + self.cond_embed(c.to(self.cond_embed.weight.dtype))
        for block in self.res_blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, y, use_reentrant=False)
            else:
                x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Rows are [conditional; unconditional]: eps = uncond + scale (cond - uncond) for both halves."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, c)
        eps, rest = out[:, : self.in_channels], out[:, self.in_channels :]
        cond, uncond = eps.chunk(2)
        guided = uncond + scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)


class DiffLoss(nn.Module):
    """The head: ``net`` plus the 1000-step training diffusion and the respaced sampling one."""

    def __init__(
        self, target_channels: int, z_channels: int, depth: int, width: int, num_sampling_steps: int = 100
    ) -> None:
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, 2 * target_channels, z_channels, depth)
        betas = cosine_betas(1000)
        self.train_diffusion = GaussianDiffusion(betas)
        self.gen_diffusion = GaussianDiffusion.respaced(betas, num_sampling_steps)
        self._betas = betas

    def set_sampling_steps(self, steps: int) -> None:
        if steps != self.gen_diffusion.num_timesteps:
            self.gen_diffusion = GaussianDiffusion.respaced(self._betas, steps)

    def forward(
        self, target: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-row loss (rows, ) of denoising ``target`` (rows, C) given ``z`` (rows, D) (Eq. 17)."""
        rows, device = target.shape[0], target.device
        gen_device = generator.device if generator is not None else device
        t = torch.randint(
            0, self.train_diffusion.num_timesteps, (rows,), generator=generator, device=gen_device
        )
        noise = _randn(tuple(target.shape), generator, device)
        return self.train_diffusion.training_losses(self.net, target.float(), t.to(device), z, noise)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        cfg: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latent tokens (rows, C) for conditions ``z``; with cfg != 1 the rows are [cond; uncond]
        and both halves start from the same noise."""
        if cfg != 1.0:
            noise = _randn((z.shape[0] // 2, self.in_channels), generator, z.device)
            noise = torch.cat([noise, noise])
            net = lambda x, t, c: self.net.forward_with_cfg(x, t, c, cfg)  # noqa: E731
        else:
            noise = _randn((z.shape[0], self.in_channels), generator, z.device)
            net = self.net
        return self.gen_diffusion.p_sample_loop(net, noise, z, temperature, generator)


# --- the loss on a plan's targets ------------------------------------------------------------
def diffusion_loss(
    diffloss: DiffLoss,
    z: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    batch_mul: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. 17 on the plan's targets: the DiffLoss of every token with ``weight > 0``, each repeated
    ``batch_mul`` times, weighted by ``weight`` and normalised by its sum.

    ``z`` (B, N, D) is the MAR decoder output, ``target`` (B, N, C) the clean latents. Tokens of
    weight 0 (seen, or dropped by drop-loss) never reach the head, so they cannot change the loss.
    Equals upstream's ``(loss * mask).sum() / mask.sum()`` over the repeated rows for 0/1 weights.
    """
    rows = weight > 0
    if not bool(rows.any()):
        return z.sum() * 0.0  # keeps every parameter in the graph
    w = weight[rows].float()
    zs, ts = z[rows], target[rows]
    per_row = diffloss(ts.repeat(batch_mul, 1), zs.repeat(batch_mul, 1), generator)
    per_token = per_row.view(batch_mul, -1).mean(0)
    return (per_token * w).sum() / w.sum()
