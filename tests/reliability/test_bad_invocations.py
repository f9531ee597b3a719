"""Bad invocations: an unknown subject, case, engine or format, an empty store, a store from a
newer qbc. Each is a clear error naming the thing, never a traceback or a silent pass."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from harness import cli
from harness.manifest import SCHEMA_VERSION
from harness.outcomes import GoldenFailure, IntegrityError
from harness.policy import Policy
from harness.verify import collect, run_check

from .reliability_helpers import (
    ENGINE,
    OBSERVER,
    PRODUCER,
    REPO,
    SUBJECT,
    manifest_file,
    read_manifest,
    write_manifest,
)


@pytest.fixture(scope="module")
def regen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("regen_tool", REPO / "tools/regen_goldens.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "mylib"], "unknown subject 'mylib'; known: torch_ao, qbc"),
        (
            ["--subject", "torch_ao", "--engine", "tpu"],
            "unknown torch_ao engine 'tpu'",
        ),
        (["--subject", "torch_ao", "--case", "resnet*"], "no case matches 'resnet*'"),
    ],
)
def test_regen_tool_names_the_unknown_thing_and_writes_nothing(
    regen, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    store = tmp_path / "golden"

    code = regen(["--store", str(store), *args])

    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(store.rglob("*"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cases", "--subject", "mylib"], "unknown subject 'mylib'"),
        (["engines", "--subject", "mylib"], "unknown subject 'mylib'"),
        (["generate", "--subject", "mylib"], "unknown subject 'mylib'"),
        (["generate", "--subject", "torch_ao", "--engine", "tpu"], "'tpu'; known: fbgemm"),
        (["generate", "--subject", "torch_ao", "--case", "resnet*"], "no case matches 'resnet*'"),
    ],
)
def test_qbc_cli_names_the_unknown_thing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    extra = ["--out", str(tmp_path / "golden")] if argv[0] == "generate" else []

    code = cli.main([*argv, *extra])

    assert code == 2
    assert message in capsys.readouterr().err


def relabel(store: Path, **names: str) -> Path:
    """Move the observer golden to another subject / engine / case folder, manifest agreeing,
    so only the name itself is unknown."""
    src = store / SUBJECT / PRODUCER / ENGINE / OBSERVER
    subject = names.get("subject", SUBJECT)
    engine, case = names.get("engine", ENGINE), names.get("case", OBSERVER)
    dst = store / subject / PRODUCER / engine / case
    dst.parent.mkdir(parents=True, exist_ok=True)
    if subject != SUBJECT:
        shutil.copytree(store / SUBJECT / PRODUCER / "blobs", store / subject / PRODUCER / "blobs")
    shutil.move(str(src), dst)
    data = json.loads((dst / "manifest.json").read_text())
    data.update(subject=subject, engine=engine, case=case)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ({"subject": "mylib"}, "unknown subject 'mylib'"),
        ({"engine": "tpu"}, "unknown torch_ao engine 'tpu'"),
        ({"case": "resnet50"}, "unknown torch_ao case 'resnet50'"),
    ],
)
def test_a_golden_naming_something_this_qbc_does_not_know_fails_naming_it(
    store: Path, policy: Policy, names: dict[str, str], message: str
) -> None:
    relabel(store, **names)
    items = [i for i in collect(store) if i.golden.case == names.get("case", OBSERVER)]
    items = [i for i in items if i.golden.subject == names.get("subject", SUBJECT)]
    items = [i for i in items if i.golden.engine == names.get("engine", ENGINE)]
    assert items

    for item in items:
        with pytest.raises(
            GoldenFailure, match="golden names something this qbc does not know"
        ) as e:
            run_check(item, policy)
        assert message in str(e.value)


def test_a_golden_with_a_format_this_qbc_does_not_know_fails_naming_it(
    store: Path, policy: Policy
) -> None:
    data = read_manifest(store, OBSERVER)
    data["files"]["onnx"] = data["files"]["state_dict"]
    write_manifest(store, OBSERVER, data)
    (item,) = [i for i in collect(store) if i.golden.case == OBSERVER and i.fmt == "onnx"]

    with pytest.raises(GoldenFailure) as e:
        run_check(item, policy)

    assert "unknown format 'onnx'; known: input, state_dict" in str(e.value)


def test_verify_of_an_empty_store_says_so_and_exits_5_as_pytest_collecting_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "golden").mkdir()

    code = cli.main(["verify", "--store", str(tmp_path / "golden"), "-n", "0"])

    assert code == 5  # pytest's "no tests collected": a CI gate never passes on nothing
    assert f"the golden store {tmp_path / 'golden'} holds no goldens" in capsys.readouterr().err


def test_verify_refuses_a_missing_store_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["verify", "--store", str(tmp_path / "nowhere"), "-n", "0"])

    assert code == 2
    assert f"no golden store at {tmp_path / 'nowhere'}" in capsys.readouterr().err


def test_verify_of_a_store_from_a_newer_qbc_says_upgrade_qbc_naming_file_and_versions(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for case_dir in (store / SUBJECT / PRODUCER / ENGINE).iterdir():
        data = json.loads((case_dir / "manifest.json").read_text())
        data["schema"] = SCHEMA_VERSION + 1
        (case_dir / "manifest.json").write_text(json.dumps(data))

    code = cli.main(["verify", "--store", str(store), "-n", "0"])

    out = capsys.readouterr().out
    assert code == 1
    assert str(manifest_file(store, OBSERVER)) in out
    assert (
        f"golden schema {SCHEMA_VERSION + 1}, newer than this qbc understands "
        f"(it reads schema {SCHEMA_VERSION}): upgrade qbc"
    ) in out
    assert "3 failed" in out  # the two goldens, and the copied store's missing index


def test_a_missing_format_file_is_an_integrity_failure_not_a_key_error(store: Path) -> None:
    (golden,) = [i.golden for i in collect(store) if i.golden.case == OBSERVER][:1]
    (golden.producer_dir / golden.manifest.files["state_dict"].path).unlink()

    with pytest.raises(IntegrityError, match="is missing"):
        golden.path("state_dict")
