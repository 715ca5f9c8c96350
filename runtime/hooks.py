"""OCI lifecycle hooks: each hook gets the container state JSON on stdin; ``timeout`` is honoured.

prestart/createRuntime/poststart/poststop run in the runtime's namespaces (the parent);
createContainer/startContainer run inside the container's namespaces (the container process itself).
A failing prestart/createRuntime/createContainer/startContainer hook aborts create/start with its kind,
path and exit status in the message; a failing poststart or poststop hook is a warning, and the
remaining hooks still run (runtime-spec 1.1: "the runtime MUST log a warning").
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from .errors import HookError
from .spec import Hook


def run_hooks(
    kind: str, hooks: tuple[Hook, ...], state: dict, *, on_error: Callable[[HookError], None] | None = None
) -> None:
    """Run ``hooks`` in order; the first failure raises, unless ``on_error`` takes it and the rest run."""
    if not hooks:
        return
    payload = json.dumps(state).encode()
    for hook in hooks:
        try:
            run_hook(kind, hook, payload)
        except HookError as exc:
            if on_error is None:
                raise
            on_error(exc)


def run_hook(kind: str, hook: Hook, payload: bytes) -> None:
    argv = list(hook.args) or [hook.path]
    env = dict(item.split("=", 1) for item in hook.env)
    try:
        result = subprocess.run(
            argv,
            executable=hook.path,
            input=payload,
            env=env,
            capture_output=True,
            timeout=hook.timeout,
            close_fds=True,
        )
    except subprocess.TimeoutExpired:
        raise HookError(f"{kind} hook {hook.path}: timed out after {hook.timeout}s") from None
    except OSError as exc:
        raise HookError(f"{kind} hook {hook.path}: cannot run it: {exc.strerror}") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        how = f"status {result.returncode}" if result.returncode > 0 else f"signal {-result.returncode}"
        raise HookError(f"{kind} hook {hook.path}: exited with {how}" + (f": {detail[0]}" if detail[0] else ""))
