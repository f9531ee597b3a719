"""Numeric debug handles: one unique id per op, and which torch transformations keep them.

Handles live in ``node.meta["custom"]["numeric_debug_handle"]``; every test below is also a
measurement of what torch.export (the installed release) does with ``meta["custom"]``.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections import Counter

import pytest
import torch
from pt2e_models import Conv2dThenConv1d
from torch.fx import Node

from harness.compat import expected_torch_deprecations
from harness.quant.pt2e import (
    SymmetricQuantizer,
    convert_pt2e,
    get_symmetric_quantization_config,
    prepare_pt2e,
)
from harness.quant.pt2e.numeric_debugger import (
    CUSTOM_KEY,
    NUMERIC_DEBUG_HANDLE_KEY,
    collect_numeric_debug_handles,
    generate_numeric_debug_handle,
    get_numeric_debug_handle,
    is_handled_node,
    iter_graph_modules,
    set_numeric_debug_handle,
)


class TwoLinear(torch.nn.Module):
    """linear and hardswish both decompose into several aten ops under run_decompositions()."""

    def __init__(self) -> None:
        super().__init__()
        self.linear1 = torch.nn.Linear(4, 3)
        self.act = torch.nn.Hardswish()
        self.linear2 = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.act(self.linear1(x)))

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor, ...]:
        return (torch.randn(2, 4),)


class NestedCond(torch.nn.Module):
    """A torch.cond whose true branch holds another torch.cond."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        def inner_true(y: torch.Tensor) -> torch.Tensor:
            return torch.mm(y + y, y)

        def inner_false(y: torch.Tensor) -> torch.Tensor:
            return torch.mm(y, y)

        def outer_true(y: torch.Tensor) -> torch.Tensor:
            return torch.cond(pred, inner_true, inner_false, (y,)) + 1

        def outer_false(y: torch.Tensor) -> torch.Tensor:
            return y.cos()

        return torch.cond(pred, outer_true, outer_false, (self.linear(x),))

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor, ...]:
        return (torch.randn(3, 3), torch.tensor(True))


def _export(model_cls: type, strict: bool = False) -> torch.export.ExportedProgram:
    model = model_cls()
    with warnings.catch_warnings():
        # torch 2.13's own tracing of torch.cond reads a non-leaf tensor's .grad internally and
        # warns about it; the warning is about torch's code, not ours.
        warnings.filterwarnings(
            "ignore",
            message=r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
            category=UserWarning,
        )
        return torch.export.export(model, model.example_inputs(), strict=strict)


def _handled_nodes(model: object) -> list[Node]:
    return [n for gm in iter_graph_modules(model) for n in gm.graph.nodes if is_handled_node(n)]


def _handles_by_name(model: object) -> dict[str, int]:
    return {n.name: h for n, h in collect_numeric_debug_handles(model).items()}


