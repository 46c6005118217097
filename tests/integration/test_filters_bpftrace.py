"""The same filters through usdtkit and bpftrace, on the same hits: the counts must agree.

bpftrace and one usdtkit session per filter attach at once to ``programs/filter_target.c`` processes,
which then make their hits; every operator, cast, string form and builtin is tried.  The predicates
keep to what both tools define alike: bpftrace 0.17 types every USDT argument and ``retval`` as
unsigned 64-bit (it warns that mixing signs is undefined), where usdtkit gives a USDT argument the
sign its notes declare and ``retval`` a sign, so order comparisons of those go through a cast here
(their usdtkit meaning is checked against the target's own account in test_filters.py).
"""
from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from typing import Dict, List

import pytest

from usdtkit.plan.cgroups import cgroup2_mounts, cgroup_id
from usdtkit.tracing.api import trace

TARGETS = ((1, 0), (2, 20), (1, 40))  # (threads, base), as in test_filters.py


def _predicates(pids: List[int], tids: List[int], cpus: List[int], cgroup: int) -> Dict[str, List[str]]:
    """probe kind -> filters; literals chosen so that most filters keep some hits and drop others."""
    usdt = [
        # comparisons on the unsigned argument (values on both sides of 2^63)
        "arg1 == 31", "arg1 != 31", "arg1 < 0x8000000000000000", "arg1 <= 21", "arg1 > 21",
        "arg1 >= 0xffffffffffffff14",
        # arithmetic, bitwise, shifts, unary
        "arg1 + 5 == 26", "arg1 - 1 == 30", "arg1 * 3 == 63", "arg1 / 2 == 10", "arg1 % 3 == 1",
        "(arg1 & 3) == 3", "(arg1 | 1) == 21", "(arg1 ^ 1) == 20", "arg1 << 60 != 0", "arg1 >> 60 == 15",
        "~arg1 < 0x100", "-arg1 < 0x100", "!(arg1 & 1)",
        # logic and grouping
        "arg1 == 31 || arg1 == 21", "arg1 > 20 && arg1 < 50", "!(arg1 > 20 && arg1 < 50) && arg1 != 1",
        # casts, signed comparisons through them
        "(int32)arg0 < -20", "(int64)arg0 >= -14", "(int16)arg0 == -15", "(uint8)arg1 == 0x20",
        "(int8)(arg1 + 0x60) < 0", "(uint32)arg1 > 100", "(uint16)arg1 == 0xff1e", "(int32)arg0 + 20 > 0",
        # strings: whole, cut to LEN, inequality
        'str(arg2) == "alpha"', 'str(arg2) != "beta"', 'str(arg2, 3) == "alp"', 'str(arg2, 5) == "alpha"',
        'str(arg2, 4) == "alp"', 'str(arg2) == "alphabet" || str(arg2) == "beta"',
        # builtins
        f"pid == {sorted(pids)[1]}", f"pid != {sorted(pids)[1]}", f"tid <= {sorted(tids)[1]}",
        f"tid > {sorted(tids)[2]}", "uid == 0", "gid != 0", f"cpu == {max(cpus)}", f"cgroup == {cgroup}",
        "cgroup != 0", 'comm == "ft20-1"', 'comm != "ft0-0"', 'comm == "ft20-1" || pid == ' + str(pids[0]),
    ]
    uretprobe = ["retval == 20", "retval != 23", "(int64)retval < 0", "(int64)retval >= 53", "(int32)retval > -38"]
    uprobe = ["arg0 > 20", "arg0 % 10 == 1", "arg0 <= 31 && arg0 >= 21"]
    return {"usdt": usdt, "uretprobe": uretprobe, "uprobe": uprobe}


def _spec(kind: str, binary: str) -> str:
    return {"usdt": f"usdt:{binary}:ft:hit", "uretprobe": f"uretprobe:{binary}:ft_value",
            "uprobe": f"uprobe:{binary}:ft_value"}[kind]


