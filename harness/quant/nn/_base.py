"""Shared machinery of qbc's quantized modules: engine choice, input checks, versioned state.

Conventions every module follows
--------------------------------
* Quantized values are plain integer tensors; qparams are explicit tensors beside them.
* Static modules (Linear, LinearReLU, Conv*, ConvReLU*) take ``(q_x, x_scale, x_zero_point)``
  and return ``(q_y, y_scale, y_zero_point)``: integer codes in, integer codes out, the output
  qparams being the module's ``scale`` / ``zero_point`` buffers. Chain them with
  ``m2(*m1(q, s, z))``; :class:`~harness.quant.nn.Quantize` / :class:`~harness.quant.nn.DeQuantize`
  convert at the float edges.
* Dynamic and weight-only modules (dynamic Linear, LSTM, Embedding, EmbeddingBag) take and return
  float tensors (indices for embeddings); activations are quantized inside the module.
* ``engine``: ``""`` follows :func:`harness.quant.engines.use_engine` (default ``reference``);
  a name pins the module to that engine. Native engines (fbgemm, x86, qnnpack, onednn) run
  eagerly only; ``torch.jit.script`` / ``torch.jit.trace`` / ``torch.export`` need ``reference``
  or ``int_mm``. Trace and export record the engine in effect (context included). TorchScript
  cannot see :func:`use_engine`: a scripted module computes with its own ``engine`` attribute,
  ``""`` meaning ``reference`` (bit-identical to ``int_mm``, only slower); pin ``int_mm`` with
  ``set_engine`` before scripting or assign ``scripted.engine = "int_mm"`` afterwards.
* Scripted, traced and exported modules contain only aten ops (no custom ops, no
  ``quantized_decomposed``): they load with plain torch, without importing ``harness``.
* state_dict: tensors only (safetensors-compatible); the layout carries a ``_version``; older
  layouts are migrated in ``_load_from_state_dict``. Loading adopts the stored tensors' shapes
  and dtypes (per-tensor vs per-channel qparams, with or without bias).

State-dict versions (shared by every module)
--------------------------------------------
* version 1 (qbc 0.0): each quantized weight ``W`` stored its qparams as one float64 tensor
  ``W_qparams`` of shape ``[2, C]`` (row 0 scales, row 1 zero points); static modules stored the
  output qparams as 0-dim ``output_scale`` / ``output_zero_point``.
* version 2 (current): ``W_scale`` float32 ``[C]``, ``W_zero_point`` (int64, or float32 for
  embeddings' float qparams) ``[C]``; output qparams ``scale`` float32 ``[1]`` and
  ``zero_point`` int64 ``[1]``, as torch.ao names them.
"""

from typing import Any

import torch
from torch import nn

from harness import compat
from harness.quant import engines as E
from harness.quant import int_mm as IM
from harness.quant import primitives as P

STATE_VERSION = 2


def in_graph_capture() -> bool:
    """True while torch.jit.trace or torch.export is recording (no data-dependent checks)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def as_scale(value: Any, name: str) -> torch.Tensor:
    """A one-element float32 scale tensor from a float or tensor; ``ValueError`` naming
    ``name`` unless finite and > 0 (the value check is skipped while a graph is captured)."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if in_graph_capture():
        return t
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point scale, got {t.dtype}")
    if t.numel() != 1:
        raise ValueError(f"{name}: expected one scale, got {t.numel()} values")
    t = t.to(torch.float32).reshape(1)
    if not (bool(torch.isfinite(t).all()) and float(t) > 0):
        raise ValueError(f"{name}: must be finite and > 0, got {float(t)}")
    return t


