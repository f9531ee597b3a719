"""ISA class: detected from CPU flags and the caps in the environment, ordered, cappable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import isa

AVX2 = {"fma", "avx", "avx2"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
VNNI = AVX512 | {"avx512_vnni"}  # the AMD EPYC these goldens were measured on
AMX = VNNI | {"amx_tile", "amx_int8", "amx_bf16"}


@pytest.mark.parametrize(
    ("flags", "cls"),
    [
        (set(), "base"),
        ({"avx", "sse4_2"}, "base"),
        (AVX2, "avx2"),
        (AVX2 | {"avx512f"}, "avx2"),  # AVX512F alone is not the AVX512_CORE the kernels need
        (AVX512, "avx512"),
        (VNNI, "avx512_vnni"),
        (AMX, "amx"),
    ],
)
def test_class_is_the_highest_whose_instructions_the_cpu_has(flags: set[str], cls: str) -> None:
    assert isa.class_of_flags(flags) == cls


def test_classes_are_ordered_from_base_to_amx() -> None:
    assert isa.CLASSES == ("base", "avx2", "avx512", "avx512_vnni", "amx")
    assert isa.lower("avx512_vnni", "avx2") == "avx2"
    with pytest.raises(ValueError, match="unknown ISA class 'avx3'"):
        isa.rank("avx3")


def test_a_capped_process_reports_the_capped_class() -> None:
    caps = isa.cap_environment("avx2", "avx512_vnni")
    me = isa.isa_of(VNNI, caps)
    assert (me.cpu, me.cls, me.capped) == ("avx512_vnni", "avx2", True)
    assert me.describe() == "avx2 (capped from avx512_vnni)"


def test_one_library_capped_lowers_the_class_and_a_cap_above_the_cpu_changes_nothing() -> None:
    assert isa.isa_of(VNNI, {"ONEDNN_MAX_CPU_ISA": "avx512_core"}).cls == "avx512"
    assert isa.isa_of(AVX2, {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1"}).cls == "avx2"
    # ATen compares lower-case names exactly: "AVX2" is ignored by ATen, so by us too.
    assert isa.isa_of(VNNI, {"ATEN_CPU_CAPABILITY": "AVX2"}).cls == "avx512_vnni"


def test_the_cap_environment_caps_all_three_libraries_in_their_own_spelling() -> None:
    assert isa.cap_environment("avx2", "avx512_vnni") == {
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    }
    assert isa.cap_environment("avx512", "avx512_vnni")["FBGEMM_ENABLE_INSTRUCTIONS"] == "AVX512"
    assert isa.cap_environment("avx512_vnni", "avx512_vnni") == {}


def test_a_machine_reaches_every_lower_class_but_base_and_never_a_higher_one() -> None:
    # fbgemm has no setting below AVX2, so no process can be capped to base.
    assert isa.isa_of(VNNI, {}).reachable() == ("avx2", "avx512", "avx512_vnni")
    assert isa.isa_of(AVX2, {}).reachable() == ("avx2",)
    with pytest.raises(isa.IsaCapError, match="cannot raise"):
        isa.cap_environment("avx512_vnni", "avx2")
    with pytest.raises(isa.IsaCapError, match="FBGEMM_ENABLE_INSTRUCTIONS"):
        isa.cap_environment("base", "avx2")


def test_the_run_wide_switch_is_an_upper_bound() -> None:
    env = {"QBC_ISA_CAP": "avx512"}
    cpu = isa.class_of_flags(isa.cpu_flags())
    capped = isa.apply_run_cap(env)
    if isa.rank(cpu) > isa.rank("avx512"):
        assert capped == "avx512" and env["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    else:  # already at or below avx512: nothing to cap
        assert capped is None and set(env) == {"QBC_ISA_CAP"}


def test_the_run_wide_switch_refuses_an_unknown_class_and_conflicting_caps() -> None:
    with pytest.raises(isa.IsaCapError, match="unknown ISA class 'avx3'"):
        isa.apply_run_cap({"QBC_ISA_CAP": "avx3"})
    if isa.rank(isa.class_of_flags(isa.cpu_flags())) <= isa.rank("avx2"):
        pytest.skip("this CPU is already avx2 or lower: the cap sets nothing that could conflict")
    with pytest.raises(isa.IsaCapError, match="unset one of them"):
        isa.apply_run_cap({"QBC_ISA_CAP": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in isa.CAPS and k != "QBC_ISA_CAP"}
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )


def test_the_run_wide_switch_caps_torch_when_harness_is_imported_first() -> None:
    out = _python(
        "import harness, torch; from harness import isa; "
        "print(isa.machine_class(), torch.backends.cpu.get_cpu_capability())",
        QBC_ISA_CAP="avx2",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cpu = isa.class_of_flags(isa.cpu_flags())
    expected = "avx2 AVX2" if isa.rank(cpu) >= isa.rank("avx2") else f"{cpu} DEFAULT"
    assert out.stdout.split() == expected.split()


def test_the_run_wide_switch_refuses_to_run_after_torch_started_uncapped() -> None:
    if isa.rank(isa.class_of_flags(isa.cpu_flags())) <= isa.rank("avx2"):
        pytest.skip("QBC_ISA_CAP=avx2 changes nothing on this CPU")
    out = _python("import torch, harness", QBC_ISA_CAP="avx2")
    assert out.returncode != 0
    assert "honoured after torch started" in out.stderr
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in out.stderr  # how to do it instead


@pytest.mark.parametrize(
    ("cpu", "aten", "capped"),
    [
        # ATen's levels are default < avx2 < avx512; every class from avx512 up is its top level
        ("avx512_vnni", "avx2", True),
        ("avx512_vnni", "default", True),
        ("avx512_vnni", "avx512", False),  # the level this CPU gives ATen anyway
        ("avx512", "avx2", True),
        ("avx2", "avx2", False),  # a real AVX2 CPU: nothing to emulate
        ("avx512_vnni", "AVX2", False),  # ATen compares lower-case only: it ignores this value
        ("avx512_vnni", "", False),
    ],
)
def test_aten_is_capped_only_below_the_level_the_cpu_gives_it(
    monkeypatch: pytest.MonkeyPatch, cpu: str, aten: str, capped: bool
) -> None:
    monkeypatch.setattr(isa, "detect", lambda: isa.Isa(cpu=cpu, cls=cpu))
    assert isa.aten_capped({isa.ATEN: aten}) is capped
