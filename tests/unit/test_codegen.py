"""Generated BPF C holds only numbers and identifiers usdtkit made: no probe name, path or filter text."""
from __future__ import annotations

import re

import pytest

from usdtkit.bpf import codegen
from usdtkit.elf.model import Arg, Constant, Memory, Register, RegisterValue, SymbolRelative, Unsupported
from usdtkit.errors import UsageError
from usdtkit.expr.fields import Field
from usdtkit.expr.filters import Filter
from usdtkit.plan.plan import AttachPlan
from usdtkit.plan.refs import ProbeRef
from usdtkit.plan.request import HistSpec, PairSpec, TraceRequest
from usdtkit.plan.resolve import ResolvedProbe, Site

HOSTILE_PATH = '/tmp/evil"; #include </etc/shadow>\nint x;'


def usdt(name: str, *site_args, path: str = HOSTILE_PATH) -> ResolvedProbe:
    sites = tuple(Site(path, 0x1000 + i * 16, 0x1000 + i * 16, 0x4000, args) for i, args in enumerate(site_args))
    count = len(site_args[0]) if site_args else 0
    return ResolvedProbe(ProbeRef("usdt", path, name, "prov"), path, sites, count)


def reg(name: str, bits: int = 64, shift: int = 0) -> Register:
    return Register(name, bits, shift, name)


ARGS_A = (Arg(4, True, RegisterValue(reg("rdi", 32)), "-4@%edi"),
          Arg(8, False, Memory(reg("rbp"), -16), "8@-16(%rbp)"))
ARGS_B = (Arg(4, True, Constant(-9), "-4@$-9"),
          Arg(8, False, Memory(reg("rax"), 8, reg("rdx"), 4), "8@8(%rax,%rdx,4)"))


def plan_of(probes, pid=None, **request) -> AttachPlan:
    """A plan of already resolved probes (no file is read)."""
    return AttachPlan(TraceRequest(tuple(p.ref for p in probes), **request), tuple(probes), pid)


def _pair(layout):
    return layout.text, layout.attachments


def generated(plan: AttachPlan) -> str:
    return codegen.generate(plan).text


def test_one_function_per_distinct_read_and_every_site_attached():
    probe = usdt("query__start", ARGS_A, ARGS_B, ARGS_A)
    text, attachments = _pair(codegen.generate(plan_of((probe,), events=True)))
    functions = re.findall(r"^int (usdtkit_\w+)\(struct pt_regs \*ctx\)", text, re.M)
    assert functions == ["usdtkit_p0_g0", "usdtkit_p0_g1"]
    assert [(fn, site.file_offset) for fn, site, *_ in attachments] == [
        ("usdtkit_p0_g0", 0x1000), ("usdtkit_p0_g0", 0x1020), ("usdtkit_p0_g1", 0x1010)]


def test_no_user_text_reaches_the_c():
    probe = usdt("name", ARGS_A)
    spec = plan_of((probe,), pid=42, events=True, count_by=(Field("comm"), Field("arg", 1)),
                     filters=(Filter.parse('comm == "x\\"y;z"'), Filter.parse("arg0 >= -3"),
                              Filter.parse('str(arg1) == "#include </etc/shadow>"')),
                     hist=HistSpec(Field("arg", 1), "linear", -10, 10, 2))
    text = generated(spec)
    assert "evil" not in text and "shadow" not in text and "name" not in text and "prov" not in text
    assert '"' not in text.replace('BPF_TABLE("lru_hash"', "") and text.count('#include') == 1
    # the comm filter became numbers
    word = int.from_bytes(b'x"y;z', "little")
    assert f"comm_words[0] == 0x{word:x}ULL && comm_words[1] == 0x0ULL" in text


def test_argument_reads():
    text = generated(plan_of((usdt("p", ARGS_A),), events=True))
    assert "args[0] = (u64)(s64)(s32)(u32)((u64)(u32)(ctx->di));" in text
    assert "bpf_probe_read_user(&v, 8, (void *)(ctx->bp + 0xfffffffffffffff0ULL))" in text
    text = generated(plan_of((usdt("p", ARGS_B),), events=True))
    assert "args[0] = (u64)(s64)(s32)(u32)(0xfffffffffffffff7ULL);" in text
    assert "ctx->ax + 0x8ULL + ctx->dx * 4" in text


def test_high_byte_register_and_rip_relative_symbol():
    args = (Arg(1, False, RegisterValue(reg("rax", 8, 8)), "1@%ah"),
            Arg(4, True, SymbolRelative("NBuffers", 40, 0x5000), "-4@40+NBuffers(%rip)"))
    text = generated(plan_of((usdt("p", args),), events=True))
    assert "(ctx->ax >> 8)" in text
    # 0x5000 (symbol + offset, already added) - 0x1000 (the site's pc)
    assert "ctx->ip + 0x4000ULL" in text