def _bpftrace_script(binary: str, predicates: Dict[str, List[str]]) -> str:
    lines = []
    for kind, texts in predicates.items():
        for index, text in enumerate(texts):
            lines.append(f"{_spec(kind, binary)} /{text}/ {{ @{kind}{index} = count(); }}")
    return "\n".join(lines) + "\n"


def _cgroup_of(pid: int) -> int:
    with open(f"/proc/{pid}/cgroup") as handle:
        for line in handle:
            number, _, path = line.rstrip("\n").split(":", 2)
            if number == "0":
                return cgroup_id(cgroup2_mounts()[0] + path)
    raise AssertionError("no cgroup v2 entry")


@pytest.mark.bpf
def test_usdtkit_and_bpftrace_keep_the_same_hits(build_c, tmp_path):
    binary = build_c("filter_target.c", "-pthread")
    targets = [subprocess.Popen([binary, str(threads), str(base)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for threads, base in TARGETS]
    bpftrace = None
    try:
        pids, tids, cpus = [p.pid for p in targets], [], []
        for proc, (threads, _) in zip(targets, TARGETS):
            for _ in range(threads):
                word, tid, cpu, _comm = proc.stdout.readline().split()
                tids.append(int(tid))
                cpus.append(int(cpu))
        predicates = _predicates(pids, tids, cpus, _cgroup_of(pids[0]))
        script = tmp_path / "filters.bt"
        script.write_text(_bpftrace_script(binary, predicates))
        bpftrace = subprocess.Popen(["bpftrace", "-B", "none", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
        said = [bpftrace.stdout.readline()]
        while said[-1] and not said[-1].startswith("Attaching"):
            said.append(bpftrace.stdout.readline())  # warnings; it exits on an error
        assert said[-1].startswith("Attaching"), "bpftrace did not attach:\n" + "".join(said)
        ours: Dict[str, Dict[str, object]] = {}
        with contextlib.ExitStack() as stack:
            for kind, texts in predicates.items():
                for index, text in enumerate(texts):
                    ours[f"{kind}{index}"] = {"filter": text, "session": stack.enter_context(
                        trace(_spec(kind, binary), events=False, filters=[text]))}
            time.sleep(0.5)  # bpftrace prints "Attaching" before its last uprobe is in place
            for proc in targets:
                proc.stdin.write("g")
                proc.stdin.close()
            outputs = [proc.stdout.read() for proc in targets]
            assert [proc.wait(timeout=20) for proc in targets] == [0] * len(targets)
            for entry in ours.values():
                session = entry["session"]
                (stats,) = session.stats().values()
                assert stats.lost_keys == stats.read_errors == 0, entry["filter"]
                entry["count"] = stats.hits
        bpftrace.send_signal(signal.SIGINT)
        report, _ = bpftrace.communicate(timeout=30)
        theirs = {name: int(count) for name, count in re.findall(r"^@(\w+): (\d+)$", report, re.M)}
        hits = sum(len([line for line in out.splitlines() if line.startswith("hit ")]) for out in outputs)
        assert hits == sum(sum(k + 2 for k in range(threads)) for threads, _ in TARGETS)
        differ = {entry["filter"]: (entry["count"], theirs.get(name, 0)) for name, entry in ours.items()
                  if entry["count"] != theirs.get(name, 0)}
        assert not differ, f"(usdtkit, bpftrace) differ: {differ}\n{report}"
        # the filters are not vacuous: most keep some hits and drop others
        vacuous = [e["filter"] for e in ours.values() if not 0 < e["count"] < hits]
        assert len(vacuous) <= 6, vacuous  # uid, gid, cgroup and cpu may hold for every hit
    finally:
        for proc in targets:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        if bpftrace is not None and bpftrace.poll() is None:
            bpftrace.kill()
            bpftrace.wait()
