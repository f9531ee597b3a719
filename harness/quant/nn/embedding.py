"""Weight-only quantized Embedding and EmbeddingBag (8-bit or 4-bit codes, float qparams per row).

Row ``r`` of the table is stored as codes ``q[r]`` (uint8; 4-bit codes in ``[0, 15]`` one per
byte) with a float scale ``s[r]`` and a float zero point ``z[r]`` (``z = -min / s``, not
rounded, as torch.ao's ``per_channel_affine_float_qparams``). Looking a row up dequantizes it::

    E[r] = (q[r] - z[r]) * s[r]                 (float32)

EmbeddingBag reduces the looked-up rows of each bag (sum, mean or max; optional
``per_sample_weights`` for sum). The integer engines (``reference``, ``int_mm``) share this
float path (there is no integer matmul); native engines call torch's fused row-wise kernels
(``embedding_bag_byte_rowwise_offsets`` / ``embedding_bag_4bit_rowwise_offsets``), which store
``bias = -z * s`` per row (float16 scale and bias for 4 bits), so they agree to within a
fraction of one step ``s[r]``.
"""

from typing import Any

import torch
from torch import nn

from harness.quant import engines as E
from harness.quant import primitives as P
from harness.quant.nn._base import QuantizedModule, native_guard, weight_qparams_from_observer

INDEX_DTYPES = (torch.int64, torch.int32)
_MODES = {"sum": 0, "mean": 1, "max": 2}