@pytest.mark.parametrize(
    "arg",
    [
        Arg(8, False, Unsupported("xmm registers are not readable"), "8@%xmm0"),
        Arg(8, False, SymbolRelative("missing", 0, None), "8@missing(%rip)"),
        Arg(8, False, RegisterValue(reg("fs")), "8@%fs"),
        Arg(3, False, RegisterValue(reg("rax")), "3@%rax"),
    ],
)
def test_unreadable_arguments_are_refused_by_name(arg):
    # a limit of the target (exit 1), not a mistake of the user (exit 2)
    with pytest.raises(codegen.UnreadableArgument) as info:
        generated(plan_of((usdt("p", (arg,)),), events=True))
    assert arg.raw in str(info.value) or "fs" in str(info.value)


def test_filter_on_missing_argument_is_refused():
    with pytest.raises(UsageError, match="filter on arg5: prov:p has 2 argument"):
        plan_of((usdt("p", ARGS_A),), filters=(Filter.parse("arg5 == 1"),), events=True)


def test_latency_pair_and_function_latency_code():
    start, done = usdt("start", ARGS_A), usdt("done", ARGS_A)
    text = generated(plan_of((start, done), pair=PairSpec(0, 1, Field("arg", 1), Field("arg", 1)),
                               hist=HistSpec(Field("latency"))))
    assert "starts.update" in text and "latency = bpf_ktime_get_ns() - *started" in text
    fn = ResolvedProbe(ProbeRef("uprobe", "/x", "f"), "/x", (Site("/x", 0x10, 0x10),), 6)
    ret = ResolvedProbe(ProbeRef("uretprobe", "/x", "f"), "/x", (Site("/x", 0x10, 0x10),), 0)
    text, attachments = _pair(codegen.generate(plan_of((fn, ret), function_latency=True, hist=HistSpec(Field("latency")))))
    assert [a.retprobe for a in attachments] == [False, True]
    assert "struct usdtkit_start_key sk = {.key = id, .scope = ctx->sp - 8};" in text


def test_only_needed_arguments_are_read():
    unreadable = Arg(8, False, Unsupported("xmm registers are not readable"), "8@%xmm0")
    probe = usdt("p", (ARGS_A[0], unreadable))
    # counting by arg0 never touches arg1: no error, and no read of it
    text = generated(plan_of((probe,), count_by=(Field("arg", 0),)))
    assert "args[0] =" in text and "args[1] =" not in text
    # a plain count reads nothing at all per hit
    text = generated(plan_of((probe,), count_by=()))
    assert "args[0] =" not in text
    # events carry every argument, so the unreadable one is refused by name
    with pytest.raises(codegen.UnreadableArgument, match="xmm0"):
        generated(plan_of((probe,), events=True))


def test_index_only_memory_operand():
    args = (Arg(8, False, Memory(None, 0x40, reg("rdx"), 8), "8@0x40(,%rdx,8)"),)
    text = generated(plan_of((usdt("p", args),), events=True))
    assert "(void *)(0x40ULL + ctx->dx * 8)" in text


def test_a_histogram_adds_up_other_fields_in_slots_of_their_own():
    from usdtkit.plan.buckets import SUM_SLOT, sum_slot

    unreadable = Arg(8, False, Unsupported("xmm registers are not readable"), "8@%xmm0")
    probe = usdt("p", (ARGS_A[0], ARGS_A[1], unreadable))
    text = generated(plan_of((probe,), hist=HistSpec(Field("arg", 0), sum=True, sums=(Field("arg", 1),))))
    # the summed argument is read (only it: arg2 stays untouched), and added in the first slot below the sum's
    assert "args[1] =" in text and "args[2] =" not in text
    assert f"key->slot = {SUM_SLOT}U;" in text and f"key->slot = {sum_slot(0)}U;" == f"key->slot = {SUM_SLOT - 1}U;"
    assert f"key->slot = {sum_slot(0)}U;" in text and "__sync_fetch_and_add(total, args[1])" in text
    # a failed read of the summed argument adds nothing
    assert "if (!(errs & 2U)) {" in text
    with pytest.raises(UsageError, match="histogram sum of arg2: prov:p has 2 argument"):
        plan_of((usdt("p", ARGS_A),), hist=HistSpec(Field("arg", 0), sums=(Field("arg", 2),)))


def test_per_run_values_stay_out_of_the_text():
    """The pid and the cgroup id are per run: the same probes give the same text (and so one compiled
    object in the cache) whichever process or cgroup is traced; the session writes both into maps."""
    probe = usdt("tick", ARGS_A)

    def plan(pid, cgroup):
        return AttachPlan(TraceRequest((probe.ref,), events=True), (probe,), pid, cgroup_id=cgroup)

    first, second = codegen.generate(plan(41, 0x1234567)), codegen.generate(plan(42, 0x7654321))
    assert first.text == second.text
    assert "cgroup_target" in first.maps and "config" in first.maps
    assert str(0x1234567) not in first.text and hex(0x1234567) not in first.text
    assert codegen.generate(plan(None, None)).text != first.text  # no pid, no cgroup: no checks at all
