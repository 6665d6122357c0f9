"""The paper's optimiser and learning-rate schedules (spec s12), keras.ops only.

`PaperAdafactor` follows the reference's (legacy Flax) Adafactor:

* second moment with decay `beta2_t = 1 - t^-0.8` (t = 1 on the first step),
  `epsilon1 = 1e-30` added to g^2;
* factored over the two largest axes when the second-largest is >= 128
  (`min_dim_size_to_factor`), else a full second moment;
* update clipped to RMS <= `clipping_threshold` (1.0);
* parameter scaling: step = lr * max(RMS(param), epsilon2 = 1e-3) * update;
* `beta1 = 0.9` momentum applied to that final step, not to the gradient;
* no weight decay.

`RsqrtWarmup` is `lr = base * rsqrt(max(step, warmup)) * min(step, warmup) /
warmup` (peak 0.0316 at step 1000 for base 1.0), `WarmupCosine` a linear
warmup then cosine decay to `final_fraction * peak`.
"""

import math

import keras
import numpy as np
from keras import ops


def factored_dims(shape, min_dim_size_to_factor=128):
    """(second-largest axis, largest axis) or None, as the reference."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


@keras.saving.register_keras_serializable(package="brt_keras")
class PaperAdafactor(keras.optimizers.Optimizer):
    """Adafactor as the Block-Recurrent Transformer paper trains with it.

    Args:
        learning_rate: float or schedule (the paper: `RsqrtWarmup()`).
        beta1: momentum on the final step (None: no momentum).
        decay_rate: exponent of the second-moment decay, 0.8.
        clipping_threshold: RMS clip of the update, 1.0.
        epsilon1, epsilon2: 1e-30 (added to g^2), 1e-3 (parameter scale floor).
        min_dim_size_to_factor: 128.
        multiply_by_parameter_scale: True.
    """

    def __init__(
        self,
        learning_rate=1.0,
        beta1=0.9,
        decay_rate=0.8,
        clipping_threshold=1.0,
        epsilon1=1e-30,
        epsilon2=1e-3,
        min_dim_size_to_factor=128,
        multiply_by_parameter_scale=True,
        name="paper_adafactor",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta1 = beta1
        self.decay_rate = decay_rate
        self.clipping_threshold = clipping_threshold
        self.epsilon1 = epsilon1
        self.epsilon2 = epsilon2
        self.min_dim_size_to_factor = min_dim_size_to_factor
        self.multiply_by_parameter_scale = multiply_by_parameter_scale

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._v_row, self._v_col, self._v, self._m = [], [], [], []
        for var in var_list:
            shape = tuple(var.shape)
            dims = factored_dims(shape, self.min_dim_size_to_factor)
            if dims is None:
                self._v_row.append(None)
                self._v_col.append(None)
                self._v.append(self.add_variable(shape, dtype="float32", name="v"))
            else:
                d1, d0 = dims
                row = tuple(s for i, s in enumerate(shape) if i != d0)
                col = tuple(s for i, s in enumerate(shape) if i != d1)
                self._v_row.append(
                    self.add_variable(row, "zeros", "float32", name="v_row")
                )
                self._v_col.append(
                    self.add_variable(col, "zeros", "float32", name="v_col")
                )
                self._v.append(None)
            if self.beta1 is not None:
                self._m.append(self.add_variable(shape, "zeros", "float32", name="m"))
            else:
                self._m.append(None)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        lr = ops.cast(learning_rate, "float32")
        grad = ops.cast(gradient, "float32")
        param = ops.cast(variable, "float32")
        step = ops.cast(self.iterations + 1, "float32")
        decay = 1.0 - ops.power(step, -self.decay_rate)
        mixing = 1.0 - decay
        grad_sqr = ops.square(grad) + self.epsilon1
        dims = factored_dims(tuple(variable.shape), self.min_dim_size_to_factor)
        if dims is None:
            v = self._v[index]
            new_v = decay * v + mixing * grad_sqr
            self.assign(v, new_v)
            y = grad * ops.rsqrt(new_v)
        else:
            d1, d0 = dims
            v_row, v_col = self._v_row[index], self._v_col[index]
            new_row = decay * v_row + mixing * ops.mean(grad_sqr, axis=d0)
            new_col = decay * v_col + mixing * ops.mean(grad_sqr, axis=d1)
            self.assign(v_row, new_row)
            self.assign(v_col, new_col)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_col_mean = ops.mean(new_row, axis=reduced_d1, keepdims=True)
            row_factor = ops.rsqrt(new_row / row_col_mean)
            col_factor = ops.rsqrt(new_col)
            y = (
                grad
                * ops.expand_dims(row_factor, axis=d0)
                * ops.expand_dims(col_factor, axis=d1)
            )
        if self.clipping_threshold is not None:
            rms = ops.sqrt(ops.mean(ops.square(y)))
            y = y / ops.maximum(1.0, rms / self.clipping_threshold)
        update = lr * y
        if self.multiply_by_parameter_scale:
            scale = ops.sqrt(ops.mean(ops.square(param)))
            update = update * ops.maximum(scale, self.epsilon2)
        if self.beta1 is not None:
            m = self._m[index]
            update = self.beta1 * m + (1.0 - self.beta1) * update
            self.assign(m, update)
        self.assign_sub(variable, ops.cast(update, variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            beta1=self.beta1,
            decay_rate=self.decay_rate,
            clipping_threshold=self.clipping_threshold,
            epsilon1=self.epsilon1,
            epsilon2=self.epsilon2,
            min_dim_size_to_factor=self.min_dim_size_to_factor,
            multiply_by_parameter_scale=self.multiply_by_parameter_scale,
        )
        return config


@keras.saving.register_keras_serializable(package="brt_keras")
class RsqrtWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`base * rsqrt(max(step, warmup)) * min(step, warmup) / warmup`."""

    def __init__(self, base=1.0, warmup_steps=1000):
        self.base = base
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        return (
            self.base
            * ops.rsqrt(ops.maximum(step, warmup))
            * ops.minimum(step, warmup)
            / warmup
        )

    def get_config(self):
        return {"base": self.base, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="brt_keras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, then cosine decay to `final_fraction * peak`
    at `total_steps` (the reference default: 0.01 -> 0.001)."""

    def __init__(self, peak=0.01, total_steps=1000, warmup_steps=0, final_fraction=0.1):
        self.peak = peak
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.final_fraction = final_fraction

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        ramp = ops.minimum(step / warmup, 1.0) if self.warmup_steps else 1.0
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        frac = self.final_fraction + (1.0 - self.final_fraction) * cosine
        return self.peak * ramp * frac

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_fraction": self.final_fraction,
        }
