"""BatchNorm with a hand-written backward pass that keeps only the input for it.

`flax.linen.BatchNorm`, differentiated by JAX, keeps float32 copies of `x - mean` and of
`x` (for E[x^2]) per layer until the backward pass: 8 bytes per activation where the
bfloat16 input is 2. Training a ResNet-50 on an H100 is bound by exactly these memory-bound
BatchNorm passes (BENCHMARKS.md: reductions and elementwise fusions are 56% of the step,
convolutions 32%). This BatchNorm has flax's variables, defaults and forward numerics
(one-pass variance in float32, running statistics updated outside initialisation) and a
`jax.custom_vjp` whose residuals are the input in its own dtype plus per-channel mean and
1/std; the backward pass recomputes x_hat inside its reductions:

    x_hat = (x - mean) / std,  dbias = sum(dy),  dscale = sum(dy * x_hat),
    dx = scale / std * (dy - dbias / n - x_hat * dscale / n)

(sums over all axes but the feature axis, n elements each). Gradients equal JAX's
derivative of flax's formula up to float rounding (tests/test_batch_norm.py).

`BatchNorm(kernels='onednn')` (what `train.batch_norm='onednn'` builds) computes a float32
NHWC training step with oneDNN's fused kernels instead (cnnjax/ops/onednn.py; the variance
two-pass rather than flax's E[x^2] - E[x]^2, equal to float rounding); other dtypes and
shapes, and evaluation, stay on the formulas above.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.ops import onednn


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, out_dtype):
    """x [..., C] -> (y [..., C] in out_dtype, batch mean [C], batch variance [C])."""
    return _forward(x, scale, bias, epsilon, out_dtype)[0]


def _stats(x):
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = xf.mean(axes)
    var = jnp.maximum(0.0, (xf * xf).mean(axes) - mean * mean)  # flax's fast variance
    return mean, var


def _forward(x, scale, bias, epsilon, out_dtype):
    mean, var = _stats(x)
    inv = jax.lax.rsqrt(var + epsilon)
    y = (x.astype(jnp.float32) - mean) * (inv * scale) + bias
    return (y.astype(out_dtype), mean, var), (x, mean, inv, scale)


def _backward(epsilon, out_dtype, residuals, cotangents):
    del epsilon, out_dtype
    x, mean, inv, scale = residuals
    dy = cotangents[0].astype(jnp.float32)  # cotangents of mean/var: running stats only
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    x_hat = (x.astype(jnp.float32) - mean) * inv
    dbias = dy.sum(axes)
    dscale = (dy * x_hat).sum(axes)
    dx = (scale * inv) * (dy - dbias / n - x_hat * (dscale / n))
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
    """Drop-in for `nn.BatchNorm` over the last axis (the NHWC models' feature axis), with
    the same variables: params `scale`, `bias`; batch_stats `mean`, `var`."""

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    kernels: str = "xla"  # xla | onednn (the training step; see the module docstring)

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_ra = nn.merge_param("use_running_average", self.use_running_average,
                                use_running_average)  # fmt: skip
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        out_dtype = self.dtype or jnp.result_type(x, scale)
        if use_ra:
            inv = jax.lax.rsqrt(ra_var.value + self.epsilon)
            y = (x.astype(jnp.float32) - ra_mean.value) * (inv * scale) + bias
            return y.astype(out_dtype)
        if self.kernels not in ("xla", "onednn"):
            raise ValueError(f"BatchNorm kernels {self.kernels!r} is not 'xla' or 'onednn'")
        if self.kernels == "onednn" and onednn.batch_norm_applies(x) and out_dtype == jnp.float32:
            y, mean, var = onednn.batch_norm_train(x, scale, bias, self.epsilon)
        else:
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, out_dtype)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean
            ra_var.value = m * ra_var.value + (1 - m) * var
        return y
