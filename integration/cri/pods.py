"""Pods for one test: build runtime.v1 configs, run sandboxes and containers, exec, and tear everything down."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from integration.cri.client import CriClient
from integration.harness.image import IMAGE_NAME
from pyoci.protos import cri_api_pb2 as cri

NODE, POD, CONTAINER = cri.NODE, cri.POD, cri.CONTAINER


class ExecFailed(AssertionError):
    pass


@dataclass
class Pod:
    id: str
    name: str
    config: cri.PodSandboxConfig
    client: CriClient
    cgroup_parent: str
    containers: list[str] = field(default_factory=list)

    async def status(self) -> cri.PodSandboxStatusResponse:
        request = cri.PodSandboxStatusRequest(pod_sandbox_id=self.id, verbose=True)
        return await self.client.call("PodSandboxStatus", request)

    async def pid(self) -> int:
        """The pause process's pid on the host."""
        return json.loads((await self.status()).info["info"])["pid"]

    async def ip(self) -> str:
        return (await self.status()).status.network.ip

    async def create(
        self,
        name: str,
        *command: str,
        security: cri.LinuxContainerSecurityContext | None = None,
        resources: cri.LinuxContainerResources | None = None,
        image: str = IMAGE_NAME,
        **config,
    ) -> str:
        request = cri.CreateContainerRequest(
            pod_sandbox_id=self.id,
            sandbox_config=self.config,
            config=cri.ContainerConfig(
                metadata=cri.ContainerMetadata(name=name),
                image=cri.ImageSpec(image=image),
                command=list(command),
                log_path=f"{name}.log",
                linux=cri.LinuxContainerConfig(
                    security_context=security or cri.LinuxContainerSecurityContext(),
                    resources=resources or cri.LinuxContainerResources(),
                ),
                **config,
            ),
        )
        cid = (await self.client.call("CreateContainer", request)).container_id
        self.containers.append(cid)
        return cid

    async def start(self, name: str, *command: str, **kwargs) -> str:
        """Create and start a container; returns its id."""
        cid = await self.create(name, *command, **kwargs)
        await self.client.call("StartContainer", cri.StartContainerRequest(container_id=cid))
        return cid

    async def container_status(self, cid: str) -> cri.ContainerStatusResponse:
        return await self.client.call("ContainerStatus", cri.ContainerStatusRequest(container_id=cid, verbose=True))

    async def container_pid(self, cid: str) -> int:
        return json.loads((await self.container_status(cid)).info["info"])["pid"]

    async def exec(self, cid: str, *cmd: str, timeout: int = 0) -> cri.ExecSyncResponse:
        """ExecSync; the call itself may take ``timeout`` + 15 s (an exec that hangs fails the test, not the suite)."""
        request = cri.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout)
        return await self.client.call("ExecSync", request, timeout=timeout + 15)

    async def sh(self, cid: str, script: str) -> str:
        """``sh -c script`` in the container: its stdout (stripped); a non-zero exit fails the test."""
        result = await self.exec(cid, "sh", "-c", script)
        if result.exit_code != 0:
            raise ExecFailed(f"{script!r} exited {result.exit_code}: {result.stdout!r} {result.stderr!r}")
        return result.stdout.decode().strip()

    async def wait_state(self, cid: str, state: int, timeout: float = 30) -> cri.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = (await self.container_status(cid)).status
            if status.state == state:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"container {cid} never reached {cri.ContainerState.Name(state)}: {status}")
            await asyncio.sleep(0.1)

    def log(self, name: str) -> str:
        return (Path(self.config.log_directory) / f"{name}.log").read_text()


@dataclass
class Pods:
    """The pods of one test, all run with ``handler``; ``teardown()`` stops and removes whatever is left."""

    client: CriClient
    handler: str
    cgroup_root: str
    log_root: Path
    test_name: str
    pods: list[Pod] = field(default_factory=list)

    async def run(
        self,
        name: str = "pod",
        *,
        network: int = POD,
        pid: int = POD,
        ipc: int = POD,
        sysctls: dict[str, str] | None = None,
        privileged: bool = False,
        hostname: str = "",
    ) -> Pod:
        pod_name = f"{self.test_name}-{name}"[:63].strip("-")
        cgroup_parent = f"{self.cgroup_root}/{pod_name}"
        log_dir = self.log_root / pod_name
        log_dir.mkdir(parents=True, exist_ok=True)
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=pod_name, uid=f"uid-{pod_name}", namespace="pyoci-cri"),
            hostname=hostname or (name if network != NODE else ""),
            log_directory=str(log_dir),
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                sysctls=sysctls or {},
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=network, pid=pid, ipc=ipc),
                    privileged=privileged,
                ),
            ),
        )
        request = cri.RunPodSandboxRequest(config=config, runtime_handler=self.handler)
        sandbox_id = (await self.client.call("RunPodSandbox", request)).pod_sandbox_id
        pod = Pod(sandbox_id, pod_name, config, self.client, cgroup_parent)
        self.pods.append(pod)
        return pod

    async def remove(self, pod: Pod) -> None:
        """StopPodSandbox then RemovePodSandbox, as the kubelet does; a pod already gone (NOT_FOUND) is fine."""
        for method, request in (
            ("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod.id)),
            ("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id)),
        ):
            try:
                await self.client.call(method, request)
            except GRPCError as e:
                if e.status != Status.NOT_FOUND:
                    raise

    async def teardown(self) -> list[str]:
        errors = []
        for pod in self.pods:
            try:
                await self.remove(pod)
            except GRPCError as e:
                errors.append(f"removing pod {pod.name}: {e.status.name} {e.message}")
        return errors


def caps(status: str, which: str = "CapEff") -> int:
    """A capability mask from /proc/<pid>/status text."""
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(which + ":")), 16)


def status_field(status: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith(name + ":"))
