"""The train state every task shares: params, BatchNorm statistics, optimizer state, rng and
an optional weight EMA."""

from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state


class TrainState(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array  # raw uint32 key; the step is folded in for dropout etc.
    # EMA of params and batch_stats; {} when EMA is off (nothing extra in checkpoints).
    ema_params: Any = None
    ema_batch_stats: Any = None

    @property
    def variables(self) -> dict:
        """The model's variables: {'params', 'batch_stats'}."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    def ema(self) -> "TrainState":
        """The same state with the EMA weights in place of the trained ones (for eval)."""
        return self.replace(params=self.ema_params, batch_stats=self.ema_batch_stats)


def create_state(model, tx, rng, init_inputs: tuple, *, ema: bool = False) -> TrainState:
    """Initialises the model's variables on `init_inputs` (a batch of one, e.g. the task's
    `init_inputs()`) and the optimizer state. `ema=True` also keeps a copy of params and
    batch_stats that the train step averages."""
    init_rng, state_rng = jax.random.split(rng)
    inputs = tuple(jnp.asarray(x) for x in init_inputs)
    variables = model.init(init_rng, *inputs, train=False)
    # A plain {} like the train step's: a FrozenDict here makes BN-free models retrace at step 2.
    batch_stats = variables.get("batch_stats", {})
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=batch_stats,
        tx=tx,
        rng=state_rng,
        ema_params=jax.tree.map(jnp.copy, variables["params"]) if ema else {},
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else {},
    )
