"""What makes two golden files "the same" for the determinism gate and the per-ISA-class files:
a TorchScript archive is compared by what it holds, not by how the process that wrote it had
numbered things before."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from harness import contents

torch = pytest.importorskip("torch")

#: A module whose class and helper function TorchScript prints into one code file. Scripting an
#: instance whose attribute has another type first gives the class a second concrete type, so
#: the probe's class is mangled into a file of its own and the helper's temporaries start at _0
#: instead of continuing the class's numbering.
PROBE = textwrap.dedent(
    """
    import torch

    def helper(x: torch.Tensor, k: int) -> torch.Tensor:
        return torch.clamp(torch.round(x / 3.0) + k, -8, 7) * 2.0 - torch.abs(x).max()

    class Probe(torch.nn.Module):
        def __init__(self, extra):
            super().__init__()
            self.extra = extra

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(x * 2.0 + 1.0).sum(dim=-1, keepdim=True)
            return helper(y - x.mean(), 3) + torch.sigmoid(y)

    def save(path, first_extra=None):
        if first_extra is not None:
            torch.jit.script(Probe(first_extra))
        torch.jit.script(Probe(1.5)).save(path)
    """
)


def _probe(tmp_path: Path):
    (tmp_path / "qbc_contents_probe.py").write_text(PROBE)
    spec = importlib.util.spec_from_file_location(
        "qbc_contents_probe", tmp_path / "qbc_contents_probe.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_in_fresh_process(tmp_path: Path, out: Path) -> None:
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import qbc_contents_probe as p; p.save({str(out)!r})"
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, timeout=120)


def test_a_scripted_archive_is_the_same_whatever_was_scripted_before_it(tmp_path):
    probe = _probe(tmp_path)
    fresh, after_other = tmp_path / "fresh.pt", tmp_path / "after_other.pt"
    _save_in_fresh_process(tmp_path, fresh)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        probe.save(after_other, first_extra=7)  # an int attribute: another concrete type

    # the premise: the bytes (and file names inside) do differ
    assert fresh.read_bytes() != after_other.read_bytes()
    assert contents.archive(fresh) == contents.archive(after_other)


def test_code_blocks_renumber_temporaries_per_block_in_order_of_appearance():
    text = "def f(x):\n  _7 = g(x)\n  _9 = h(_7)\n  return _9\ndef k(y):\n  _12 = y\n  return _12\n"
    assert contents.code_blocks(text) == [
        "def f(x):\n  _0 = g(x)\n  _1 = h(_0)\n  return _1\n",
        "def k(y):\n  _0 = y\n  return _0\n",
    ]


def test_code_blocks_keep_code_that_differs_beyond_numbering_different():
    # the same shape, but the first block uses one temporary twice where the second uses two
    a = contents.code_blocks("def f(x):\n  _3 = g(x)\n  return h(_3, _3)\n")
    b = contents.code_blocks("def f(x):\n  _3 = g(x)\n  return h(_3, _4)\n")
    assert a != b
