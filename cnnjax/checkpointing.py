"""Orbax checkpoints of the train state and the grain iterator, in `workdir/checkpoints/<step>`.

Retention keeps the latest `keep` checkpoints plus the best one by an eval metric; the
newest is always among the latest, so it is never deleted.
"""

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


class Checkpointer:
    def __init__(self, directory, *, keep: int, best_metric: str, best_mode: str = "max"):
        policy = cm.AnyPreservationPolicy(
            [
                cm.LatestN(n=max(1, keep)),
                cm.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=True, create=True
        )
        self.manager = ocp.CheckpointManager(
            directory, options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, metrics: dict | None = None) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            metrics=metrics,
        )

    def restore(self, step: int, abstract_state):
        """-> (state placed like `abstract_state`, data iterator state dict)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"]

    def restore_state(self, step: int, abstract_state):
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state, sharding):
    """ShapeDtypeStructs of `state` placed with `sharding` (a restore target)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state
    )
