"""Train/eval mode of exported models lives in the graph (dropout, batch norm flags)."""

import pytest
import torch
from pt2e_models import ConvWithBNRelu, export

from harness.quant.pt2e import (
    SymmetricQuantizer,
    allow_exported_model_train_eval,
    convert_pt2e,
    model_is_exported,
    move_exported_model_to_eval,
    move_exported_model_to_train,
    prepare_pt2e,
)

aten = torch.ops.aten


def _node(m, target):
    return next(n for n in m.graph.nodes if n.target == target)


@pytest.mark.parametrize(
    ("inplace", "target"),
    [(False, aten.dropout.default), (True, aten.dropout_.default)],
    ids=["dropout", "dropout_"],
)
def test_dropout_moves_between_train_and_eval(inplace, target):
    model = torch.nn.Sequential(torch.nn.Dropout(0.5, inplace=inplace)).train()
    x = torch.randn(64)
    m = export(model, (x,))
    # aten.dropout(x, p, train): the third argument is the mode
    assert _node(m, target).args[2] is True
    move_exported_model_to_eval(m)
    assert _node(m, target).args[2] is False
    torch.testing.assert_close(m(x.clone()), x)  # eval dropout is the identity
    move_exported_model_to_train(m)
    assert _node(m, target).args[2] is True


def test_batch_norm_moves_between_train_and_eval():
    m = export(torch.nn.Sequential(torch.nn.BatchNorm2d(3)).train(), (torch.randn(2, 3, 3, 3),))
    # aten.batch_norm(x, w, b, mean, var, training, ...): the sixth argument is the mode
    assert _node(m, aten.batch_norm.default).args[5] is True
    move_exported_model_to_eval(m)
    assert _node(m, aten.batch_norm.default).args[5] is False
    move_exported_model_to_train(m)
    assert _node(m, aten.batch_norm.default).args[5] is True


def test_eval_and_train_are_refused_on_exported_and_quantized_models():
    model = ConvWithBNRelu().eval()
    model.train()  # fine before export
    inputs = (torch.rand(3, 3, 5, 5),)
    m = export(model.eval(), inputs)
    stages = [m]
    m = prepare_pt2e(m, SymmetricQuantizer())
    stages.append(m)
    m(*inputs)
    stages.append(convert_pt2e(m))
    for stage in stages:
        with pytest.raises(NotImplementedError, match="move_exported_model_to_eval"):
            stage.eval()
        with pytest.raises(NotImplementedError):
            stage.train()


def test_allow_exported_model_train_eval_makes_eval_and_train_rewrite_the_graph():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)
            self.dropout = torch.nn.Dropout(0.5)

        def forward(self, x):
            return self.dropout(self.bn(x))

    inputs = (torch.randn(1, 3, 3, 3),)
    m = export(M().train(), inputs)

    def modes(m):
        return _node(m, aten.batch_norm.default).args[5], _node(m, aten.dropout.default).args[2]

    allow_exported_model_train_eval(m)
    m.eval()
    assert modes(m) == (False, False) and not m.training
    m.train()
    assert modes(m) == (True, True) and m.training
    # prepare hands back a model with the refusal in place again, until allowed once more
    m = prepare_pt2e(m, SymmetricQuantizer())
    with pytest.raises(NotImplementedError):
        m.eval()
    allow_exported_model_train_eval(m)
    m.eval()
    assert modes(m) == (False, False)


def test_model_is_exported_only_for_torch_export_graphs():
    model = ConvWithBNRelu()
    inputs = (torch.rand(3, 3, 5, 5),)
    assert model_is_exported(export(model, inputs))
    assert not model_is_exported(torch.fx.symbolic_trace(model))
    assert not model_is_exported(model)
