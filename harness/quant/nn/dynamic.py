"""Dynamic quantized Linear and LSTM: float in, float out, weights quantized ahead of time.

Each call quantizes its float activation ``x`` with qparams computed from ``x`` itself
(uint8 affine over ``[0, 255]``, or ``[0, 127]`` with ``reduce_range``, the same formula as
:func:`harness.quant.primitives.choose_qparams`)::

    lo = min(min(x), 0),  hi = max(max(x), 0)
    s_x = max((hi - lo) / (qmax - qmin), eps),  z_x = clamp(qmin - round(lo / s_x), qmin, qmax)
    q_x = clamp(round(x / s_x) + z_x, qmin, qmax)
    y   = (sum_k (q_x - z_x)(q_w - z_w)) * s_x * s_w + b          (float64, returned as float32)

With float16 weights (``weight_dtype=torch.float16``) there is no activation quantization:
``y = x @ float(W16)^T + b`` in float32.
"""

from typing import Any

import torch
from torch import nn

from harness.quant import engines as E
from harness.quant import int_mm as IM
from harness.quant import primitives as P
from harness.quant.nn._base import (
    QuantizedModule,
    in_graph_capture,
    native_guard,
    weight_qparams_from_observer,
)


def dynamic_qparams(
    x: torch.Tensor, reduce_range: bool
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Run-time activation qparams of ``x`` (module docstring), export-friendly (no branches
    on data): ``(scale [1], zero_point [1] int64, qmin, qmax)``."""
    qmin = 0
    qmax = 127 if reduce_range else 255
    zero = torch.zeros([1], dtype=torch.float32)
    lo = torch.minimum(x.min().reshape(1).to(torch.float32), zero)
    hi = torch.maximum(x.max().reshape(1).to(torch.float32), zero)
    # eps = float32 machine epsilon (2**-23), as the observers use; a literal for TorchScript
    scale = torch.clamp((hi - lo) / float(qmax - qmin), min=1.1920928955078125e-07)
    zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int64)
    return scale, zp, qmin, qmax


def dynamic_linear(
    engine: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    w_zp: torch.Tensor,
    bias: torch.Tensor | None,
    reduce_range: bool,
) -> torch.Tensor:
    """``y = x @ W^T + b`` for int8 ``weight`` with activation quantized at run time (2-D x)."""
    s_x, z_x, qmin, qmax = dynamic_qparams(x, reduce_range)
    q_x = P.quantize_kernel(x, s_x, z_x, qmin, qmax, torch.uint8, None)
    acc = E.matmul_acc(engine, q_x, z_x, weight, w_zp)
    return E.dequantize_acc(acc, bias, s_x, w_scale, 1)


class Linear(QuantizedModule):
    """Dynamic quantized Linear: ``forward(x: float [..., in]) -> float [..., out]``.

    Buffers (state_dict v2), int8 weights: ``weight`` int8 [out, in], ``weight_scale`` float32
    [out] or [1], ``weight_zero_point`` int64 like it, ``bias`` float32 [out] (absent without
    bias). float16 weights: ``weight`` float16 [out, in] and ``bias``.
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor | None  # None with float16 weights
    weight_zero_point: torch.Tensor | None
    bias: torch.Tensor | None
    _tensor_names = ("weight", "weight_scale", "weight_zero_point", "bias")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_dtype: torch.dtype = torch.int8,
        reduce_range: bool = False,
        engine: str = "",
    ) -> None:
        super().__init__(engine)
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"in_features/out_features: must be positive, got {in_features}, {out_features}"
            )
        if weight_dtype not in (torch.int8, torch.qint8, torch.float16):
            raise ValueError(f"weight_dtype: expected int8 or float16, got {weight_dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.fp16 = weight_dtype == torch.float16
        self.reduce_range = reduce_range
        wdt = torch.float16 if self.fp16 else torch.int8
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=wdt))
        self._set_tensor("weight_scale", None if self.fp16 else torch.ones(1))
        self._set_tensor(
            "weight_zero_point", None if self.fp16 else torch.zeros(1, dtype=torch.int64)
        )
        self._set_tensor("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(
        cls, mod: nn.Module, use_precomputed_fake_quant: bool = False, reduce_range: Any = None
    ) -> "Linear":
        """Quantize a float ``nn.Linear`` carrying a dynamic ``.qconfig``.

        ``reduce_range`` defaults to the qconfig activation observer's ``reduce_range``
        (False when it has none, the most accurate choice for the integer engines); pass True
        to match torch.ao's dynamic Linear, which always reduces on fbgemm / x86 / onednn.
        (:class:`LSTM` defaults to True: its numbers changed anyway to follow torch.ao's
        whole-sequence input projection in qbc 0.2.0, this Linear's did not.)
        """
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"float_module: expected nn.Linear, got {type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise ValueError("float_module: has no .qconfig (set one before from_float)")
        observer = qconfig.weight()
        if reduce_range is None:
            reduce_range = bool(getattr(qconfig.activation(), "reduce_range", False))
        fp16 = getattr(observer, "dtype", None) == torch.float16
        m = cls(
            mod.in_features,
            mod.out_features,
            mod.bias is not None,
            torch.float16 if fp16 else torch.int8,
            reduce_range,
        )
        m._set_from_float(observer, mod.weight, mod.bias)
        return m

    def _set_from_float(
        self, observer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        if self.fp16:
            self.weight = weight.detach().to(torch.float16).clone()
        else:
            q, s, z, _, _ = weight_qparams_from_observer(observer, weight)
            if q.dtype != torch.int8:
                raise ValueError(f"qconfig: weights must quantize to int8, got {q.dtype}")
            self.weight = q.contiguous()
            self.weight_scale = s
            self.weight_zero_point = z.to(torch.int64)
        self._set_tensor("bias", None if bias is None else bias.detach().float().clone())
        self._check_state()

    def _check_state(self) -> None:
        if self.fp16:
            if self.weight.dtype != torch.float16:
                raise ValueError(f"weight: expected float16, got {self.weight.dtype}")
        else:
            if self.weight.dtype != torch.int8:
                raise ValueError(f"weight: expected int8 codes, got {self.weight.dtype}")
            for name in ("weight_scale", "weight_zero_point"):
                n = getattr(self, name).numel()
                if n not in (1, self.weight.shape[0]):
                    raise ValueError(f"{name}: {n} values for {self.weight.shape[0]} rows")
            if bool((self.weight_scale <= 0).any()):
                raise ValueError("weight_scale: must be > 0")

    def compute(self, engine: str, x2: torch.Tensor) -> torch.Tensor:
        """The layer on a 2-D float32 input with an already resolved engine."""
        if not torch.jit.is_scripting() and engine in E.NATIVE_ENGINES:
            return self._forward_native(engine, x2)
        # A block of its own: TorchScript compiles nothing under `if not is_scripting()`.
        if not torch.jit.is_scripting():  # noqa: SIM102
            if engine == "int_mm" and not self.fp16 and not in_graph_capture():
                return self._compute_int_mm(x2)
        if self.fp16:
            y = torch.mm(x2, self.weight.to(torch.float32).t())
            bias = self.bias
            if bias is not None:
                y = y + bias
            return y
        w_scale = self.weight_scale
        w_zp = self.weight_zero_point
        assert w_scale is not None and w_zp is not None
        return dynamic_linear(engine, x2, self.weight, w_scale, w_zp, self.bias, self.reduce_range)

    @torch.jit.unused
    def _compute_int_mm(self, x2: torch.Tensor) -> torch.Tensor:
        """Eager int_mm: the activation quantized as :func:`dynamic_linear` does, the weight-side
        terms prepared once, the accumulator in int32 (:mod:`harness.quant.int_mm`)."""
        w_scale, w_zp = self.weight_scale, self.weight_zero_point
        assert w_scale is not None and w_zp is not None
        names = ("weight", "weight_zero_point")
        weight = self._int_mm_prepared(names, lambda: IM.prepare(self.weight, w_zp))
        s_x, z_x, qmin, qmax = dynamic_qparams(x2, self.reduce_range)
        q_x = P.quantize_kernel(x2, s_x, z_x, qmin, qmax, torch.uint8, None)
        zx = int(z_x)
        a, c, d = IM.shift(q_x, zx)
        corr = self._int_mm_terms((zx,), names, lambda: IM.correction(weight, c, d))
        return IM.dequantize(IM.accumulate(weight, a, corr), s_x, w_scale, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        engine = self.engine if self.engine != "" else "reference"
        if not torch.jit.is_scripting():
            if not torch.jit.is_tracing():
                if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                    raise ValueError(
                        f"x: expected a floating-point tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}"
                    )
                if x.dim() < 1 or x.shape[-1] != self.in_features:
                    raise ValueError(
                        f"x: expected shape [..., {self.in_features}], got {tuple(x.shape)}"
                    )
            engine = self._resolved_engine()
        y = self.compute(engine, x.reshape(-1, self.in_features).to(torch.float32))
        shape = list(x.shape[:-1])
        shape.append(self.out_features)
        return y.reshape(shape)

    @torch.jit.unused
    def _forward_native(self, engine: str, x2: torch.Tensor) -> torch.Tensor:
        with E.native_backend(engine), native_guard():

            def pack() -> Any:
                if self.fp16:
                    try:
                        return torch.ops.quantized.linear_prepack_fp16(
                            self.weight.to(torch.float32), self.bias
                        )
                    except RuntimeError as exc:  # e.g. qnnpack: no fp16 GEMM
                        raise E.EngineUnavailable(
                            engine, f"its float16 dynamic linear is missing ({exc})"
                        ) from exc
                w = E.to_torch_qweight(self.weight, self.weight_scale, self.weight_zero_point)
                return torch.ops.quantized.linear_prepack(w, self.bias)

            packed = self._native_cached(
                (engine, *self._tensor_key("weight", "weight_scale", "weight_zero_point", "bias")),
                pack,
            )
            if self.fp16:
                return torch.ops.quantized.linear_dynamic_fp16(x2, packed)
            # qnnpack has no reduced range: torch computes over [0, 255] and warns if asked
            reduce_range = self.reduce_range and engine != "qnnpack"
            return torch.ops.quantized.linear_dynamic(x2, packed, reduce_range)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weight_dtype={'float16' if self.fp16 else 'int8'}, "
            f"reduce_range={self.reduce_range}, {super().extra_repr()}"
        )


class LSTM(QuantizedModule):
    """Dynamic quantized LSTM (PyTorch's LSTM equations, gate order i, f, g, o)::

        X_w = ih(X)                             the whole sequence X [T, B, in] at once
        gates_t = X_w[t] + hh(h_{t-1})          ih, hh: dynamic Linear (bias_ih, bias_hh inside)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t)

    As torch's CPU quantized LSTM (``torch.ao.nn.quantized.dynamic.LSTM``): the input
    projection of a layer quantizes the whole sequence with one set of run-time qparams (both
    directions of a bidirectional layer see the same input, hence the same qparams), the
    recurrent projection quantizes each ``h_{t-1}`` with its own. Activations use
    ``reduce_range`` (uint8 ``[0, 127]``) by default, as torch.ao's module always does on
    fbgemm / x86 / onednn; qnnpack has no reduced range (torch ignores the flag there, and so
    does the native qnnpack path here). With these defaults every native engine gives torch.ao's
    outputs bit for bit (tested).

    ``forward(input, hx=None) -> (output, (h_n, c_n))`` with batched input ``[T, B, in]``
    (``[B, T, in]`` if ``batch_first``). Dropout is not applied (inference only). State dict:
    ``cells.{k}.ih.*`` and ``cells.{k}.hh.*`` with ``k = layer * num_directions + direction``,
    each a dynamic :class:`Linear`'s buffers (``reduce_range`` is a constructor argument, not
    state).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        weight_dtype: torch.dtype = torch.int8,
        reduce_range: bool = True,
        engine: str = "",
    ) -> None:
        super().__init__(engine)
        if input_size <= 0 or hidden_size <= 0 or num_layers <= 0:
            raise ValueError(
                f"input_size/hidden_size/num_layers: must be positive, got {input_size}, "
                f"{hidden_size}, {num_layers}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        cells = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            for _ in range(self.num_directions):
                cell = nn.Module()
                cell.ih = Linear(layer_in, 4 * hidden_size, bias, weight_dtype, reduce_range)
                cell.hh = Linear(hidden_size, 4 * hidden_size, bias, weight_dtype, reduce_range)
                cells.append(cell)
        self.cells = nn.ModuleList(cells)

    @classmethod
    def from_float(
        cls, mod: nn.Module, use_precomputed_fake_quant: bool = False, reduce_range: Any = None
    ) -> "LSTM":
        """Quantize a float ``nn.LSTM`` carrying a dynamic ``.qconfig`` (one weight observer
        per weight matrix).

        ``reduce_range`` defaults to the qconfig activation observer's ``reduce_range`` when it
        has one, else True: torch.ao's dynamic LSTM ignores the qconfig and always reduces.
        """
        if not isinstance(mod, nn.LSTM):
            raise ValueError(f"float_module: expected nn.LSTM, got {type(mod).__name__}")
        if mod.proj_size:
            raise ValueError("float_module: LSTM with proj_size is not supported")
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise ValueError("float_module: has no .qconfig (set one before from_float)")
        if reduce_range is None:
            reduce_range = bool(getattr(qconfig.activation(), "reduce_range", True))
        fp16 = getattr(qconfig.weight(), "dtype", None) == torch.float16
        m = cls(
            mod.input_size,
            mod.hidden_size,
            mod.num_layers,
            mod.bias,
            mod.batch_first,
            mod.dropout,
            mod.bidirectional,
            torch.float16 if fp16 else torch.int8,
            reduce_range,
        )
        for layer in range(mod.num_layers):
            for d in range(m.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                cell = m.cells[layer * m.num_directions + d]
                for part in ("ih", "hh"):
                    w = getattr(mod, f"weight_{part}{sfx}")
                    b = getattr(mod, f"bias_{part}{sfx}") if mod.bias else None
                    getattr(cell, part)._set_from_float(qconfig.weight(), w, b)
        return m

    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        engine = self.engine if self.engine != "" else "reference"
        if not torch.jit.is_scripting():
            if not torch.jit.is_tracing():
                if not isinstance(input, torch.Tensor) or not input.is_floating_point():
                    raise ValueError("input: expected a floating-point tensor")
                if input.dim() != 3 or input.shape[-1] != self.input_size:
                    raise ValueError(
                        f"input: expected a batched [T, B, {self.input_size}] tensor "
                        f"(batch_first: [B, T, ...]), got {tuple(input.shape)}"
                    )
            engine = self._resolved_engine()
        x = input.to(torch.float32)
        if self.batch_first:
            x = x.transpose(0, 1)
        seq_len = x.shape[0]
        batch = x.shape[1]
        n_states = self.num_layers * self.num_directions
        if hx is None:
            h0 = torch.zeros(n_states, batch, self.hidden_size)
            c0 = torch.zeros(n_states, batch, self.hidden_size)
        else:
            h0 = hx[0].to(torch.float32)
            c0 = hx[1].to(torch.float32)
        h_n: list[torch.Tensor] = []
        c_n: list[torch.Tensor] = []
        layer_input = x
        pending = x  # forward-direction output of the current layer (bidirectional)
        k = 0
        for cell in self.cells:
            d = k % self.num_directions
            h = h0[k]
            c = c0[k]
            # the whole sequence through the input projection at once (one set of qparams)
            projected = cell.ih.compute(engine, layer_input.reshape(seq_len * batch, -1))
            projected = projected.reshape(seq_len, batch, -1)
            outs: list[torch.Tensor] = []
            for step in range(seq_len):
                t = seq_len - 1 - step if d == 1 else step
                gates = projected[t] + cell.hh.compute(engine, h)
                i, f, g, o = gates.chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            if d == 1:
                outs.reverse()
            h_n.append(h)
            c_n.append(c)
            out = torch.stack(outs, 0)
            if d == 0:
                pending = out
            else:
                out = torch.cat([pending, out], 2)
            if d == self.num_directions - 1:
                layer_input = out
            k += 1  # noqa: SIM113 (a counter keeps the ModuleList loop simple for TorchScript)
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, (torch.stack(h_n, 0), torch.stack(c_n, 0))

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, "
            f"{super().extra_repr()}"
        )