def _decompose(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    with expected_torch_deprecations():  # torch 2.13: run_decompositions deep-copies pytree specs
        return copy.copy(ep).run_decompositions()


def _save_load(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    return torch.export.load(buf)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def test_handle_is_stored_under_the_documented_meta_keys() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    conv2d = next(n for n in ep.graph.nodes if n.target is torch.ops.aten.conv2d.default)
    assert (CUSTOM_KEY, NUMERIC_DEBUG_HANDLE_KEY) == ("custom", "numeric_debug_handle")
    assert isinstance(conv2d.meta["custom"]["numeric_debug_handle"], int)


def test_every_op_node_gets_a_distinct_handle() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    ops = [n for n in ep.graph.nodes if n.op == "call_function"]
    handles = [get_numeric_debug_handle(n) for n in ops]
    # conv2d, squeeze, conv1d
    assert len(ops) == 3
    assert None not in handles
    assert len(set(handles)) == len(handles)


def test_placeholders_and_output_get_no_handle() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    for n in ep.graph.nodes:
        if n.op in ("placeholder", "output"):
            assert get_numeric_debug_handle(n) is None, n.name


def test_handles_start_at_one_and_follow_graph_order() -> None:
    # The "first divergent op" search relies on ascending handles being topological order.
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    in_graph_order = [get_numeric_debug_handle(n) for n in _handled_nodes(ep)]
    assert in_graph_order == list(range(1, len(in_graph_order) + 1))


def test_graph_module_gets_handles_on_ops_but_not_on_weights_or_export_guard() -> None:
    gm = _export(Conv2dThenConv1d).module()
    generate_numeric_debug_handle(gm)
    for n in gm.graph.nodes:
        if n.op == "call_function":
            assert get_numeric_debug_handle(n) is not None, n.name
        if n.op == "get_attr" or str(n.target).startswith("_guards"):
            assert get_numeric_debug_handle(n) is None, n.name


def test_rejects_a_model_that_is_not_an_exported_graph() -> None:
    with pytest.raises(TypeError, match=r"ExportedProgram or a torch\.fx\.GraphModule"):
        generate_numeric_debug_handle(Conv2dThenConv1d())  # type: ignore[arg-type]


def test_control_flow_branches_get_distinct_handles() -> None:
    ep = _export(NestedCond)
    generate_numeric_debug_handle(ep)
    nodes = _handled_nodes(ep)
    handles = [get_numeric_debug_handle(n) for n in nodes]
    # 3 graph levels below the top one (outer true/false, inner true/false) hold ops too.
    assert len(list(iter_graph_modules(ep))) == 5
    assert None not in handles
    assert len(set(handles)) == len(handles)
    assert {str(n.target) for n in nodes} >= {"cond", "aten.mm.default", "aten.cos.default"}


def test_regenerating_without_changes_keeps_every_handle() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    before = _handles_by_name(ep)
    generate_numeric_debug_handle(ep)
    assert _handles_by_name(ep) == before


def test_regenerating_after_graph_edit_keeps_ids_and_gives_the_new_node_a_fresh_one() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    before = _handles_by_name(ep)
    output = next(iter(reversed(ep.graph.nodes)))
    last = output.args[0][0]
    with ep.graph.inserting_after(last):
        relu = ep.graph.call_function(torch.ops.aten.relu.default, (last,))
    last.replace_all_uses_with(relu, delete_user_cb=lambda u: u is not relu)
    ep.graph_module.recompile()

    generate_numeric_debug_handle(ep)

    after = _handles_by_name(ep)
    assert {k: after[k] for k in before} == before
    assert after[relu.name] not in before.values()
    assert after[relu.name] > 0
    assert Counter(after.values())[after[relu.name]] == 1


def test_setting_a_handle_does_not_touch_a_custom_dict_shared_with_another_node() -> None:
    # torch gives the nodes it creates for one traced op the same ``custom`` dict object.
    ep = _export(Conv2dThenConv1d)
    a, b = (n for n in ep.graph.nodes if n.op == "call_function" and n.name != "squeeze")
    shared = {"note": "x"}
    a.meta[CUSTOM_KEY] = b.meta[CUSTOM_KEY] = shared
    set_numeric_debug_handle(a, 7)
    assert get_numeric_debug_handle(a) == 7
    assert get_numeric_debug_handle(b) is None
    assert a.meta[CUSTOM_KEY]["note"] == "x"


# ---------------------------------------------------------------------------------------------
# Preservation across torch transformations (measured on the installed torch)
# ---------------------------------------------------------------------------------------------


def test_copy_of_exported_program_keeps_handles() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    assert _handles_by_name(copy.copy(ep)) == _handles_by_name(ep)


def test_deepcopy_of_exported_program_keeps_handles() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    with expected_torch_deprecations():  # torch 2.13: pytree LeafSpec FutureWarning
        ep_copy = copy.deepcopy(ep)
    assert _handles_by_name(ep_copy) == _handles_by_name(ep)


def test_module_of_exported_program_keeps_handles() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    assert _handles_by_name(ep.module()) == _handles_by_name(ep)


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
def test_reexport_of_module_keeps_handles(strict: bool) -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    re_ep = torch.export.export(ep.module(), Conv2dThenConv1d.example_inputs(), strict=strict)
    assert _handles_by_name(re_ep) == _handles_by_name(ep)


def test_save_and_load_keep_handles() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    assert _handles_by_name(_save_load(ep)) == _handles_by_name(ep)


def test_save_and_load_keep_handles_inside_control_flow() -> None:
    ep = _export(NestedCond)
    generate_numeric_debug_handle(ep)
    loaded = _save_load(ep)
    assert set(_handles_by_name(loaded).values()) == set(_handles_by_name(ep).values())


@pytest.mark.parametrize("model_cls", [Conv2dThenConv1d, TwoLinear, NestedCond])
def test_run_decompositions_keeps_the_set_of_handles(model_cls: type) -> None:
    ep = _export(model_cls)
    generate_numeric_debug_handle(ep)
    decomposed = _decompose(ep)
    assert set(_handles_by_name(decomposed).values()) == set(_handles_by_name(ep).values())
    for n in _handled_nodes(decomposed):
        assert get_numeric_debug_handle(n) is not None, n.name


def test_decomposed_nodes_inherit_the_handle_of_their_source_op() -> None:
    ep = _export(TwoLinear)
    generate_numeric_debug_handle(ep)
    by_module = {
        str(n.meta["nn_module_stack"]): h for n, h in collect_numeric_debug_handles(ep).items()
    }

    decomposed = _decompose(ep)

    counts: Counter[int] = Counter()
    for n, h in collect_numeric_debug_handles(decomposed).items():
        assert by_module[str(n.meta["nn_module_stack"])] == h, n.name
        counts[h] += 1
    # linear -> permute + addmm and hardswish -> add/clamp/mul/div: each op became several nodes,
    # so every handle now sits on more than one node.
    assert all(c > 1 for c in counts.values()), counts


# ---------------------------------------------------------------------------------------------
# Quantization: prepare_pt2e / convert_pt2e carry handles to observers and dequantize nodes
# ---------------------------------------------------------------------------------------------


def _symmetric_per_tensor() -> SymmetricQuantizer:
    return SymmetricQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=False))


