"""``ctr`` bound to the harness containerd and a test namespace."""

from __future__ import annotations

import subprocess
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
