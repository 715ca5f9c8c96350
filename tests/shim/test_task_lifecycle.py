"""The process state machine on its own: which operation each state allows, where it leads, what it says."""

from __future__ import annotations

import pytest

from pyoci.runtime.errors import InvalidState
from pyoci.shim.task import CREATED, DELETED, PAUSED, RUNNING, STOPPED, Lifecycle

ALLOWED = {
    (CREATED, "start"): RUNNING,
    (CREATED, "exit"): STOPPED,
    (CREATED, "delete"): DELETED,
    (RUNNING, "pause"): PAUSED,
    (RUNNING, "exec"): RUNNING,
    (RUNNING, "exit"): STOPPED,
    (PAUSED, "resume"): RUNNING,
    (PAUSED, "exit"): STOPPED,
    (STOPPED, "delete"): DELETED,
}


@pytest.mark.parametrize("status", [CREATED, RUNNING, PAUSED, STOPPED, DELETED], ids=str)
@pytest.mark.parametrize("op", ["start", "pause", "resume", "exec", "delete", "exit"])
def test_each_state_allows_exactly_its_operations(status, op):
    machine = Lifecycle("container c1", "container", status)
    if (status, op) in ALLOWED:
        assert machine.require(op) is ALLOWED[status, op]
    else:
        with pytest.raises(InvalidState, match=r"^container c1: cannot "):
            machine.require(op)
    assert machine.status is status  # require never changes the state


def test_refusals_read_like_containerds():
    def refusal(status, op, noun="container"):
        with pytest.raises(InvalidState) as err:
            Lifecycle("x", noun, status).require(op)
        return str(err.value)

    assert refusal(PAUSED, "exec") == "x: cannot exec in a paused state"
    assert refusal(CREATED, "exec") == "x: cannot exec in a created state"
    assert refusal(RUNNING, "delete") == "x: cannot delete a running container, kill it first"
    assert refusal(RUNNING, "delete", "process") == "x: cannot delete a running process"
    assert refusal(STOPPED, "start", "process") == "x: cannot start a stopped process"


def test_an_exit_during_an_operation_wins():
    machine = Lifecycle("container c1", "container")
    machine.require("start")
    assert machine.exit() is True  # the init died while the runtime was starting it
    machine.advance("start")
    assert machine.status is STOPPED
    assert machine.exit() is False  # recorded once


def test_a_deleted_process_stays_deleted():
    machine = Lifecycle("container c1", "container", DELETED)
    assert (machine.exit(), machine.status) == (False, DELETED)  # its kill by Delete is not a task exit
    for op in ("delete", "start", "resume"):
        machine.advance(op)
    assert machine.status is DELETED