def as_zero_point(value: Any, dtype: torch.dtype, name: str) -> torch.Tensor:
    """A one-element int64 zero point inside ``dtype``'s range; ``ValueError`` naming ``name``."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if in_graph_capture():
        return t
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name}: expected an integer zero point, got {t.dtype}")
    if t.numel() != 1:
        raise ValueError(f"{name}: expected one zero point, got {t.numel()} values")
    t = t.to(torch.int64).reshape(1)
    lo, hi = P.dtype_bounds(dtype)
    if not lo <= int(t) <= hi:
        raise ValueError(f"{name}: {int(t)} outside the {dtype} range [{lo}, {hi}]")
    return t


def check_codes(q: torch.Tensor, name: str, dtypes: tuple[torch.dtype, ...], rank: str) -> None:
    """``ValueError`` naming ``name`` unless ``q`` is a tensor of one of ``dtypes``."""
    if not isinstance(q, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(q).__name__}")
    if q.dtype not in dtypes:
        raise ValueError(
            f"{name}: expected {' or '.join(str(d) for d in dtypes)} codes, got {q.dtype} "
            f"(quantize float input with harness.quant.nn.Quantize)"
        )


def check_engine_for_capture(engine: str) -> None:
    """Native engines cannot be traced or exported: say so instead of recording a wrong graph."""
    if engine in E.NATIVE_ENGINES and in_graph_capture():
        raise ValueError(
            f"engine: {engine!r} runs eagerly only; torch.jit.trace / torch.export need "
            f"'reference' or 'int_mm' (module.set_engine(...) or use_engine(...))"
        )


def weight_qparams_from_observer(
    observer: nn.Module, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Run ``observer`` on ``weight`` and quantize it: (codes, scale [C], zero_point [C],
    quant_min, quant_max). Per-channel observers must use ``ch_axis`` 0."""
    observer(weight.detach())
    scale, zero_point = observer.calculate_qparams()
    dtype = P.as_plain_dtype(observer.dtype)
    qmin, qmax = int(observer.quant_min), int(observer.quant_max)
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    if scale.numel() > 1:
        if int(getattr(observer, "ch_axis", 0)) != 0:
            raise ValueError("qconfig: per-channel weight observers must use ch_axis=0")
        axis: int | None = 0
    else:
        axis = None
    zero_point = torch.as_tensor(zero_point).reshape(-1)
    q = P.quantize(weight.detach().float(), scale, zero_point, dtype, qmin, qmax, axis)
    if not zero_point.is_floating_point():
        zero_point = zero_point.to(torch.int64)
    return q, scale, zero_point, qmin, qmax


def migrate_v1_qparams(state_dict: dict[str, Any], prefix: str, names: list[str]) -> None:
    """Version 1 -> 2: split each ``{W}_qparams`` [2, C] into ``{W}_scale`` / ``{W}_zero_point``
    (int64 zero points, except embeddings' float ones, recognised by ``float_zero_point``)."""
    for name in names:
        key = prefix + name + "_qparams"
        if key in state_dict:
            qp = state_dict.pop(key)
            state_dict[prefix + name + "_scale"] = qp[0].to(torch.float32).clone()
            state_dict[prefix + name + "_zero_point"] = qp[1].clone()
    for old, new, dtype in (
        ("output_scale", "scale", torch.float32),
        ("output_zero_point", "zero_point", torch.int64),
    ):
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old).to(dtype).reshape(1)


