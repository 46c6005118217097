"""Following children: refused without a process to follow, and the program it generates (the followed
map instead of the single pid, the two tracepoint programs at this kernel's record offsets)."""
from __future__ import annotations

import re

import pytest

from usdtkit.bpf import codegen
from usdtkit.bpf.follow import FollowFormat
from usdtkit.errors import UsageError
from usdtkit.plan.plan import AttachPlan
from usdtkit.plan.refs import ProbeRef
from usdtkit.plan.request import Target, TraceRequest, make_request
from usdtkit.plan.resolve import ResolvedProbe, Site
from usdtkit.tracing.api import trace

PROBE = "usdt:/nonexistent/app:p:n"  # nothing is resolved: the refusals come first


def test_follow_needs_a_pid_or_a_command():
    with pytest.raises(UsageError, match="^follow traces the descendants of a process: give a pid or a command"):
        Target(follow=True)
    with pytest.raises(UsageError, match="give a pid or a command"):
        trace(PROBE, follow=True)
    with pytest.raises(UsageError, match="follow is True or False"):
        Target(7, follow=1)  # type: ignore[arg-type]
    request = make_request([PROBE], target=Target(7, follow=True))
    assert request.target.follow and not make_request([PROBE], target=Target(7)).target.follow


def plan(follow: bool) -> AttachPlan:
    probe = ResolvedProbe(ProbeRef("usdt", "/app", "n", "p"), "/app", (Site("/app", 0x1000, 0x1000),), 0)
    return AttachPlan(TraceRequest((probe.ref,), Target(7, follow=follow)), (probe,), 7)


def test_a_followed_trace_checks_the_map_where_a_single_process_checks_config():
    fmt = FollowFormat(child_pid=8, clone_flags=32, group_dead=32)
    followed = codegen.generate(plan(True), follow_format=fmt)
    single = codegen.generate(plan(False))
    assert "followed.lookup(&pid)" in followed.text and "config" not in followed.text
    assert "config.lookup" in single.text and "followed" not in single.text
    assert set(followed.maps) - set(single.maps) == {"followed", "follow_lost"} and "config" in single.maps
    assert [tuple(t) for t in followed.tracepoints] == [("usdtkit_newtask", "task", "task_newtask"),
                                                       ("usdtkit_exit", "sched", "sched_process_exit")]
    assert single.tracepoints == ()
    assert ("struct usdtkit_newtask_record { u64 common; u32 pid; u8 before_clone_flags[20]; u64 clone_flags; };"
            in followed.text)
    assert "if (record->clone_flags & 0x10000) return 0;" in followed.text  # threads are not entries
    assert "struct usdtkit_exit_record { u64 common; u8 before_group_dead[24]; u8 group_dead; };" in followed.text


def test_without_group_dead_a_process_leaves_when_its_main_thread_exits():
    text = codegen.generate(plan(True), follow_format=FollowFormat(8, 32)).text
    exit_program = re.search(r"int usdtkit_exit\(.*?\n}", text, re.S).group(0)
    assert "group_dead" not in exit_program and "if ((u32)id == process) followed.delete(&process);" in exit_program
