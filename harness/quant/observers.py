"""Observers: modules that watch tensors flow by and turn their statistics into qparams.

The API is shaped like ``torch.ao.quantization.observer`` (same class names, constructor
arguments, buffers ``min_val`` / ``max_val``, ``calculate_qparams()`` and ``with_args``), so a
torch.ao eager flow maps onto qbc one to one, but everything computes with
:mod:`harness.quant.primitives` on plain tensors and nothing emits warnings.

Every observer's ``forward(x)`` returns ``x`` unchanged; only buffers are updated, and always in
place (``copy_`` / ``resize_``) so that ``nn.DataParallel`` replicas and state_dict consumers see
the same tensor objects. The observers here are scriptable with ``torch.jit.script``.

Divergences from torch.ao, on purpose:

* Bad arguments raise ``ValueError`` naming the argument (torch.ao raises ``AssertionError`` or
  ``NotImplementedError``); ``reduce_range`` does not warn.
* ``HistogramObserver`` drops non-finite values (``inf`` and ``nan``) silently; when its stored
  range is a single point (``min_val == max_val``, e.g. after a constant batch) the next batch
  restarts the histogram instead of being merged with a zero-width one; and huge
  ``upsample_rate`` values are computed in closed form in O(bins) memory.
* A finite range wider than float32 can hold (``max - min`` overflows, e.g. +-3e38 mask
  values) still gives finite qparams: the affected arithmetic is done in double.
* Loading a state_dict never moves buffers to the device of the loaded tensors; scripted models
  whose per-channel buffers have not taken their size yet load with
  :func:`load_observer_state_dict`.
"""

import functools
import struct
from typing import Any

import torch
from torch import nn

from harness.quant import primitives as P

__all__ = [
    "FixedQParamsObserver",
    "HistogramObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "NoopObserver",
    "ObserverBase",
    "PerChannelMinMaxObserver",
    "PlaceholderObserver",
    "RecordingObserver",
    "UniformQuantizationObserverBase",
    "load_observer_state_dict",
]


class _PartialWrapper:
    """A constructor with bound keyword arguments; calling it builds a fresh instance.

    ``Cls.with_args(a=1).with_args(b=2)()`` is ``Cls(a=1, b=2)``. Keeps ``.p`` (a
    ``functools.partial``) like torch.ao's wrapper so qconfigs can be compared and printed.
    """

    def __init__(self, p: functools.partial) -> None:
        self.p = p

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.p(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{self.p.func.__name__}.with_args({self.p.keywords})"

    def with_args(self, **kwargs: Any) -> "_PartialWrapper":
        return _PartialWrapper(functools.partial(self.p, **kwargs))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _PartialWrapper):
            return NotImplemented
        return self.p.func is other.p.func and self.p.keywords == other.p.keywords

    def __hash__(self) -> int:
        return hash((self.p.func, tuple(sorted(self.p.keywords))))


def with_args(cls_or_self: Any, **kwargs: Any) -> _PartialWrapper:
    """A constructor of ``cls_or_self`` with ``kwargs`` bound: ``Cls.with_args(a=1)()`` builds
    ``Cls(a=1)``; observers and fake-quants share it as their ``with_args`` classmethod."""
    return _PartialWrapper(functools.partial(cls_or_self, **kwargs))


def _observer_dtype(dtype: torch.dtype) -> torch.dtype:
    """Plain dtype for quantizing observers; float dtypes pass (placeholders, float16 configs)."""
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype not in P.FLOAT8_DTYPES:
        return dtype
    return P.as_plain_dtype(dtype)


class ObserverBase(nn.Module):
    """Base of all observers: ``dtype`` (the target dtype) and ``is_dynamic`` (qparams computed
    at run time from each input, as dynamic quantization does)."""

    def __init__(self, dtype: torch.dtype = torch.uint8, is_dynamic: bool = False) -> None:
        super().__init__()
        self.dtype = _observer_dtype(dtype)
        self.is_dynamic = is_dynamic

    with_args = classmethod(with_args)


