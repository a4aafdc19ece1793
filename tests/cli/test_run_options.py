"""``run``'s option table (``frontend.run_options``): click's command and the click-free fast
path (``launch``) are both made from it, and parse every option to the same arguments."""

from __future__ import annotations

from typing import Any

import click
import pytest

from tests.conftest import EXAMPLES
from xinterface.cli import run, run_arguments
from xinterface.frontend.run_options import FLAG, MODES, RUN_OPTIONS, Option, default_value
from xinterface.launch import _parse_run

HELLO = str(EXAMPLES / "hello-real.S")

# Values each kind of option takes, as typed; and values both paths refuse.
GOOD: dict[str, list[str]] = {
    "gpa": ["0x2000", "4096", "0", "0o17"],
    "mode": list(MODES),
    "memory": ["2M", "1.5G", "4096B", "512KiB", "3"],
    "vcpus": ["1", "3", " 2"],
    "serial": ["none", "-", "stdio", ""],
    "timeout": ["0", "2.5", "1e3"],
    "snapshot-on": ["login:", "a b", "--"],
    "snapshot": ["snap", "/tmp/a b"],
}
BAD: dict[str, list[str]] = {
    "gpa": ["-1", "0x", "ten"],
    "mode": ["v86", "Real"],
    "memory": ["lots", "0", "1.5B", "-1M"],
    "vcpus": ["0", "-2", "x", "1.5"],
    "timeout": ["-1", "inf", "nan", "soon"],
}


def _click(args: list[str]) -> dict[str, Any]:
    with run.make_context("run", args) as ctx:
        options = run_arguments(ctx)
        options["image"] = str(ctx.params["image"])
        return options


def _both(args: list[str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    return _parse_run(args), _click(args)


def test_the_table_is_clicks_options_in_order() -> None:
    names = [p.name for p in run.params if isinstance(p, click.Option)]
    assert names == [o.name for o in RUN_OPTIONS]
    for option, param in zip(RUN_OPTIONS, [p for p in run.params
                                           if isinstance(p, click.Option)], strict=True):
        assert param.is_flag == (option.kind == FLAG)
        assert param.help == option.help
        if option.kind != FLAG:
            assert param.default == option.default


def test_defaults_are_the_same() -> None:
    fast, slow = _both([HELLO])
    assert fast == slow
    assert fast["gpa"] is None and fast["memory"] == default_value(RUN_OPTIONS[2])


@pytest.mark.parametrize(("name", "value"),
                         [(n, v) for n, values in GOOD.items() for v in values])
def test_each_value_parses_the_same(name: str, value: str) -> None:
    for args in ([f"--{name}", value, HELLO], [HELLO, f"--{name}={value}"]):
        fast, slow = _both(args)
        assert fast is not None, args
        assert fast == slow, args


@pytest.mark.parametrize("option", [o for o in RUN_OPTIONS if o.kind == FLAG],
                         ids=lambda o: o.flag)
def test_each_flag_parses_the_same(option: Option) -> None:
    fast, slow = _both([f"--{option.flag}", HELLO])
    assert fast is not None and fast[option.name] is True
    assert fast == slow


@pytest.mark.parametrize(("name", "value"),
                         [(n, v) for n, values in BAD.items() for v in values])
def test_each_bad_value_is_refused_by_both(name: str, value: str) -> None:
    args = [f"--{name}={value}", HELLO]
    assert _parse_run(args) is None   # click then says what is wrong
    with pytest.raises(click.BadParameter) as info:
        _click(args)
    assert info.value.param is not None and info.value.param.name == name


def test_an_interactive_console_has_no_limit_on_both_paths() -> None:
    for args in (["--serial", "stdio", HELLO], ["--serial=stdio", "--timeout=3", HELLO]):
        fast, slow = _both(args)
        assert fast == slow
    assert _both(["--serial", "stdio", HELLO])[1]["timeout"] == 0
    assert _both(["--serial", "stdio", "--timeout", "3", HELLO])[1]["timeout"] == 3
