"""``ctr`` bound to the harness containerd and a test namespace."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass


class CtrError(AssertionError):
    pass


@dataclass
class Ctr:
    address: str
    namespace: str
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.address, "--namespace", self.namespace, *args]

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise CtrError(f"ctr {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def popen(self, *args: str, **kwargs) -> subprocess.Popen[str]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.argv(*args), text=True, env=self.env, **kwargs)

    def task_status(self, container_id: str) -> str:
        for line in self("tasks", "list").stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == container_id:
                return parts[-1]
        return ""

    def task_pid(self, container_id: str) -> int:
        for line in self("tasks", "list").stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == container_id:
                return int(parts[1])
        raise CtrError(f"no task {container_id}")

    def wait_task_status(self, container_id: str, status: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.task_status(container_id) == status:
                return
            time.sleep(0.05)
        raise CtrError(f"task {container_id} never became {status}:\n{self('tasks', 'list').stdout}")


@dataclass
class Event:
    topic: str
    data: dict


class EventRecorder:
    """``ctr events`` in the background; ``stop()`` ends it (by pid) and returns what it saw, in order."""

    def __init__(self, ctr: Ctr) -> None:
        self.process = ctr.popen("events")
        self.namespace = ctr.namespace
        time.sleep(0.3)  # let the subscription register

    def stop(self, settle: float = 0.5) -> list[Event]:
        time.sleep(settle)
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        events = []
        for line in out.splitlines():
            # "<date> <time> <zone> <zone-name> <namespace> <topic> <json>"
            match = re.match(r"^\S+ \S+ \S+ \S+ (\S+) (\S+) ?(.*)$", line)
            if match and match.group(1) == self.namespace:
                events.append(Event(match.group(2), json.loads(match.group(3) or "{}")))
        return events