class QuantizedModule(nn.Module):
    """Base class: engine attribute, versioned state_dict loading, TorchScript preparation."""

    _version = STATE_VERSION
    # names of the weights whose qparams version 1 stored as "{name}_qparams"
    _v1_quantized_weights = ("weight",)
    # zero points that are float (embeddings); all others are int64
    _float_zero_points = False

    # every tensor the module may hold (absent ones are plain ``None`` attributes, not
    # buffers, so that torch.export and state_dict never see a ``None`` buffer)
    _tensor_names = ()

    engine: str

    def __init__(self, engine: str = "") -> None:
        super().__init__()
        self.engine = ""
        self.set_engine(engine)

    def _set_tensor(self, name: str, value: torch.Tensor | None) -> None:
        """Hold ``value`` as buffer ``name``; ``None`` removes the buffer (plain attribute)."""
        if value is None:
            self._buffers.pop(name, None)
            self.__dict__[name] = None
        else:
            self.__dict__.pop(name, None)
            if name in self._buffers:
                self._buffers[name] = value
            else:
                self.register_buffer(name, value)

    def set_engine(self, engine: str) -> "QuantizedModule":
        """Pin this module to ``engine`` (``""``: follow :func:`use_engine`). Returns self."""
        if engine:
            E.get_engine(engine)
        self.engine = engine
        return self

    def _resolved_engine(self) -> str:
        engine = E.resolve_engine(self.engine)
        check_engine_for_capture(engine)
        return engine

    def __prepare_scriptable__(self) -> nn.Module:
        # TorchScript cannot see use_engine(): a scripted module computes with its own
        # ``engine`` attribute ("" = reference; settable on the ScriptModule afterwards).
        # Native engines cannot be compiled at all; say so instead of silently changing them.
        if self.engine in E.NATIVE_ENGINES or (
            self.engine == "" and E.current_engine() in E.NATIVE_ENGINES
        ):
            raise ValueError(
                f"engine: {E.resolve_engine(self.engine)!r} runs eagerly only; "
                f"torch.jit.script needs 'reference' or 'int_mm'"
            )
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # derived from the module's tensors, rebuilt on demand: torch's packed weights, int_mm's
        # prepared weight-side terms
        for slot in ("_native_cache", "_int_mm_cache", "_int_mm_terms_cache"):
            state.pop(slot, None)
        return state

    def _cached(self, slot: str, key: tuple[Any, ...], build: Any) -> Any:
        """``build()``'s value, kept in ``slot`` until ``key`` (e.g. :meth:`_tensor_key`) changes."""
        cache = self.__dict__.setdefault(slot, {})
        if key not in cache:
            cache.clear()
            cache[key] = build()
        return cache[key]

    def _native_cached(self, key: tuple[Any, ...], build: Any) -> Any:
        """Packed weights for a native engine, rebuilt when the weights change."""
        return self._cached("_native_cache", key, build)

    def _int_mm_prepared(self, names: tuple[str, ...], build: Any) -> Any:
        """int_mm's weight-side terms (:mod:`harness.quant.int_mm`) of tensors ``names``, built
        once per weight (and per plan) instead of once per call."""
        return self._cached("_int_mm_cache", (IM.plan().kind, *self._tensor_key(*names)), build)

    def _int_mm_terms(self, inputs: tuple[Any, ...], names: tuple[str, ...], build: Any) -> Any:
        """int_mm's per-channel terms for one set of input qparams ``inputs`` (plain numbers)
        and the module's tensors ``names``: rebuilt only when either changes, so a layer fed at
        a fixed scale pays for them once."""
        return self._cached("_int_mm_terms_cache", (*inputs, *self._tensor_key(*names)), build)

    def _tensor_key(self, *names: str) -> tuple[Any, ...]:
        key: list[Any] = []
        for n in names:
            t = getattr(self, n)
            # The tensor itself, not its id: a key holding it keeps it alive, so a new tensor
            # can never reuse its id and hit a stale entry. Inference tensors cannot be modified
            # in place, so they carry no version counter.
            key.append(None if t is None else (_Same(t), 0 if t.is_inference() else t._version))
        return tuple(key)

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
        if version is None or version < 2:
            migrate_v1_qparams(state_dict, prefix, list(self._v1_quantized_weights))
            if self._float_zero_points:
                for name in self._v1_quantized_weights:
                    key = prefix + name + "_zero_point"
                    if key in state_dict:
                        state_dict[key] = state_dict[key].to(torch.float32)
            else:
                for name in self._v1_quantized_weights:
                    key = prefix + name + "_zero_point"
                    if key in state_dict:
                        state_dict[key] = state_dict[key].to(torch.int64)
        # Adopt the stored tensors as they are (shape and dtype): a module built with default
        # per-tensor qparams loads a per-channel state, a module without bias loads one with.
        for name in self._tensor_names:
            key = prefix + name
            if key in state_dict and isinstance(state_dict[key], torch.Tensor):
                self._set_tensor(name, state_dict[key].detach().clone())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        try:
            self._check_state()
        except ValueError as exc:
            error_msgs.append(f"{prefix or type(self).__name__}: {exc}")

    def _check_state(self) -> None:
        """Raise ``ValueError`` if the loaded tensors are inconsistent (overridden)."""

    def extra_repr(self) -> str:
        return f"engine={self.engine or '<context>'}"


class _Same:
    """A tensor as a cache-key part that compares by identity (tensors' ``==`` is elementwise)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.tensor is self.tensor

    def __hash__(self) -> int:
        return id(self.tensor)


def native_guard() -> Any:
    """Context for code that touches torch's quantized tensors (expected deprecations)."""
    return compat.expected_torch_deprecations()