class UniformQuantizationObserverBase(ObserverBase):
    """Shared state of the range-based observers: dtype, qscheme, quant range and ``eps``.

    ``quant_min``/``quant_max`` default to the dtype's range (:func:`primitives.quant_range`);
    a custom range must contain 0 and have ``quant_min < quant_max``. ``reduce_range`` drops one
    bit (for fbgemm/x86 activations). ``eps`` is kept as a ``[1]`` buffer (state_dict version 2+).
    """

    # 1: no eps buffer; 2: eps buffer; 3: per-channel buffers renamed min_vals -> min_val and
    # the histogram observer's unobserved min/max stored as 0-dim +-inf instead of shape [0].
    _version = 3

    eps: torch.Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict | None = None,
        eps: float = P.DEFAULT_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ValueError(f"{next(iter(kwargs))}: unexpected observer argument")
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        if self.dtype.is_floating_point and self.dtype not in P.FLOAT8_DTYPES:
            raise ValueError(f"dtype: {dtype} is not a quantized dtype")
        self.qscheme = qscheme
        self._qparams_mode = P.qparams_mode(qscheme)
        self.reduce_range = reduce_range
        if not eps > 0:
            raise ValueError(f"eps: must be > 0, got {eps}")
        factory_kwargs = nn.factory_kwargs(factory_kwargs)
        self.register_buffer("eps", torch.tensor([eps], **factory_kwargs))
        self.has_customized_qrange = quant_min is not None and quant_max is not None
        if (quant_min is None) != (quant_max is None):
            raise ValueError("quant_min/quant_max: give both bounds or neither")
        if quant_min is not None and quant_max is not None:
            if quant_min >= quant_max:
                raise ValueError(f"quant_min: {quant_min} must be < quant_max {quant_max}")
            if not quant_min <= 0 <= quant_max:
                raise ValueError(
                    f"quant_min/quant_max: custom range [{quant_min}, {quant_max}] must contain 0"
                )
        qmin, qmax = P.quant_range(self.dtype, quant_min, quant_max, reduce_range)
        self.quant_min: int = qmin
        self.quant_max: int = qmax
        self._sym_zero_point: int = P.symmetric_zero_point(
            self.dtype, qmin, qmax, self.has_customized_qrange
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version")
        if (version is None or version < 2) and prefix + "eps" not in state_dict:
            # version 1 kept eps as a plain attribute; it was always float32 machine epsilon.
            state_dict[prefix + "eps"] = torch.tensor([P.DEFAULT_EPS])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @torch.jit.export
    def _calculate_qparams(
        self, min_val: torch.Tensor, max_val: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Qparams for ``[min_val, max_val]`` with this observer's settings (see
        :func:`primitives.choose_qparams` for the math)."""
        return P.choose_qparams_kernel(
            min_val,
            max_val,
            self.quant_min,
            self.quant_max,
            self._qparams_mode,
            self._sym_zero_point,
            self.eps,
        )

    @torch.jit.export
    def reset_min_max_vals(self) -> None:
        raise RuntimeError("reset_min_max_vals: not supported by this observer")


def _check_per_tensor(qscheme: torch.qscheme, name: str) -> None:
    if qscheme not in P.PER_TENSOR_SCHEMES:
        raise ValueError(
            f"qscheme: {name} takes per_tensor_affine or per_tensor_symmetric, got {qscheme}"
        )


def _check_per_channel(qscheme: torch.qscheme, name: str) -> None:
    if qscheme not in P.PER_CHANNEL_SCHEMES:
        raise ValueError(f"qscheme: {name} takes a per-channel qscheme, got {qscheme}")


def _check_symmetric_uint8_reduce(obs: UniformQuantizationObserverBase) -> None:
    # A reduced symmetric uint8 range would put the zero point (128) outside [0, 127].
    if obs.qscheme in P.SYMMETRIC_SCHEMES and obs.reduce_range and obs.dtype == torch.uint8:
        raise ValueError("reduce_range: not supported for symmetric quantization to uint8")


class MinMaxObserver(UniformQuantizationObserverBase):
    """Per-tensor qparams from the running minimum and maximum of everything observed.

    ``min_val = min(min_val, min(x))``, ``max_val = max(max_val, max(x))``; starts at
    ``(+inf, -inf)`` which means "nothing observed" and yields the neutral qparams ``(1.0, 0)``.
    Infinite inputs are recorded as they are (as torch.ao does), giving an infinite scale.
    """

    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict | None = None,
        eps: float = P.DEFAULT_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_per_tensor(qscheme, type(self).__name__)
        super().__init__(
            dtype,
            qscheme,
            reduce_range,
            quant_min,
            quant_max,
            factory_kwargs,
            eps,
            is_dynamic,
            **kwargs,
        )
        _check_symmetric_uint8_reduce(self)
        factory_kwargs = nn.factory_kwargs(factory_kwargs)
        self.register_buffer("min_val", torch.tensor(float("inf"), **factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **factory_kwargs))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype)
        cur_min, cur_max = torch.aminmax(x)
        self.min_val.copy_(torch.minimum(cur_min, self.min_val))
        self.max_val.copy_(torch.maximum(cur_max, self.max_val))
        return x_orig

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._calculate_qparams(self.min_val, self.max_val)

    @torch.jit.export
    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    @torch.jit.export
    def reset_min_max_vals(self) -> None:
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))


def _check_averaging_constant(averaging_constant: float, is_dynamic: bool) -> None:
    """Moving averages need ``0 < c <= 1``; dynamic quantization follows the latest batch only."""
    if not 0 < averaging_constant <= 1:
        raise ValueError(f"averaging_constant: must be in (0, 1], got {averaging_constant}")
    if is_dynamic and averaging_constant != 1:
        raise ValueError(
            f"averaging_constant: dynamic quantization needs 1, got {averaging_constant}"
        )


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Per-tensor qparams from exponential moving averages of each batch's min and max.

    The first batch sets ``min_val, max_val = min(x), max(x)``; later ones update
    ``min_val += c * (min(x) - min_val)`` (same for max) with ``c = averaging_constant``.
    ``is_dynamic=True`` needs ``c = 1`` (the qparams then follow the latest batch only).
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float = P.DEFAULT_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_averaging_constant(averaging_constant, is_dynamic)
        self.averaging_constant = averaging_constant
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype)
        cur_min, cur_max = torch.aminmax(x)
        if bool(self.min_val == float("inf")) and bool(self.max_val == float("-inf")):
            self.min_val.copy_(cur_min)
            self.max_val.copy_(cur_max)
        else:
            c = self.averaging_constant
            self.min_val.copy_(self.min_val + c * (cur_min - self.min_val))
            self.max_val.copy_(self.max_val + c * (cur_max - self.max_val))
        return x_orig


class PerChannelMinMaxObserver(UniformQuantizationObserverBase):
    """One running min/max (hence one scale and zero point) per slice along ``ch_axis``.

    ``min_val``/``max_val`` start empty (shape ``[0]``) and take the channel count of the first
    tensor observed; loading a state_dict resizes them, so an observer can take the statistics
    of a model with another channel count. ``calculate_qparams`` returns ``[C]``-shaped qparams.
    """

    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(
        self,
        ch_axis: int = 0,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_channel_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict | None = None,
        eps: float = P.DEFAULT_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_per_channel(qscheme, type(self).__name__)
        if not isinstance(ch_axis, int):
            raise ValueError(f"ch_axis: expected an int, got {ch_axis!r}")
        super().__init__(
            dtype,
            qscheme,
            reduce_range,
            quant_min,
            quant_max,
            factory_kwargs,
            eps,
            is_dynamic,
            **kwargs,
        )
        _check_symmetric_uint8_reduce(self)
        self.ch_axis = ch_axis
        factory_kwargs = nn.factory_kwargs(factory_kwargs)
        self.register_buffer("min_val", torch.tensor([], **factory_kwargs))
        self.register_buffer("max_val", torch.tensor([], **factory_kwargs))

    def _channel_minmax(self, x_orig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (min, max) of ``x``: the channel axis moved first, the rest flattened."""
        x = x_orig.detach()
        if not -x.dim() <= self.ch_axis < x.dim():
            raise ValueError("ch_axis: out of range for the observed tensor's rank")
        y = torch.movedim(x, self.ch_axis, 0).to(self.min_val.dtype)
        # one row per channel; reshape (not flatten(start_dim=1)) so 1-D inputs work too
        return torch.aminmax(y.reshape([y.size(0), -1]), dim=1)

    def _store(self, min_val: torch.Tensor, max_val: torch.Tensor) -> None:
        self.min_val.resize_(min_val.shape)
        self.max_val.resize_(max_val.shape)
        self.min_val.copy_(min_val)
        self.max_val.copy_(max_val)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        cur_min, cur_max = self._channel_minmax(x_orig)
        if self.min_val.numel() == 0 or self.max_val.numel() == 0:
            self._store(cur_min, cur_max)
        else:
            self._store(torch.minimum(cur_min, self.min_val), torch.maximum(cur_max, self.max_val))
        return x_orig

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._calculate_qparams(self.min_val, self.max_val)

    @torch.jit.export
    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    @torch.jit.export
    def reset_min_max_vals(self) -> None:
        self.min_val.resize_([0])
        self.max_val.resize_([0])

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version")
        if version is not None and version < 3:
            # version 2 named the buffers min_vals / max_vals
            for old, new in (("min_vals", "min_val"), ("max_vals", "max_val")):
                if prefix + old in state_dict:
                    state_dict[prefix + new] = state_dict.pop(prefix + old)
        # Resize in place (never replace) so the buffers keep their device and identity; the
        # base class then copies the values, whatever the stored channel count was.
        for name in ("min_val", "max_val"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel exponential moving average of min and max (see
    :class:`MovingAverageMinMaxObserver` for the update rule)."""

    def __init__(
        self,
        averaging_constant: float = 0.01,
        ch_axis: int = 0,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_channel_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float = P.DEFAULT_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_averaging_constant(averaging_constant, is_dynamic)
        super().__init__(
            ch_axis=ch_axis,
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        self.averaging_constant = averaging_constant

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        cur_min, cur_max = self._channel_minmax(x_orig)
        if self.min_val.numel() == 0 or self.max_val.numel() == 0:
            self._store(cur_min, cur_max)
        else:
            c = self.averaging_constant
            self._store(
                self.min_val + c * (cur_min - self.min_val),
                self.max_val + c * (cur_max - self.max_val),
            )
        return x_orig


class PlaceholderObserver(ObserverBase):
    """Observes nothing; carries ``dtype`` (and optionally ``quant_min``/``quant_max``,
    ``qscheme``, ``is_dynamic``) to whoever converts the model, e.g. float16 or dynamic configs.

    ``calculate_qparams`` raises: there is nothing to compute.
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.float32,
        custom_op_name: str = "",
        compute_dtype: torch.dtype | None = None,
        quant_min: int | None = None,
        quant_max: int | None = None,
        qscheme: torch.qscheme | None = None,
        eps: float | None = None,
        is_dynamic: bool = False,
    ) -> None:
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        if qscheme is None:
            qscheme = torch.per_tensor_affine
        if eps is None:
            eps = P.DEFAULT_EPS
        self.qscheme = qscheme
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.eps = eps
        self.custom_op = custom_op_name
        # compute_dtype is the dtype a dynamic op quantizes its input to at run time
        if compute_dtype is not None:
            compute_dtype = _observer_dtype(compute_dtype)
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("calculate_qparams: a PlaceholderObserver has no qparams")


class RecordingObserver(ObserverBase):
    """Keeps a copy of every tensor it sees (for debugging); ``get_tensor_value()`` returns them
    in order. Has no qparams."""

    __annotations__ = {"tensor_val": list[torch.Tensor]}

    def __init__(self, dtype: torch.dtype = torch.uint8) -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        self.tensor_val: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tensor_val.append(x.clone())
        return x

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("calculate_qparams: a RecordingObserver has no qparams")

    @torch.jit.export
    def get_tensor_value(self) -> list[torch.Tensor]:
        return self.tensor_val


class NoopObserver(ObserverBase):
    """Observes nothing and has no qparams; marks values that stay in ``dtype`` (float16 by
    default), e.g. the output of a weight-only quantized embedding."""

    def __init__(self, dtype: torch.dtype = torch.float16, custom_op_name: str = "") -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        self.custom_op = custom_op_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("calculate_qparams: a NoopObserver has no qparams")


class FixedQParamsObserver(ObserverBase):
    """Returns the qparams it was built with, whatever it observes: for ops whose output range
    is known in advance (sigmoid -> ``[0, 1]``: scale 1/256, zero point 0 over ``[0, 255]``).

    Buffers ``scale`` (float32 ``[1]``) and ``zero_point`` (int32 ``[1]``).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self,
        scale: float,
        zero_point: int,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        quant_min: int = 0,
        quant_max: int = 255,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ValueError(f"{next(iter(kwargs))}: unexpected observer argument")
        if is_dynamic:
            raise ValueError("is_dynamic: fixed qparams cannot be dynamic")
        super().__init__(dtype=dtype, is_dynamic=False)
        lo, hi = P.dtype_bounds(self.dtype)
        if not lo <= quant_min < quant_max <= hi:
            raise ValueError(
                f"quant_min/quant_max: [{quant_min}, {quant_max}] is not a range of {self.dtype}"
            )
        P.check_qparams(scale, zero_point, quant_min, quant_max)
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.qscheme = qscheme
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point


def _f32(value: float) -> float:
    """``value`` rounded to the nearest float32 (what torch does to a Python scalar compared
    with a float32 tensor)."""
    return struct.unpack("f", struct.pack("f", value))[0]


# Above this many sub-bins the upsampled histogram is not materialised (see _upscale_histogram).
_MAX_UPSAMPLED_BINS = 1 << 20


class HistogramObserver(UniformQuantizationObserverBase):
    """Per-tensor qparams from a running histogram, clipping outliers to minimise L2 error.

    **Recording.** ``histogram`` has ``bins`` equal-width bins over ``[min_val, max_val]``, the
    range of everything observed. When a batch widens the range, the old histogram is
    re-binned onto the new range: each old bin is split into ``upsample_rate`` sub-bins, each
    sub-bin's mass goes to the new bin holding its midpoint. Beyond ``2**20`` sub-bins the limit
    ``upsample_rate -> inf`` is used instead: the old histogram's cumulative distribution
    (piecewise linear) is evaluated at the new bin edges, O(bins) memory for any rate.
    Non-finite values are ignored. A single-point range (``min_val == max_val``) is restarted
    by the next batch rather than merged.

    **Range search.** Over candidate ranges ``[start_bin, end_bin]`` (shrunk alternately from
    the side holding less mass, in steps of ``1e-5`` of the total), the error of quantizing the
    histogram into ``dst_nbins = 2**bits`` levels over that range is

        E = sum_b density_b * integral over the bin of (x - nearest level centre)^2 dx

    with ``integral_a^b t^2 dt = (b^3 - a^3) / 3`` per piece; the search stops at the first
    increase of ``E``. The chosen range then goes through the usual min/max qparams math.
    Numerically this follows torch.ao's HistogramObserver operation for operation, so both give
    identical histograms and qparams on the same data (tested), except where the divergences in
    the module docstring apply. Eager mode runs the bin search on Python floats (same decisions,
    ~15x faster than tensor indexing); TorchScript runs the tensor form.
    """

    min_val: torch.Tensor
    max_val: torch.Tensor
    histogram: torch.Tensor

    def __init__(
        self,
        bins: int = 2048,
        upsample_rate: int = 16,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict | None = None,
        eps: float = P.DEFAULT_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_per_tensor(qscheme, type(self).__name__)
        if is_dynamic:
            raise ValueError("is_dynamic: HistogramObserver cannot compute dynamic qparams")
        if not isinstance(bins, int) or bins <= 0:
            raise ValueError(f"bins: must be a positive int, got {bins!r}")
        if not isinstance(upsample_rate, int) or upsample_rate <= 0:
            raise ValueError(f"upsample_rate: must be a positive int, got {upsample_rate!r}")
        super().__init__(
            dtype,
            qscheme,
            reduce_range,
            quant_min,
            quant_max,
            factory_kwargs,
            eps,
            is_dynamic,
            **kwargs,
        )
        _check_symmetric_uint8_reduce(self)
        factory_kwargs = nn.factory_kwargs(factory_kwargs)
        self.bins = bins
        self.upsample_rate = upsample_rate
        self.max_upsampled_bins = _MAX_UPSAMPLED_BINS
        self.register_buffer("histogram", torch.zeros(bins, **factory_kwargs))
        self.register_buffer("min_val", torch.tensor(float("inf"), **factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **factory_kwargs))
        # Levels of the target dtype (the full dtype, even with reduce_range, as torch.ao does).
        lo, hi = P.dtype_bounds(self.dtype)
        self.dst_nbins = hi - lo + 1

    # ---- recording ---------------------------------------------------------------------

    def _is_wide(self, lo: torch.Tensor, hi: torch.Tensor) -> bool:
        """True when ``hi - lo`` overflows float32 (finite values near +-3.4e38, e.g. attention
        masks): the histogram math then runs in double instead of producing inf/nan."""
        return not bool(torch.isfinite(hi.to(torch.float32) - lo.to(torch.float32)))

    def _histc(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        if self._is_wide(lo, hi):
            x = x.to(torch.float64)
        elif x.dtype != torch.float32 and x.dtype != torch.float64:
            x = x.to(torch.float32)  # histc has no half / bfloat16 CPU kernel
        hist = torch.histc(x, self.bins, min=float(lo), max=float(hi))
        return hist.to(device=self.histogram.device, dtype=self.histogram.dtype)

    def _reset_histogram(self, x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor) -> None:
        self.min_val.copy_(x_min)
        self.max_val.copy_(x_max)
        self.histogram.copy_(self._histc(x, x_min, x_max))

    def _upscale_histogram(
        self,
        histogram: torch.Tensor,
        orig_min: torch.Tensor,
        orig_max: torch.Tensor,
        update_min: torch.Tensor,
        update_max: torch.Tensor,
    ) -> torch.Tensor:
        """Re-bin ``histogram`` (over ``[orig_min, orig_max]``) onto ``bins`` bins over the wider
        ``[update_min, update_max]``, spreading each bin's mass uniformly inside it."""
        bins = self.bins
        rate = self.upsample_rate
        if bins * rate <= self.max_upsampled_bins and not self._is_wide(orig_min, update_max):
            sub = histogram.repeat_interleave(rate) / rate
            sub_width = (orig_max - orig_min) / (bins * rate)
            sub_centres = (
                torch.linspace(float(orig_min), float(orig_max), bins * rate + 1)[:-1].to(
                    histogram.device
                )
                + 0.5 * sub_width
            )
            edges = torch.linspace(float(update_min), float(update_max), bins + 1).to(
                histogram.device
            )
            target = torch.bucketize(sub_centres, edges, right=True) - 1
            target = torch.clamp(target, 0, bins - 1)
            return torch.bincount(target, weights=sub, minlength=bins)
        # Closed form of rate -> inf: cumulative mass at each new edge, by linear interpolation
        # inside the old bin holding it.
        hist = histogram.to(torch.float64)
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(hist, 0)])
        edges = torch.linspace(float(update_min), float(update_max), bins + 1, dtype=torch.float64)
        span = float(orig_max) - float(orig_min)
        pos = torch.clamp((edges - float(orig_min)) / span * bins, 0.0, float(bins))
        idx = torch.clamp(torch.floor(pos).to(torch.int64), 0, bins - 1)
        mass_below = cumulative[idx] + (pos - idx.to(torch.float64)) * hist[idx]
        return mass_below[1:] - mass_below[:-1]

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            x = x[finite]
            if x.numel() == 0:
                return x_orig
        x_min, x_max = torch.aminmax(x)
        cur_min = self.min_val
        cur_max = self.max_val
        unobserved = bool(cur_min == float("inf")) or bool(cur_max == float("-inf"))
        if unobserved or bool(cur_min == cur_max):
            self._reset_histogram(x, x_min, x_max)
            return x_orig
        new_min = torch.minimum(cur_min, x_min)
        new_max = torch.maximum(cur_max, x_max)
        update = self._histc(x, new_min, new_max)
        if bool(new_min == cur_min) and bool(new_max == cur_max):
            self.histogram.copy_(self.histogram + update)
        else:
            moved = self._upscale_histogram(self.histogram, cur_min, cur_max, new_min, new_max)
            self.histogram.copy_(update + moved)
            self.min_val.copy_(new_min)
            self.max_val.copy_(new_max)
        return x_orig

    # ---- range search ------------------------------------------------------------------

    def _l2_norm(
        self, delta_begin: torch.Tensor, delta_end: torch.Tensor, density: torch.Tensor
    ) -> torch.Tensor:
        """``density * integral_{delta_begin}^{delta_end} t^2 dt``."""
        cubes = delta_end * delta_end * delta_end - delta_begin * delta_begin * delta_begin
        return density * (cubes / 3)

    @torch.jit.export
    def _compute_quantization_error(self, next_start_bin: int, next_end_bin: int) -> float:
        """L2 error of quantizing the histogram to ``dst_nbins`` levels spread over source bins
        ``[next_start_bin, next_end_bin]`` (bins outside are clamped to the end levels)."""
        bin_width = (self.max_val.item() - self.min_val.item()) / self.bins
        dst_width = bin_width * (next_end_bin - next_start_bin + 1) / self.dst_nbins
        if dst_width == 0.0:
            return 0.0
        device = self.histogram.device
        # float32 as torch.ao (bit-identical results); double for ranges wider than float32
        dt = torch.float64 if self._is_wide(self.min_val, self.max_val) else torch.float32
        src = torch.arange(self.bins, device=device, dtype=dt)
        src_begin = (src - next_start_bin) * bin_width
        src_end = src_begin + bin_width
        last = self.dst_nbins - 1
        dst_of_begin = torch.clamp(torch.div(src_begin, dst_width, rounding_mode="floor"), 0, last)
        dst_of_end = torch.clamp(torch.div(src_end, dst_width, rounding_mode="floor"), 0, last)
        density = self.histogram / bin_width
        half = dst_width / 2
        # piece 1: from the source bin's start to the end of its destination bin
        first = self._l2_norm(
            src_begin - (dst_of_begin + 0.5) * dst_width,
            torch.ones(self.bins, device=device, dtype=dt) * half,
            density,
        )
        # pieces 2: destination bins wholly covered by the source bin
        whole = (dst_of_end - dst_of_begin - 1) * self._l2_norm(
            torch.tensor(-half, dtype=dt), torch.tensor(half, dtype=dt), density
        )
        # piece 3: from the start of the last destination bin to the source bin's end
        end_centre = dst_of_end * dst_width + half
        final = self._l2_norm(torch.tensor(-half, dtype=dt), src_end - end_centre, density)
        return (first + whole + final).sum().item()

    def _search_bins(self) -> tuple[int, int]:
        """TorchScript form of the bin search (see :meth:`_search_bins_eager`)."""
        total = torch.sum(self.histogram).item()
        cumsum = torch.cumsum(self.histogram, dim=0)
        step = 1e-5
        alpha = 0.0  # fraction of the mass clipped below
        beta = 1.0  # 1 - fraction clipped above
        start_bin = 0
        end_bin = self.bins - 1
        norm_min = float("inf")
        while alpha < beta:
            next_alpha = alpha + step
            next_beta = beta - step
            left = start_bin
            right = end_bin
            while left < end_bin and bool(cumsum[left] < next_alpha * total):
                left = left + 1
            while right > start_bin and bool(cumsum[right] > next_beta * total):
                right = right - 1
            next_start = start_bin
            next_end = end_bin
            # clip the side that gives up fewer bins for the same mass
            if (left - start_bin) > (end_bin - right):
                next_start = left
                alpha = next_alpha
            else:
                next_end = right
                beta = next_beta
            if next_start == start_bin and next_end == end_bin:
                continue
            norm = self._compute_quantization_error(next_start, next_end)
            if norm > norm_min:
                break
            norm_min = norm
            start_bin = next_start
            end_bin = next_end
        return start_bin, end_bin

    @torch.jit.unused
    def _search_bins_eager(self) -> tuple[int, int]:
        """The bin search on Python floats: the same decisions as :meth:`_search_bins`, ~50x
        faster (up to 1e5 steps of ``1e-5`` of the mass each).

        A float32 tensor compared with a Python float compares in float32, so each threshold
        is rounded to float32 (``_f32``) before comparing with the (exact) cumulative counts.
        """
        total = torch.sum(self.histogram).item()
        cumsum = torch.cumsum(self.histogram, dim=0).tolist()
        step = 1e-5
        alpha, beta = 0.0, 1.0
        start_bin, end_bin = 0, self.bins - 1
        norm_min = float("inf")
        while alpha < beta:
            next_alpha = alpha + step
            next_beta = beta - step
            left, right = start_bin, end_bin
            low = _f32(next_alpha * total)
            while left < end_bin and cumsum[left] < low:
                left += 1
            high = _f32(next_beta * total)
            while right > start_bin and cumsum[right] > high:
                right -= 1
            next_start, next_end = start_bin, end_bin
            if (left - start_bin) > (end_bin - right):
                next_start = left
                alpha = next_alpha
            else:
                next_end = right
                beta = next_beta
            if next_start == start_bin and next_end == end_bin:
                continue
            norm = self._compute_quantization_error(next_start, next_end)
            if norm > norm_min:
                break
            norm_min = norm
            start_bin, end_bin = next_start, next_end
        return start_bin, end_bin

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipped range ``(new_min, new_max)`` minimising the L2 quantization error."""
        if self.histogram.size(0) != self.bins:
            raise ValueError("bins: the histogram buffer has a different number of bins")
        if torch.jit.is_scripting():
            start_bin, end_bin = self._search_bins()
        else:
            start_bin, end_bin = self._search_bins_eager()
        lo, hi = self.min_val, self.max_val
        if self._is_wide(lo, hi):
            lo, hi = lo.to(torch.float64), hi.to(torch.float64)
        bin_width = (hi - lo) / self.bins
        new_min = lo + bin_width * start_bin
        new_max = lo + bin_width * (end_bin + 1)
        return new_min.to(torch.float32), new_max.to(torch.float32)

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if bool(self.min_val == float("inf")) and bool(self.max_val == float("-inf")):
            device = self.min_val.device
            return torch.ones([1], device=device), torch.zeros(
                [1], dtype=torch.int64, device=device
            )
        new_min, new_max = self._non_linear_param_search()
        return self._calculate_qparams(new_min, new_max)

    @torch.jit.export
    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}, bins={self.bins}"

    @torch.jit.export
    def reset_min_max_vals(self) -> None:
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))
        self.histogram.zero_()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version")
        if version is None or version < 3:
            # before version 3 an unobserved min/max was stored with shape [0]
            for name, empty in (("min_val", float("inf")), ("max_val", float("-inf"))):
                key = prefix + name
                if key in state_dict and state_dict[key].shape == torch.Size([0]):
                    state_dict[key] = torch.tensor(empty)
        key = prefix + "histogram"
        if key in state_dict and state_dict[key].shape != self.histogram.shape:
            error_msgs.append(
                f"bins: state_dict histogram has {state_dict[key].numel()} bins, this observer "
                f"{self.bins}"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


# Buffers whose shape follows the data (per-channel statistics and qparams).
_RESIZABLE_BUFFERS = ("min_val", "max_val", "scale", "zero_point")


def load_observer_state_dict(
    module: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True
) -> None:
    """``module.load_state_dict(state_dict)`` that also works for *scripted* models whose
    per-channel observer / fake-quant buffers have not taken their channel count yet.

    Eager modules resize those buffers in their own ``_load_from_state_dict``; TorchScript
    modules bypass it, so here every ``min_val``/``max_val``/``scale``/``zero_point`` buffer whose
    shape differs from the stored one is resized in place first (keeping its device).
    """
    buffers = dict(module.named_buffers())
    for key, value in state_dict.items():
        name = key.rsplit(".", 1)[-1]
        buf = buffers.get(key)
        if name in _RESIZABLE_BUFFERS and buf is not None and buf.shape != value.shape:
            buf.resize_(value.shape)
    module.load_state_dict(state_dict, strict=strict)
