"""Tensor-file formats: input, expected, state_dict (zip), state_dict_legacy, safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.cases import Built
from harness.formats.base import Format, LoadContext, register


def _load(path: Path, weights_only: bool = True) -> Any:
    return torch.load(path, weights_only=weights_only)


def _require(ctx: LoadContext | None) -> LoadContext:
    if ctx is None or ctx.today.fresh is None:
        raise ValueError("this format needs today's module skeleton (Built.fresh)")
    return ctx


def _run_with_state(ctx: LoadContext | None, state: dict[str, Any]) -> Any:
    ctx = _require(ctx)
    module = ctx.today.fresh()
    module.load_state_dict(state)
    return ctx.today.run(module, ctx.inputs)


def write_input(b: Built, path: Path) -> None:
    torch.save(b.inputs, path)


def write_expected(b: Built, path: Path) -> None:
    torch.save(b.expected, path)


def saved_state(model: Any) -> dict[str, Any]:
    """``model.state_dict()`` with every tensor in contiguous layout, as state_dict goldens
    store it (the same OrderedDict, module version metadata included; only tensors that are not
    contiguous are replaced).

    Packed weights unpack in the layout of the kernel that packed them, and torch picks that
    kernel from the CPU (on an AVX512-VNNI CPU the x86 engine packs convolutions with oneDNN and
    they unpack contiguous; elsewhere fbgemm's unpack channels-last). The values are the same;
    storing one layout keeps the file independent of the CPU that wrote it.
    """
    state = model.state_dict()
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state[key] = value.contiguous()
    return state


def write_state_dict(b: Built, path: Path) -> None:
    torch.save(saved_state(b.model), path)


def write_state_dict_legacy(b: Built, path: Path) -> None:
    torch.save(saved_state(b.model), path, _use_new_zipfile_serialization=False)


def read_state_dict(path: Path, ctx: LoadContext | None) -> Any:
    return _run_with_state(ctx, _load(path, ctx.weights_only if ctx else True))


def plain_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict as safetensors can hold it: plain contiguous tensors only.

    Raises TypeError naming the first entry that is not a plain tensor (packed params, quantized
    tensors, dtypes): such cases must not list the ``safetensors`` format.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.is_quantized:
            raise TypeError(
                f"state_dict entry {key!r} is not a plain tensor ({type(value).__name__})"
            )
        out[key] = value.detach().contiguous().clone()
    return out


def write_safetensors(b: Built, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(plain_state_dict(b.model.state_dict()), str(path))


def read_safetensors(path: Path, ctx: LoadContext | None) -> Any:
    from safetensors.torch import load_file

    return _run_with_state(ctx, load_file(str(path)))


register(
    Format(
        "input",
        "input.pt",
        "data",
        write_input,
        lambda p, _c: _load(p),
        description="example inputs (torch.save, loaded weights_only)",
    )
)
register(
    Format(
        "state_dict",
        "state_dict.pt",
        "load",
        write_state_dict,
        read_state_dict,
        description="state_dict, zip serialization, loaded weights_only into today's module",
    )
)
register(
    Format(
        "state_dict_legacy",
        "state_dict_legacy.pt",
        "load",
        write_state_dict_legacy,
        read_state_dict,
        # The legacy pickle embeds per-process storage keys: bytes differ run to run, contents
        # do not (regen --check compares it by loaded contents).
        deterministic=False,
        description="state_dict with _use_new_zipfile_serialization=False",
    )
)
register(
    Format(
        "safetensors",
        "state_dict.safetensors",
        "load",
        write_safetensors,
        read_safetensors,
        description="state_dict as safetensors (only where every entry is a plain tensor)",
    )
)
