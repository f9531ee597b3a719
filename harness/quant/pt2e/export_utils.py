"""Train / eval switching for exported models, and the "is this exported?" check.

An exported ``GraphModule`` bakes the train/eval mode into its ops: dropout carries a ``train``
flag (``aten.dropout(x, p, train)``) and batch norm a ``training`` flag
(``aten.batch_norm(x, w, b, mean, var, training, ...)``). ``Module.eval()`` cannot reach those
flags, so it is refused with ``NotImplementedError``; :func:`move_exported_model_to_eval` /
:func:`move_exported_model_to_train` rewrite the flags instead.
"""

from __future__ import annotations

import types

import torch
from torch.fx import GraphModule

_DROPOUT_OPS = {torch.ops.aten.dropout.default: 2, torch.ops.aten.dropout_.default: 2}
_BATCH_NORM_OPS = {torch.ops.aten.batch_norm.default: 5}
_TRAIN_EVAL_MARK = "_qbc_train_eval"


def model_is_exported(model: torch.nn.Module) -> bool:
    """True for a ``GraphModule`` produced by ``torch.export`` (its nodes carry ``val`` meta);
    false for eager modules and ``torch.fx.symbolic_trace`` graphs."""
    return isinstance(model, GraphModule) and any("val" in n.meta for n in model.graph.nodes)


def _set_mode(model: GraphModule, train: bool) -> GraphModule:
    changed = False
    for node in model.graph.nodes:
        if node.op != "call_function":
            continue
        pos = _DROPOUT_OPS.get(node.target, _BATCH_NORM_OPS.get(node.target))
        if pos is None:
            continue
        args = list(node.args)
        if len(args) > pos and args[pos] != train:
            args[pos] = train
            node.args = tuple(args)
            changed = True
    if changed:
        model.recompile()
    return model


def move_exported_model_to_eval(model: GraphModule) -> GraphModule:
    """Switch dropout and batch norm of an exported model to inference behaviour, in place."""
    return _set_mode(model, False)


def move_exported_model_to_train(model: GraphModule) -> GraphModule:
    """Switch dropout and batch norm of an exported model to training behaviour, in place."""
    return _set_mode(model, True)


def _refuse_train(self: GraphModule, mode: bool = True) -> GraphModule:
    raise NotImplementedError(
        "Calling train() on an exported model is not supported: its dropout/batch-norm mode is "
        "part of the graph. Use harness.quant.pt2e.move_exported_model_to_train(model) (or "
        "allow_exported_model_train_eval(model) once)."
    )


def _refuse_eval(self: GraphModule) -> GraphModule:
    raise NotImplementedError(
        "Calling eval() on an exported model is not supported: its dropout/batch-norm mode is "
        "part of the graph. Use harness.quant.pt2e.move_exported_model_to_eval(model) (or "
        "allow_exported_model_train_eval(model) once)."
    )


def _graph_train(self: GraphModule, mode: bool = True) -> GraphModule:
    _set_mode(self, mode)
    object.__setattr__(self, "training", mode)
    return self


def _graph_eval(self: GraphModule) -> GraphModule:
    return _graph_train(self, False)


def disallow_eval_train(model: GraphModule) -> GraphModule:
    """Make ``model.eval()`` / ``model.train()`` raise ``NotImplementedError`` with a hint."""
    object.__setattr__(model, "train", types.MethodType(_refuse_train, model))
    object.__setattr__(model, "eval", types.MethodType(_refuse_eval, model))
    model.__dict__.pop(_TRAIN_EVAL_MARK, None)
    return model


def allow_exported_model_train_eval(model: GraphModule) -> GraphModule:
    """Let ``model.eval()`` / ``model.train()`` rewrite the graph's dropout and batch norm flags
    (only those two ops; nothing else in the graph has a mode)."""
    object.__setattr__(model, "train", types.MethodType(_graph_train, model))
    object.__setattr__(model, "eval", types.MethodType(_graph_eval, model))
    object.__setattr__(model, _TRAIN_EVAL_MARK, True)
    return model
