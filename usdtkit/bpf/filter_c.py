"""C for a filter tree (:mod:`usdtkit.expr.tree`), one probe at a time.

Every value is a 64-bit integer in C, with its signedness decided here: literals are signed unless
they only fit unsigned; USDT arguments are signed when the probe's notes say so (``-4@%eax``); function
arguments, ``pid tid uid gid cpu cgroup`` are unsigned; ``retval`` is signed (a negative error code is
negative; cast for narrower types: ``(int32)retval``).  As in C, an operation is signed when both sides
are, unsigned otherwise.  Arithmetic wraps (it is done on ``u64``), division and remainder by zero give 0
and the dividend (BPF's rule, made explicit here), shift counts are taken modulo 64, and ``>>`` of a
signed value keeps its sign.

A string comparison ``str(P) == "lit"`` reads at most ``len(lit) + 2`` bytes: equal when the string
ends right after the literal's bytes.  ``str(P, N)`` keeps the first ``N`` bytes first (bpftrace's
rule), so it equals a literal of exactly ``N`` bytes when the string starts with it.  A string that
cannot be read compares as the empty string (and is counted as a read error).  The literal's bytes
reach C as 64-bit integers, never as text.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..expr.fields import COMM_LEN
from ..expr.tree import Arg, Binary, Builtin, Cast, Int, Node, Str, Unary
from ..plan.resolve import ResolvedProbe
from .layout import STAT_READ_ERRORS

# The C of each integer builtin, in an entry function (whose locals hold pid and tid): filters and keys
# read them alike.
BUILTIN_C = {
    "pid": "pid", "tid": "tid", "uid": "(u32)bpf_get_current_uid_gid()", "gid": "(bpf_get_current_uid_gid() >> 32)",
    "cpu": "bpf_get_smp_processor_id()", "cgroup": "bpf_get_current_cgroup_id()",
}
_ON_STACK_WORDS = 4  # string buffers up to 32 bytes live on the BPF stack, bigger ones in a per-CPU slot


def u64_literal(value: int) -> str:
    """A C literal for ``value`` as a 64-bit two's complement number."""
    return f"0x{value & 0xFFFFFFFFFFFFFFFF:x}ULL"


def arg_signed(probe: ResolvedProbe, index: int) -> Optional[bool]:
    """Whether argument ``index`` is signed at every site (None when the sites disagree)."""
    signs = {site.args[index].signed for site in probe.sites if index < len(site.args)}
    return signs.pop() if len(signs) == 1 else None


def _words(data: bytes) -> List[int]:
    padded = data + b"\0" * (-len(data) % 8)
    return [int.from_bytes(padded[i:i + 8], "little") for i in range(0, len(padded), 8)]


_DIVISION = """\
static __always_inline u64 usdtkit_udiv(u64 a, u64 b) { return b ? a / b : 0; }
static __always_inline u64 usdtkit_umod(u64 a, u64 b) { return b ? a % b : a; }
/* Signed division on magnitudes: BPF before ISA v4 has unsigned division only.  Truncates toward zero,
 * the remainder takes the dividend's sign (C's rules). */
static __always_inline u64 usdtkit_sdiv(u64 a, u64 b) {
    if (!b) return 0;
    u64 ua = (s64)a < 0 ? -a : a, ub = (s64)b < 0 ? -b : b, q = ua / ub;
    return ((s64)a < 0) != ((s64)b < 0) ? -q : q;
}
static __always_inline u64 usdtkit_smod(u64 a, u64 b) {
    if (!b) return a;
    u64 ua = (s64)a < 0 ? -a : a, ub = (s64)b < 0 ? -b : b, r = ua % ub;
    return (s64)a < 0 ? -r : r;
}"""


