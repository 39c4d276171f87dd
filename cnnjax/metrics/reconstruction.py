"""Reconstruction quality: per-image squared error and PSNR, and their exact accumulator."""

import jax.numpy as jnp

from cnnjax.metrics.accumulate import MaskedSums


def psnr(mse, max_value: float = 1.0):
    """Peak signal-to-noise ratio in dB: 10 log10(max_value^2 / mse); mse [...] float ->
    [...] float32. A perfect reconstruction (mse 0) is capped at 100 dB, not infinity."""
    mse = jnp.maximum(jnp.asarray(mse, jnp.float32), max_value**2 * 1e-10)
    return 10.0 * jnp.log10(max_value**2 / mse)


def per_image_errors(prediction, target):
    """prediction, target [B, H, W, C] in [0, 1] -> {'squared_error' [B] (sum over
    pixels and channels), 'values' [B] (H*W*C), 'psnr' [B] (of each image's own MSE)}."""
    sq = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    sse = sq.reshape(sq.shape[0], -1).sum(-1)
    n = jnp.full(sse.shape, sq[0].size, jnp.float32)
    return {"squared_error": sse, "values": n, "psnr": psnr(sse / n)}


class ReconstructionMetrics(MaskedSums):
    """From per-example `loss`, `squared_error`, `values`, `psnr` and `mask`: {'loss' (the
    task loss per image), 'mse' (per value, over every pixel of the split), 'psnr' (the mean
    of the per-image PSNRs, in dB), 'num_examples'}."""

    def result(self) -> dict:
        loss = self.mean("loss")
        return {
            "loss": loss,
            "mse": float(self.totals["squared_error"] / self.totals["values"]),
            "psnr": self.mean("psnr"),
            "num_examples": self.count,
        }