class _EmbeddingBase(QuantizedModule):
    """Shared table, from_float and checks of Embedding / EmbeddingBag."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    _tensor_names = ("weight", "weight_scale", "weight_zero_point")
    _float_zero_points = True
    _FLOAT_MODULE: type = nn.Embedding

    def _init_table(
        self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, bits: int
    ) -> None:
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(
                f"num_embeddings/embedding_dim: must be positive, got {num_embeddings}, "
                f"{embedding_dim}"
            )
        if bits not in (4, 8):
            raise ValueError(f"bits: embeddings are quantized to 8 or 4 bits, got {bits}")
        if bits == 4 and embedding_dim % 2:
            raise ValueError(
                f"embedding_dim: 4-bit rows pack two codes a byte, got {embedding_dim}"
            )
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx: {padding_idx} outside the table")
            padding_idx = padding_idx % num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = -1 if padding_idx is None else padding_idx
        self.bits = bits
        self.quant_max = 15 if bits == 4 else 255
        self.register_buffer(
            "weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.uint8)
        )
        self.register_buffer("weight_scale", torch.ones(num_embeddings))
        self.register_buffer("weight_zero_point", torch.zeros(num_embeddings))

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> Any:
        """Quantize a float ``nn.Embedding`` / ``nn.EmbeddingBag`` whose ``.qconfig.weight`` is a
        float-qparams per-row observer (``dtype`` quint8 -> 8 bits, quint4x2 / uint4 -> 4)."""
        if type(mod) is not cls._FLOAT_MODULE:
            raise ValueError(
                f"float_module: expected {cls._FLOAT_MODULE.__name__}, got {type(mod).__name__}"
            )
        qconfig = getattr(mod, "qconfig", None)
        if qconfig is None:
            raise ValueError("float_module: has no .qconfig (set one before from_float)")
        observer = qconfig.weight()
        dtype = P.as_plain_dtype(observer.dtype)
        if dtype not in (torch.uint8, torch.uint4):
            raise ValueError(f"qconfig: embedding weights are quint8 or quint4x2, got {dtype}")
        if getattr(observer, "qscheme", None) != torch.per_channel_affine_float_qparams:
            raise ValueError("qconfig: embeddings need per_channel_affine_float_qparams weights")
        m = cls._from_float_module(mod, 4 if dtype == torch.uint4 else 8)
        q, s, z, _, _ = weight_qparams_from_observer(observer, mod.weight)
        m.set_weight(q.to(torch.uint8), s, z)
        return m

    @classmethod
    def _from_float_module(cls, mod: nn.Module, bits: int) -> Any:
        raise NotImplementedError

    def set_weight(
        self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> None:
        """Install uint8 codes [R, D] with float32 scale [R] and float zero point [R]."""
        self.weight = codes.contiguous()
        self.weight_scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        self.weight_zero_point = torch.as_tensor(zero_point, dtype=torch.float32).reshape(-1)
        self._check_state()

    def _check_state(self) -> None:
        r, d = self.num_embeddings, self.embedding_dim
        if self.weight.dtype != torch.uint8 or tuple(self.weight.shape) != (r, d):
            raise ValueError(
                f"weight: expected uint8 codes of shape ({r}, {d}), got {self.weight.dtype} "
                f"{tuple(self.weight.shape)}"
            )
        if int(self.weight.max()) > self.quant_max:
            raise ValueError(f"weight: codes above {self.quant_max} in a {self.bits}-bit table")
        for name in ("weight_scale", "weight_zero_point"):
            t = getattr(self, name)
            if t.numel() != r or not t.is_floating_point():
                raise ValueError(f"{name}: expected {r} float values, got {t.dtype} {t.numel()}")
        if bool((self.weight_scale <= 0).any()):
            raise ValueError("weight_scale: must be > 0")

    def _check_indices(self, indices: torch.Tensor) -> None:
        if not isinstance(indices, torch.Tensor) or indices.dtype not in INDEX_DTYPES:
            raise ValueError(
                f"indices: expected an int64 or int32 tensor, got "
                f"{getattr(indices, 'dtype', type(indices).__name__)}"
            )
        if indices.numel() and (
            int(indices.min()) < 0 or int(indices.max()) >= self.num_embeddings
        ):
            raise ValueError(f"indices: values must lie in [0, {self.num_embeddings})")

    def dequantized_rows(self, indices: torch.Tensor) -> torch.Tensor:
        """``(q[idx] - z[idx]) * s[idx]`` for flat ``indices``: [N, D] float32."""
        idx = indices.reshape(-1).to(torch.int64)
        q = self.weight.index_select(0, idx).to(torch.float32)
        s = self.weight_scale.index_select(0, idx).reshape(-1, 1)
        z = self.weight_zero_point.index_select(0, idx).reshape(-1, 1)
        return (q - z) * s

    @torch.jit.unused
    def _packed_rowwise(self) -> torch.Tensor:
        """torch's fused row-wise table: codes, then per-row scale and bias = -z * s.

        8 bits: [R, D + 8] with float32 scale and bias; 4 bits: [R, D / 2 + 4], two codes a
        byte (even column in the low nibble) and float16 scale and bias."""

        def build() -> torch.Tensor:
            s = self.weight_scale.reshape(-1, 1)
            bias = -self.weight_zero_point.reshape(-1, 1) * s
            if self.bits == 8:
                tail = torch.cat([s.contiguous(), bias.contiguous()], 1).view(torch.uint8)
                return torch.cat([self.weight, tail], 1).contiguous()
            codes = self.weight[:, 0::2] | (self.weight[:, 1::2] << 4)
            tail = torch.cat([s.half(), bias.half()], 1).contiguous().view(torch.uint8)
            return torch.cat([codes, tail], 1).contiguous()

        return self._native_cached(
            ("rowwise", *self._tensor_key("weight", "weight_scale", "weight_zero_point")), build
        )

    @torch.jit.unused
    def _native_bag(
        self,
        engine: str,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        mode: int,
        per_sample_weights: torch.Tensor | None,
        include_last_offset: bool,
    ) -> torch.Tensor:
        with E.native_backend(engine), native_guard():
            op = (
                torch.ops.quantized.embedding_bag_byte_rowwise_offsets
                if self.bits == 8
                else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets
            )
            return op(
                self._packed_rowwise(),
                indices,
                offsets,
                False,
                mode,
                False,
                per_sample_weights,
                None,
                include_last_offset,
            )


class Embedding(_EmbeddingBase):
    """Weight-only quantized Embedding: ``forward(indices) -> float [*indices.shape, D]``.

    Buffers (state_dict v2): ``weight`` uint8 [R, D] codes; ``weight_scale`` float32 [R];
    ``weight_zero_point`` float32 [R]. Rows at ``padding_idx`` are looked up like any other
    (as torch's ``F.embedding`` in eval).
    """

    _FLOAT_MODULE = nn.Embedding

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        bits: int = 8,
        engine: str = "",
    ) -> None:
        super().__init__(engine)
        self._init_table(num_embeddings, embedding_dim, padding_idx, bits)

    @classmethod
    def _from_float_module(cls, mod: nn.Module, bits: int) -> "Embedding":
        return cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, bits)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
                self._check_indices(indices)
            engine = self._resolved_engine()
            if engine in E.NATIVE_ENGINES:
                flat = indices.reshape(-1).to(torch.int64)
                offsets = torch.arange(flat.numel(), dtype=torch.int64)
                rows = self._native_bag(engine, flat, offsets, 0, None, False)
                return rows.reshape([*indices.shape, self.embedding_dim])
        rows = self.dequantized_rows(indices)
        shape = list(indices.shape)
        shape.append(self.embedding_dim)
        return rows.reshape(shape)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, {super().extra_repr()}"
        )


class EmbeddingBag(_EmbeddingBase):
    """Weight-only quantized EmbeddingBag.

    ``forward(indices, offsets=None, per_sample_weights=None) -> float [B, D]``: 2-D
    ``indices`` [B, L] are B bags of L; 1-D ``indices`` need ``offsets`` (bag starts, plus the
    end if ``include_last_offset``). ``mode`` "sum" (optionally weighted), "mean" or "max";
    empty bags give zeros; entries equal to ``padding_idx`` are skipped. Native engines take
    only "sum" without ``padding_idx`` (torch's kernel returns the sum for "mean"). Buffers as :class:`Embedding`.
    """

    _FLOAT_MODULE = nn.EmbeddingBag

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: str = "sum",
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        bits: int = 8,
        engine: str = "",
    ) -> None:
        super().__init__(engine)
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {list(_MODES)}, got {mode!r}")
        self._init_table(num_embeddings, embedding_dim, padding_idx, bits)
        self.mode = mode
        self.include_last_offset = include_last_offset

    @classmethod
    def _from_float_module(cls, mod: nn.Module, bits: int) -> "EmbeddingBag":
        if mod.max_norm is not None or mod.scale_grad_by_freq:
            raise ValueError("float_module: max_norm / scale_grad_by_freq are not supported")
        return cls(
            mod.num_embeddings,
            mod.embedding_dim,
            mod.mode,
            mod.include_last_offset,
            mod.padding_idx,
            bits,
        )

    def forward(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if indices.dim() == 2:
            n_bags = indices.shape[0]
            flat = indices.reshape(-1).to(torch.int64)
            starts = torch.arange(n_bags, dtype=torch.int64) * indices.shape[1]
            include_last = False
        else:
            flat = indices.to(torch.int64)
            if offsets is None:
                raise ValueError("offsets: required with 1-D indices")
            starts = offsets.to(torch.int64)
            include_last = self.include_last_offset
        if not torch.jit.is_scripting():
            if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
                self._check_bag_inputs(indices, offsets, per_sample_weights)
            engine = self._resolved_engine()
            if engine in E.NATIVE_ENGINES:
                # torch's row-wise kernels silently return the *sum* for mode=mean (measured on
                # torch 2.13), have no max and no padding_idx: refuse rather than differ.
                if self.mode != "sum" or self.padding_idx >= 0:
                    raise ValueError(
                        f"mode: torch's {engine} row-wise kernel computes only 'sum' without "
                        f"padding_idx (got mode='{self.mode}'); use reference or int_mm"
                    )
                psw = None if per_sample_weights is None else per_sample_weights.reshape(-1)
                return self._native_bag(engine, flat, starts, _MODES[self.mode], psw, include_last)
        if include_last:
            starts = starts[:-1]
        n_bags = starts.shape[0]
        positions = torch.arange(flat.shape[0], dtype=torch.int64)
        # bag of each position: the last start <= position (static shapes, export-friendly)
        bag = torch.searchsorted(starts, positions, right=True) - 1
        rows = self.dequantized_rows(flat)
        keep = torch.ones_like(flat, dtype=torch.bool)
        if self.padding_idx >= 0:
            keep = flat != self.padding_idx
        if self.include_last_offset and indices.dim() == 1 and offsets is not None:
            # entries past the final offset belong to no bag
            keep = keep & (positions < offsets[-1])
        bag = torch.where(keep, bag, torch.zeros_like(bag))
        keep_f = keep.to(torch.float32).reshape(-1, 1)
        counts = torch.zeros(n_bags).index_add(0, bag, keep_f.reshape(-1))
        if self.mode == "max":
            neg = torch.full_like(rows, float("-inf"))
            vals = torch.where(keep.reshape(-1, 1), rows, neg)
            init = torch.full([n_bags, self.embedding_dim], float("-inf"))
            index = bag.reshape(-1, 1).expand(rows.shape[0], self.embedding_dim)
            out = init.scatter_reduce(0, index, vals, "amax", include_self=True)
            return torch.where(counts.reshape(-1, 1) > 0, out, torch.zeros_like(out))
        if per_sample_weights is not None:
            rows = rows * per_sample_weights.reshape(-1, 1).to(torch.float32)
        out = torch.zeros(n_bags, self.embedding_dim).index_add(0, bag, rows * keep_f)
        if self.mode == "mean":
            out = out / torch.clamp(counts, min=1.0).reshape(-1, 1)
        return out

    @torch.jit.unused
    def _check_bag_inputs(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor | None,
        per_sample_weights: torch.Tensor | None,
    ) -> None:
        self._check_indices(indices)
        if indices.dim() not in (1, 2):
            raise ValueError(f"indices: expected rank 1 or 2, got {indices.dim()}")
        if indices.dim() == 2 and offsets is not None:
            raise ValueError("offsets: must be None with 2-D indices (each row is a bag)")
        if offsets is not None:
            if offsets.dtype not in INDEX_DTYPES or offsets.dim() != 1:
                raise ValueError(f"offsets: expected a 1-D int64/int32 tensor, got {offsets.dtype}")
            if offsets.numel() and (
                int(offsets[0]) != 0 or bool((offsets[1:] < offsets[:-1]).any())
            ):
                raise ValueError("offsets: must start at 0 and be non-decreasing")
        if per_sample_weights is not None:
            if self.mode != "sum":
                raise ValueError("per_sample_weights: only mode='sum' takes them")
            if per_sample_weights.shape != indices.shape:
                raise ValueError(
                    f"per_sample_weights: shape {tuple(per_sample_weights.shape)} differs from "
                    f"indices {tuple(indices.shape)}"
                )

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode}, bits={self.bits}, "
            f"{super().extra_repr()}"
        )