class FilterHelpers:
    """The C functions filters of one program call: string comparisons (one per literal and cut) and
    division.  Shared by every probe's filter, emitted once before the entry functions."""

    def __init__(self) -> None:
        self._strings: Dict[Tuple[bytes, Optional[int]], str] = {}
        self._scratch_words = 0
        self.division = False

    def string_equal(self, literal: bytes, keep: Optional[int]) -> Optional[str]:
        """The name of ``int NAME(u32 probe, u64 pointer, u32 failed)``, true when the string at
        ``pointer`` (cut to ``keep`` bytes) equals ``literal``; None when it never can."""
        if keep is not None and len(literal) > keep:
            return None
        key = (literal, keep)
        if key not in self._strings:
            self._strings[key] = f"usdtkit_streq{len(self._strings)}"
        return self._strings[key]

    def declarations(self) -> List[str]:
        out: List[str] = []
        if self.division:
            out += _DIVISION.splitlines()
        sizes = {key: min(len(key[0]) + 2, (key[1] if key[1] is not None else 1 << 20) + 1)
                 for key in self._strings}
        scratch = max([(size + 7) // 8 for size in sizes.values() if (size + 7) // 8 > _ON_STACK_WORDS] + [0])
        if scratch:
            out += [f"struct usdtkit_strbuf {{ u64 w[{scratch}]; }};",
                    "BPF_PERCPU_ARRAY(strbuf, struct usdtkit_strbuf, 1);"]
        for (literal, _keep), name in self._strings.items():
            size = sizes[(literal, _keep)]
            nwords = (size + 7) // 8
            out.append(f"static __always_inline int {name}(u32 probe, u64 pointer, u32 failed) {{")
            if nwords > _ON_STACK_WORDS:
                out += ["    u32 slot = 0; struct usdtkit_strbuf *buf = strbuf.lookup(&slot);",
                        "    if (!buf) return 0;",
                        f"    __builtin_memset(buf->w, 0, {nwords * 8});",
                        "    u64 *w = buf->w;"]
            else:
                out.append(f"    u64 w[{nwords}] = {{}};")
            # The read stops after the NUL: the rest of the buffer stays zero, and a string that ends
            # right after the literal's bytes returns exactly len + 1.
            out += ["    long n = -1;",
                    f"    if (!failed && (n = bpf_probe_read_user_str(w, {size}, (void *)pointer)) < 0)",
                    f"        usdtkit_stat(probe, {STAT_READ_ERRORS});",
                    f"    if (n < 0) return {1 if not literal else 0};  /* unreadable: the empty string */"]
            words = _words(literal + b"\0")
            checks = [f"n == {len(literal) + 1}"] + [f"w[{i}] == {u64_literal(word)}" for i, word in enumerate(words)]
            out += ["    return " + " && ".join(checks) + ";", "}"]
        return out


class FilterC:
    """Turns one probe's filter tree into a C condition over the entry function's locals
    (``args``, ``errs``, ``pid``, ``tid``, ``retval``, ``comm_words``, ``probe``)."""

    def __init__(self, probe: ResolvedProbe, helpers: FilterHelpers) -> None:
        self.probe = probe
        self.helpers = helpers
        self.reads_comm = False

    def condition(self, node: Node) -> str:
        """A C expression, nonzero when the hit is kept."""
        text, _signed = self.value(node)
        return text

    def value(self, node: Node) -> Tuple[str, bool]:
        """``(C expression of type u64 or s64, signed)``."""
        if isinstance(node, Int):
            return (f"(s64){u64_literal(node.value)}" if node.signed else u64_literal(node.value)), node.signed
        if isinstance(node, Arg):
            signed = bool(arg_signed(self.probe, node.index)) and self.probe.ref.is_usdt
            return (f"(s64)args[{node.index}]" if signed else f"args[{node.index}]"), signed
        if isinstance(node, Builtin):
            if node.name == "retval":
                return "(s64)retval", True
            return f"(u64)({BUILTIN_C[node.name]})", False
        if isinstance(node, Cast):
            inner, _ = self.value(node.operand)
            if node.bits == 64:
                return (f"(s64)({inner})" if node.signed else f"(u64)({inner})"), node.signed
            kind = f"s{node.bits}" if node.signed else f"u{node.bits}"
            return (f"(s64)({kind})({inner})" if node.signed else f"(u64)({kind})({inner})"), node.signed
        if isinstance(node, Unary):
            inner, signed = self.value(node.operand)
            if node.op == "!":
                return f"(s64)(({inner}) == 0)", True
            expr = f"(0 - (u64)({inner}))" if node.op == "-" else f"(~(u64)({inner}))"
            return (f"(s64){expr}" if signed else expr), signed
        if isinstance(node, Binary):
            return self._binary(node)
        raise TypeError(f"no C for {node!r}")  # pragma: no cover - the tree has no other kinds

    def _binary(self, node: Binary) -> Tuple[str, bool]:
        op = node.op
        if node.is_string_comparison:
            equal = self._string_equal(node)
            return (f"(s64)({equal})" if op == "==" else f"(s64)!({equal})"), True
        if op in ("&&", "||"):
            left, _ = self.value(node.left)
            right, _ = self.value(node.right)
            return f"(s64)(({left}) != 0 {op} ({right}) != 0)", True
        left, lsigned = self.value(node.left)
        right, rsigned = self.value(node.right)
        # C's rules: a shift has its left side's type, other operations are signed when both sides are.
        signed = lsigned if op in ("<<", ">>") else lsigned and rsigned
        kind = "s64" if signed else "u64"
        if op in ("==", "!=", "<", "<=", ">", ">="):
            return f"(s64)(({kind})({left}) {op} ({kind})({right}))", True
        if op in ("/", "%"):
            self.helpers.division = True
            name = ("usdtkit_s" if signed else "usdtkit_u") + ("div" if op == "/" else "mod")
            expr = f"{name}((u64)({left}), (u64)({right}))"
        elif op == "<<":
            expr = f"((u64)({left}) << ((u64)({right}) & 63))"
        elif op == ">>":
            expr = (f"(u64)((s64)({left}) >> ((u64)({right}) & 63))" if signed
                    else f"((u64)({left}) >> ((u64)({right}) & 63))")
        else:
            expr = f"((u64)({left}) {op} (u64)({right}))"
        return (f"(s64){expr}" if signed else expr), signed

    def _string_equal(self, node: Binary) -> str:
        """C for ``STRING == literal`` (1 or 0)."""
        literal, side = node.text, node.string_side
        if isinstance(side, Builtin):  # comm: the kernel's 16 bytes, zero padded, as two words
            self.reads_comm = True
            words = _words(literal.ljust(COMM_LEN, b"\0"))
            return " && ".join(f"comm_words[{i}] == {u64_literal(w)}" for i, w in enumerate(words))
        assert isinstance(side, Str)
        name = self.helpers.string_equal(literal, side.size)
        if name is None:
            return "0"
        pointer, _ = self.value(side.pointer)
        failed = f"(errs & {1 << side.pointer.index}U)" if isinstance(side.pointer, Arg) else "0"
        return f"{name}(probe, (u64)({pointer}), {failed})"
