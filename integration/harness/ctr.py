"""``ctr`` bound to the harness containerd and a test namespace."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
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

    @contextlib.contextmanager
    def background(self, *args: str) -> Iterator[subprocess.Popen[str]]:
        """``ctr ARGS`` running in the background; ended by its pid when the block is left."""
        runner = self.popen(*args)
        try:
            yield runner
        finally:
            if runner.poll() is None:
                runner.kill()
            runner.wait()

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

    def remove(self, *container_ids: str, timeout: float = 15.0) -> None:
        """SIGKILL each task, wait up to ``timeout`` for it to stop, delete task and container (whatever of them
        exists). A task still CREATED is deleted as it is (containerd deletes a created task): one whose start
        failed, a restore say, has no process to stop."""
        call_timeout = max(60.0, timeout)
        for cid in container_ids:
            self("tasks", "kill", "--signal", "SIGKILL", cid, check=False, timeout=call_timeout)
        for cid in container_ids:
            if self.task_status(cid) not in ("", "CREATED"):
                self.wait_task_status(cid, "STOPPED", timeout=timeout)
            self("tasks", "delete", cid, check=False, timeout=call_timeout)
            self("containers", "delete", cid, check=False, timeout=call_timeout)

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
    """``ctr events`` in the background, read by a thread; ``stop()`` ends it (by pid) and returns what it saw,
    in order — after waiting (up to ``timeout``) for an expected event, if one is named."""

    def __init__(self, ctr: Ctr) -> None:
        self.process = ctr.popen("events")
        self.namespace = ctr.namespace
        self.events: list[Event] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_subscribed(ctr)

    def _wait_subscribed(self, ctr: Ctr, timeout: float = 15.0) -> None:
        """Label the namespace (containerd publishes /namespaces/update) until we see that event: from then on
        nothing is missed. Falls back to a pause if the label cannot be set."""
        deadline = time.monotonic() + timeout
        probe = 0
        while time.monotonic() < deadline:
            probe += 1
            if ctr("namespaces", "label", self.namespace, f"pyoci.test/probe={probe}", check=False).returncode:
                time.sleep(0.3)
                return
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                if any(e.topic == "/namespaces/update" for e in list(self.events)):
                    return
                time.sleep(0.02)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            # "<date> <time> <zone> <zone-name> <namespace> <topic> <json>"
            match = re.match(r"^\S+ \S+ \S+ \S+ (\S+) (\S+) ?(.*)$", line.rstrip("\n"))
            if match and match.group(1) == self.namespace:
                self.events.append(Event(match.group(2), json.loads(match.group(3) or "{}")))

    def stop(self, wait_for: tuple[str, str] | None = None, timeout: float = 10.0, settle: float = 0.3) -> list[Event]:
        """``wait_for=(topic, container_id)``: return once that event arrived (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while wait_for and time.monotonic() < deadline:
            topic, cid = wait_for
            if any(e.topic == topic and e.data.get("container_id") == cid for e in list(self.events)):
                break
            time.sleep(0.05)
        time.sleep(settle)
        self.process.terminate()
        try:
            self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        return list(self.events)


MEMORY_HOG = 'x=0123456789abcdef; while :; do x="$x$x"; done'


def assert_oom_then_exit(
    ctr: Ctr, image: str, container_id: str, runtime: str, *options: str, timeout: float = 60
) -> None:
    """Run a memory hog (``options`` give it a limit) and check what containerd shows: exit status 137, and
    /tasks/oom for this container published before its /tasks/exit."""
    recorder = EventRecorder(ctr)
    result = ctr(
        "run",
        "--rm",
        "--runtime",
        runtime,
        *options,
        image,
        container_id,
        "sh",
        "-c",
        MEMORY_HOG,
        check=False,
        timeout=timeout,
    )
    assert result.returncode == 137, result
    events = recorder.stop(wait_for=("/tasks/exit", container_id), timeout=60)
    mine = [e for e in events if e.data.get("container_id") == container_id]
    topics = [e.topic for e in mine]
    assert "/tasks/oom" in topics, topics
    exit_at = next(i for i, e in enumerate(mine) if e.topic == "/tasks/exit")
    assert topics.index("/tasks/oom") < exit_at and mine[exit_at].data["exit_status"] == 137, topics
