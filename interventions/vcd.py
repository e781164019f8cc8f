"""`vcd`: Visual Contrastive Decoding (Leng et al., CVPR 2024, arXiv:2311.16922).

The contrastive view is the same prompt with the image distorted by the forward diffusion process,
x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps, at step `noise_step`; decoding contrasts the two views
with `interventions.contrastive` ((1+alpha)*logits - alpha*logits_cd with the beta plausibility cut).

Reference behaviour (github.com/DAMO-NLP-SG/VCD):
- `vcd_utils/vcd_add_noise.py` `add_diffusion_noise(image_tensor, noise_step)`: 1000 steps with a SIGMOID
  beta schedule, `betas = sigmoid(linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5`, `abar = cumprod(1 - betas)`,
  noise `torch.randn_like(x_0)` added to the processor's normalised pixel tensor at index `noise_step`
  (0..999). `diffusion_alphas_bar` / `add_diffusion_noise` reproduce it (float32).
- `vcd_utils/vcd_sample.py` (version 2 cutoff): `cutoff = log(cd_beta) + max(logits)` on the raw logits,
  `diffs = (1+cd_alpha)*logits - cd_alpha*logits_cd`, -inf below the cutoff, THEN `logits_processor` and
  `logits_warper` (temperature, top-k, top-p) on the contrasted logits, softmax + multinomial. That is the
  engine's default order (`reference_sampling: false`); `reference_sampling: true` is DAMRO's "direct sample"
  (no processors or warpers), not VCD's. VCD patches only `sample`: its greedy decoding has no contrast; here
  greedy decoding contrasts too.
- Defaults: `eval/object_hallucination_vqa_*.py` argparse cd_alpha 1, cd_beta 0.1, noise_step 500
  (its `cd_scripts/llava1.5_pope.bash` runs cd_beta 0.2, see configs/experiment/vcd_pope_llava15.yaml).

Noise: the reference draws `randn_like` from the global RNG, one image at a time. Here each image draws from
its own CPU generator seeded by (`noise_seed`, the image's bytes), so its noise does not depend on the
batch it is in, on the device or on the dtype, and does not consume the sampling RNG. The noise is added to
the processor's normalised pixel tensor of the image in the family's own layout (`ModelFamily.split_pixels`:
LLaVA's [3, H, W] crop, LLaVA-NeXT's stack of AnyRes crops, Qwen's flattened patches, only the real tiles of
Idefics3), which is the same elementwise Gaussian whatever the layout.
`alpha: 0` reproduces the baseline exactly.
"""
from __future__ import annotations

import hashlib
import zlib
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention
from interventions.contrastive import ContrastiveIntervention, View, views_from_pixels

NUM_DIFFUSION_STEPS = 1000


def diffusion_alphas_bar(num_steps: int = NUM_DIFFUSION_STEPS) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s) for VCD's sigmoid beta schedule (float32, as the reference)."""
    betas = torch.linspace(-6, 6, num_steps)
    betas = torch.sigmoid(betas) * (0.5e-2 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0)


def add_diffusion_noise(x0: torch.Tensor, noise_step: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A sample of q(x_t | x_0) at t = noise_step: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, eps ~ N(0, I).

    eps is drawn on the CPU in float32 (from `generator`, else the global RNG); the result has x0's dtype
    and device.
    """
    t = int(noise_step)
    if not 0 <= t < NUM_DIFFUSION_STEPS:
        raise ValueError(f"vcd noise_step must be in 0..{NUM_DIFFUSION_STEPS - 1}, got {noise_step}")
    abar = diffusion_alphas_bar()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    x = x0.detach().to("cpu", torch.float32)
    out = torch.sqrt(abar)[t] * x + torch.sqrt(1 - abar)[t] * noise
    return out.to(x0.device, x0.dtype)


def row_seed(noise_seed: int, image: Any = None, pixels: torch.Tensor | None = None) -> int:
    """A per-row noise seed from the run's noise_seed and the row's image (PIL bytes, else its pixels).

    The image bytes are fingerprinted with CRC-32 and Adler-32 (fast; a collision would only reuse a noise
    draw), then mixed with the seed, mode and size through SHA-256.
    """
    if image is not None and hasattr(image, "tobytes"):
        data, tag = image.tobytes(), f"{image.mode}{image.size}"
    else:
        data, tag = pixels.detach().to("cpu", torch.float32).numpy().tobytes(), f"pixels{tuple(pixels.shape)}"
    key = f"{int(noise_seed)}|{tag}|{zlib.crc32(data)}|{zlib.adler32(data)}|{len(data)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def noised_pixels(pieces: Sequence[torch.Tensor], noise_step: int, noise_seed: int,
                  images: list | None = None) -> list[torch.Tensor]:
    """Per-image pixel tensors (`ModelFamily.split_pixels`) diffused to `noise_step`, each image from its own
    generator."""
    out = []
    use_images = images is not None and len(images) == len(pieces)
    for i, piece in enumerate(pieces):
        seed = row_seed(noise_seed, images[i] if use_images else None, piece)
        gen = torch.Generator().manual_seed(seed)
        out.append(add_diffusion_noise(piece, noise_step, gen))
    return out


@INTERVENTIONS.register("vcd")
class Vcd(ContrastiveIntervention, Intervention):
    """Visual contrastive decoding against a diffusion-noised copy of the image (see the module docstring)."""

    name = "vcd"
    strength_key = "alpha"

    def views(self, adapter: Any, batch: Any) -> list[View]:
        """(original, noised) views, both images encoded in one vision pass."""
        pieces = adapter.spec.split_pixels(adapter.spec.vision_inputs(batch.inputs))
        noisy = noised_pixels(pieces, int(self.cfg["noise_step"]), int(self.cfg["noise_seed"]),
                              getattr(batch, "images", None))
        return views_from_pixels(adapter, batch.inputs, [pieces, noisy])

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """A plan whose generate_fn is the contrastive engine with the noised view."""
        yield GenerationPlan(generate_fn=self.generate_fn(adapter))
