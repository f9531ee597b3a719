"""Regeneration flake (issue 12): torch.jit.script mistook a tuple for a builtin op.

torch.jit keeps ``id(op object) -> builtin name``; defining an overload of an op whose packet
exists retires the packet's op object but not its id, and CPython gives the freed 72-byte block
to the next 4-tuple, e.g. ``nn.Conv2d._reversed_padding_repeated_twice``. Scripting the conv
then fails with "builtin cannot be used as a value". ``import harness.quant`` and the
``torch_ao`` case table repair the table (``harness.compat.keep_jit_builtins_stable``): these
tests replay the sequence with a library of their own.
"""

from __future__ import annotations

import uuid

import torch
from torch.jit import _builtins

import harness.quant  # noqa: F401  (registers qbc's ops and installs the repair)
from harness.compat import drop_stale_jit_builtins, expected_torch_deprecations

# Enough allocations to hit a freed block of that size class: before the repair, the retired
# op's address came back within a few hundred 4-tuples.
ALLOCATIONS = 200_000


def _library_with_retired_op() -> tuple[torch.library.Library, int]:
    """A fresh op namespace whose op ``f`` had its packet refreshed; the retired op's id."""
    namespace = f"qbc_test_{uuid.uuid4().hex[:8]}"
    lib = torch.library.Library(namespace, "DEF")
    lib.define("f(Tensor x) -> Tensor")
    retired = id(getattr(torch.ops, namespace).f._op)  # creates the packet
    lib.define("f.other(Tensor x, int y) -> Tensor")  # refreshes it
    return lib, retired


def test_a_retired_op_address_is_never_handed_to_a_tuple() -> None:
    lib, retired = _library_with_retired_op()
    kept = []
    for _ in range(ALLOCATIONS):
        t = tuple(i for i in (0, 0, 0, 0))
        assert id(t) != retired, "a 4-tuple got the address of an op torch.jit still knows"
        kept.append(t)
    del lib


def test_a_conv2d_scripts_when_its_padding_tuple_reuses_freed_memory() -> None:
    lib, retired = _library_with_retired_op()
    kept = []
    for _ in range(ALLOCATIONS):  # the tuple regen's Conv2d would get, at worst
        padding = tuple(i for i in (0, 0, 0, 0))
        if id(padding) == retired:
            break
        kept.append(padding)
    conv = torch.nn.Conv2d(3, 3, 3)
    conv._reversed_padding_repeated_twice = padding
    with expected_torch_deprecations():
        torch.jit.script(conv)  # before the repair: "builtin cannot be used as a value"
    del lib


def test_stale_entries_already_in_the_table_are_dropped() -> None:
    lib, _ = _library_with_retired_op()
    qualname = f"{lib.ns}::f"

    def orphan() -> None:  # stands for an op object torch retired before the repair was installed
        pass

    _builtins._register_builtin(orphan, qualname)
    stale = id(orphan)
    del orphan
    assert _builtins._get_builtin_table().get(stale) == qualname
    assert drop_stale_jit_builtins() >= 1
    assert stale not in _builtins._get_builtin_table()
    del lib
