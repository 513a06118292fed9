"""One phase: deploy (Redis, N instances, nginx), scrape every instance's /metrics and
read every process's CPU, run locust, scrape and read again, stop everything, and read
back what locust wrote. Whatever happens, what the phase started is stopped."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path

from loadtest.bench_relay import Child, cpu_seconds
from loadtest.scaleout import deployment, driving
from loadtest.scaleout.balancer import upstream_counts
from loadtest.scaleout.deadline import Deadline
from loadtest.scaleout.results import RUNNER, InstanceResult, PhaseResult
from loadtest.scaleout.scraping import (
    Sampler,
    machine_cpu_seconds,
    snapshot,
    tree_cpu_seconds,
)


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have been waited for (reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_phase(
    instances: int,
    plan: driving.LoadPlan,
    *,
    secret: str,
    directory: Path,
    deadline: Deadline,
    announce: Callable[[Child], None],
) -> PhaseResult:
    result = PhaseResult(instance_count=instances, directory=directory)
    deployed = deployment.Deployment(directory / "deployment")
    run = driving.LocustRun(directory / "locust")
    try:
        deployment.start(deployed, instances=instances, secret=secret, announce=announce)
        deadline.remaining("the deployment's start")
        assert deployed.redis is not None and deployed.nginx is not None
        redis, nginx = deployed.redis, deployed.nginx
        result.redis_version = deployed.redis_version
        metrics_dir = directory / "metrics"
        before = snapshot(deployed.instances, metrics_dir, "before")
        cpu_before = {c.name: cpu_seconds(c.pid) for c in deployed.instances}
        cpu_before[redis.name] = cpu_seconds(redis.pid)
        cpu_before[nginx.name] = tree_cpu_seconds(nginx.pid)
        reaped_before = _children_cpu_seconds()
        own_before = time.process_time()
        machine_before = machine_cpu_seconds()

        sampler = Sampler(deployed.instances, lambda: [*deployed.children, *run.children])
        sampler.start()
        try:
            driving.start(run, plan, host=deployed.url, secret=secret)
            for child in run.children:
                announce(child)
            result.locust_returncode = driving.wait(run, deadline)
        finally:
            result.samples = sampler.stop()
        result.failed_scrapes = sampler.failed_scrapes

        machine_after = machine_cpu_seconds()
        own = time.process_time() - own_before
        after = snapshot(deployed.instances, metrics_dir, "after")
        cpu_after = {c.name: cpu_seconds(c.pid) for c in deployed.instances}
        cpu_after[redis.name] = cpu_seconds(redis.pid)
        cpu_after[nginx.name] = tree_cpu_seconds(nginx.pid)
        # Every locust process has been waited for, and no other child since the start.
        result.cpu_seconds = {
            redis.name: cpu_after[redis.name] - cpu_before[redis.name],
            nginx.name: cpu_after[nginx.name] - cpu_before[nginx.name],
            "locust": _children_cpu_seconds() - reaped_before,
            RUNNER: own,
        }
        result.machine_busy_seconds = machine_after[0] - machine_before[0]
        result.machine_seconds = machine_after[1] - machine_before[1]
        ports = [c.port for c in deployed.instances]
        handshakes = upstream_counts(nginx.log_path.parent / "access.log", ports)
        for index, child in enumerate(deployed.instances):
            peaks = [s.instances[index] for s in result.samples]
            result.instances.append(
                InstanceResult(
                    name=child.name,
                    pid=child.pid,
                    port=child.port,
                    metrics=after[index].since(before[index]),
                    cpu_seconds=cpu_after[child.name] - cpu_before[child.name],
                    handshakes=handshakes[index],
                    peak_connections=max((p.connections for p in peaks if p), default=0.0),
                )
            )
    finally:
        run.stop()
        deployed.stop()
        result.pids = {c.name: c.pid for c in [*deployed.children, *run.children]}
    result.started_at, result.ended_at = run.started_at, run.ended_at
    result.read_locust(
        run.file("stats"), run.file("stats_history"), run.file("failures"), run.summary_path
    )
    return result
