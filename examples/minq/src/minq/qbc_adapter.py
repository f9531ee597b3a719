"""minq as a qbc subject: one engine, one case, six formats (docs/plugins.md)."""

import torch

import minq
from harness.cases import BuildContext, Built, Case
from harness.graphsig import signature
from harness.subjects import no_engine


def build_linear(ctx: BuildContext) -> Built:
    torch.manual_seed(ctx.case.seed)  # the float model is part of the case: seeded
    model = minq.QuantLinear.from_float(torch.nn.Linear(8, 4))
    inputs = ctx.make_inputs()  # seeded; the golden's stored inputs when verifying
    exported = torch.export.export(model, inputs)
    return Built(model, inputs, expected=model(*inputs), fresh=lambda: minq.QuantLinear(8, 4),
                 exported=exported, signature=lambda: signature(exported))  # fmt: skip


class Minq:
    name = "minq"
    version = minq.__version__  # in the producer id: every version's goldens are kept

    def engines(self):
        return ("reference",)  # minq has one kernel; engines name numerically distinct ones

    def unavailable_reason(self, engine):
        return None  # or why this engine cannot run here (the check is then skipped)

    def use_engine(self, engine):
        return no_engine()  # the context in which building and loading happen

    def cases(self):
        return CASES


FORMATS = ("input", "state_dict", "safetensors", "exported", "expected", "graph")
CASES = [Case("minq", "linear", build_linear, input_shapes=((2, 8),), formats=FORMATS)]
SUBJECT = Minq()