def test_prepare_pt2e_copies_each_handle_to_the_output_observer() -> None:
    ep = _export(Conv2dThenConv1d)
    generate_numeric_debug_handle(ep)
    float_handles = _handles_by_name(ep)
    m = prepare_pt2e(ep.module(), _symmetric_per_tensor())

    counts = Counter(collect_numeric_debug_handles(m).values())
    # The symmetric config observes the outputs of conv2d, squeeze and conv1d: each op's handle
    # is on the op and on its output observer, and no other node has a handle.
    assert {float_handles[name]: counts[float_handles[name]] for name in float_handles} == {
        float_handles["conv2d"]: 2,
        float_handles["squeeze"]: 2,
        float_handles["conv1d"]: 2,
    }
    assert sum(counts.values()) == 6
    for node, h in collect_numeric_debug_handles(m).items():
        if node.op == "call_module":
            (source,) = node.args
            assert get_numeric_debug_handle(source) == h


def test_convert_pt2e_copies_each_handle_to_the_dequantize_node() -> None:
    ep = _export(Conv2dThenConv1d)
    example_inputs = Conv2dThenConv1d.example_inputs()
    generate_numeric_debug_handle(ep)
    float_handles = _handles_by_name(ep)
    m = prepare_pt2e(ep.module(), _symmetric_per_tensor())
    m(*example_inputs)
    m = convert_pt2e(m)

    carried = collect_numeric_debug_handles(m)
    # the float ops themselves keep their handles (the seed's conv2d pattern check)
    assert {n.name: h for n, h in carried.items() if n.name in float_handles} == float_handles
    counts = Counter(carried.values())
    assert sorted(counts.values()) == [2, 2, 2]
    assert set(counts) == set(float_handles.values())
    dq = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    for node, h in carried.items():
        if node.name not in float_handles:
            # the second holder of a handle is the dequantize of the op's quantized output
            assert node.target is dq, node.name
            assert get_numeric_debug_handle(node.args[0].args[0]) == h
