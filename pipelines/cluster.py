"""Connect to Ray: an existing cluster when RAY_ADDRESS is set, else a local instance."""

from __future__ import annotations

import logging
import os
import sys

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


def local_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ray_up() -> bool:
    """Whether Ray is started in this process."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def cpus() -> int:
    """CPUs of the Ray cluster (this machine's when Ray is not started: an in-process run)."""
    if not ray_up():
        return local_cpus()
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def node_cpus() -> int:
    """CPUs Ray gives the node this process runs on (the whole cluster's when the node is not found;
    this machine's when Ray is not started)."""
    if not ray_up():
        return local_cpus()
    import ray

    node = ray.get_runtime_context().get_node_id()
    for n in ray.nodes():
        if n.get("NodeID") == node and n.get("Alive"):
            return max(1, int(n.get("Resources", {}).get("CPU", 1)))
    return cpus()


def describe_cluster() -> dict:
    """What the manifest records about the cluster: alive nodes, CPUs, GPUs, and whether it was joined."""
    import ray

    res = ray.cluster_resources()
    return {
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "cpus": int(res.get("CPU", 0)),
        "gpus": int(res.get("GPU", 0)),
        "joined": os.environ.get("RAY_ADDRESS", "") not in ("", "local"),
        "engine": "ray",
    }


def describe_local() -> dict:
    """What the manifest records about an in-process run (no Ray): this machine, its CPUs, GPUs torch sees."""
    torch = sys.modules.get("torch")  # imported only when a model stage ran: not worth importing to count
    gpus = torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
    return {"nodes": 1, "cpus": local_cpus(), "gpus": gpus, "joined": False, "engine": "local"}


def lost_workers() -> set[str] | None:
    """Ids of Ray workers that have died of a system error (crash, kill, OOM) so far, or None if unknown.

    Ray re-runs the tasks of a lost worker by itself (Ray Data tasks retry without limit), so a
    run survives it; the runner records how many workers each segment lost. The GCS worker table
    is read through Ray's private state API: if that fails, the answer is None, never an error.
    """
    try:
        from ray._private import state
        from ray.core.generated import common_pb2, gcs_pb2

        lost = set()
        for raw in state.state._connect_and_get_accessor().get_worker_table():
            w = gcs_pb2.WorkerTableData.FromString(raw)
            if not w.is_alive and w.worker_type == common_pb2.WORKER and w.exit_type == common_pb2.SYSTEM_ERROR:
                lost.add(w.worker_address.worker_id.hex())
        return lost
    except Exception as e:  # a private API: degrade to "unknown"
        logger.debug("cannot read the Ray worker table: %s", e)
        return None
