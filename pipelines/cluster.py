"""Connect to Ray: an existing cluster when RAY_ADDRESS is set, else a local instance."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None) -> None:
    """Start or join Ray once per process; quiet by default."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def accelerators() -> int:
    """GPUs the Ray cluster has (0 on CPU-only machines)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
