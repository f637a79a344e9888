"""Benchmarks: throughput against the PyTorch reference, the paper's grid planned for pods, accelerators."""


def repeated_step(train_step, state, batch, mesh):
    """A no-argument function running one blocking train step on `batch`, carrying the state along."""
    import jax

    from xlit_jax import sharding

    holder = {"state": state}

    def step():
        with sharding.activate(mesh):
            holder["state"], metrics = train_step(holder["state"], batch)
        jax.block_until_ready(metrics)

    return step
