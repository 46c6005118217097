"""First-instruction decoding for the expensive-site warning (x86_64 encodings from real binaries)."""
from __future__ import annotations

import pytest

from usdtkit.plan.site_cost import describe_site, is_rip_relative


@pytest.mark.parametrize(
    "hex_code, expected",
    [
        ("0f1f440000", False),  # 5-byte NOP (USDT site)
        ("90", False),  # 1-byte NOP
        ("f30f1efa", False),  # endbr64
        ("55", False),  # push %rbp
        ("4889e5", False),  # mov %rsp,%rbp
        ("488b05d82f0000", True),  # mov 0x2fd8(%rip),%rax
        ("8b0d10200000", True),  # mov 0x2010(%rip),%ecx
        ("48833d0000000000", True),  # cmpq $0x0,0x0(%rip)
        ("ff2562200000", True),  # jmp *0x2062(%rip) (PLT)
        ("488d3d5e0e0000", True),  # lea 0xe5e(%rip),%rdi
        ("c5fa6f0500100000", True),  # vmovdqu 0x1000(%rip),%xmm0 (VEX)
        ("660f6f0500100000", True),  # movdqa 0x1000(%rip),%xmm0
        ("0f1005d0ff0000", True),  # movups 0xffd0(%rip),%xmm0
        ("e8aabbccdd", False),  # call rel32
        ("0f8412000000", False),  # je rel32
        ("488b4708", False),  # mov 0x8(%rdi),%rax
    ],
)
def test_rip_relative_detection(hex_code, expected):
    assert is_rip_relative(bytes.fromhex(hex_code)) is expected
    assert (describe_site(bytes.fromhex(hex_code)) is not None) is expected


def test_truncated_input_is_unknown_not_an_error():
    assert is_rip_relative(b"") is None
    assert is_rip_relative(b"\x0f") is None
    assert is_rip_relative(b"\x48\x8b") is None
