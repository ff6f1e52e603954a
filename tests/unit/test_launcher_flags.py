"""``tsvllm launch``'s flags: kebab-case, as every other tsvllm command, shown in ``--help``;
ts.llm_launcher's underscore spellings (the flags launch mirrors) parse to the same values."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsvllm import cli
from tsvllm.host.launcher import parse_args

#: ts.llm_launcher's flags (TorchServe 0.12, ts/llm_launcher.py) -> our spelling, with a value
MIRRORED = [
    ("--model_id", "--model-id", "org/m"),
    ("--model_name", "--model-name", "x"),
    ("--model_store", "--model-store", "/tmp/store"),
    ("--disable_token_auth", "--disable-token-auth", None),
    ("--vllm_engine.max_num_seqs", "--vllm-engine.max-num-seqs", "4"),
    ("--vllm_engine.max_model_len", "--vllm-engine.max-model-len", "512"),
    ("--vllm_engine.download_dir", "--vllm-engine.download-dir", "/tmp/dl"),
    ("--startup_timeout", "--startup-timeout", "9"),
]
#: the flags launch adds (kebab-case only)
OURS = [
    "--config",
    "--handler",
    "--rag-index",
    "--guards",
    "--device",
    "--tensor-parallel-size",
    "--port",
    "--keep-artifacts",
    "--drain-timeout",
    "--dtype",
]


def _flag(spelling: str, value: str | None) -> list[str]:
    return [spelling] if value is None else [spelling, value]


@pytest.mark.parametrize(("alias", "flag", "value"), MIRRORED)
def test_both_spellings_parse_to_the_same_value(alias, flag, value):
    base = ["--config", "c.yaml"] if flag != "--model-id" else []
    ours = parse_args([*base, *_flag(flag, value)])
    theirs = parse_args([*base, *_flag(alias, value)])
    assert vars(ours) == vars(theirs)
    assert vars(ours) != vars(parse_args(["--config", "c.yaml"]))  # the flag took effect


def test_the_flags_keep_ts_llm_launcher_meaning_and_defaults():
    args = parse_args([arg for alias, _, value in MIRRORED for arg in _flag(alias, value)])
    assert (args.model_id, args.model_name, args.model_store) == ("org/m", "x", "/tmp/store")
    assert (args.max_num_seqs, args.max_model_len, args.download_dir) == (4, 512, "/tmp/dl")
    assert args.disable_token_auth is True and args.startup_timeout == 9
    defaults = parse_args(["--model-id", "org/m"])
    assert (defaults.model_name, defaults.model_store, defaults.max_num_seqs) == (
        "model",
        "model_store",
        256,
    )
    assert defaults.disable_token_auth is False and defaults.max_model_len is None
    assert defaults.startup_timeout == 1200  # ts.llm_launcher's default


def test_no_model_and_abbreviations_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args([])
    assert "give --model-id" in capsys.readouterr().err
    for abbreviated in (["--model-i", "m"], ["--model_i", "m"], ["--disable-token"]):
        with pytest.raises(SystemExit):
            parse_args(abbreviated)


@pytest.mark.parametrize(
    "run",
    [lambda: parse_args(["--help"]), lambda: cli.main(["launch", "--help"])],
    ids=["launcher", "tsvllm"],
)
def test_help_shows_the_kebab_case_flags(run, capsys):
    with pytest.raises(SystemExit) as done:
        run()
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage, rest = text.split("options:", 1)
    options, epilog = rest.split("ts.llm_launcher's underscore spellings", 1)
    shown = set(re.findall(r"(?<![\w-])--[a-z][\w.-]*", usage + options))
    assert shown == {flag for _, flag, _ in MIRRORED} | set(OURS) | {"--help"}
    assert all(alias in epilog for alias, _, _ in MIRRORED)
    # the port layout launch really uses (tests/unit/test_launcher_ports.py checks it)
    port = " ".join(options.split("--port P", 1)[1].split())
    assert "inference port P (default 8080); metrics on P+2" in port
    assert "gRPC on P+3 and P+4 (7070 and 7071 when P is 8080)" in port
    assert "Unix socket MODEL_STORE/.torchserve/management.sock" in port
    assert "or on TCP P+1 with --disable-token-auth" in port


def _options(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, str]]:
    """``(command, flag)`` for every flag ``--help`` shows, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _options(subparser, f"{name} {sub}")
        elif action.help != argparse.SUPPRESS:
            yield from ((name, flag) for flag in action.option_strings)


def test_every_command_spells_its_flags_in_kebab_case():
    from tsvllm.host import entrypoint, launcher

    parsers = {
        "tsvllm": cli.build_parser(),
        "tsvllm launch": launcher.build_parser(),
        "entrypoint": entrypoint._parser(),
    }
    flags = [flag for name, p in parsers.items() for flag in _options(p, name)]
    assert ("tsvllm deploy", "--disable-token-auth") in flags
    assert ("tsvllm launch", "--vllm-engine.max-model-len") in flags
    assert ("entrypoint worker-node", "--node-rank") in flags
    kebab = re.compile(r"-[a-z]|--[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)?")
    assert [flag for flag in flags if not kebab.fullmatch(flag[1])] == []


def test_the_readme_launch_section_names_every_flag_and_the_port_layout():
    from tsvllm.host.launcher import build_parser

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## One-command launch", 1)[1].split("\n## ", 1)[0]
    text = " ".join(section.split())
    shown = {flag for _, flag in _options(build_parser(), "launch")} - {"-h", "--help"}
    assert sorted(f for f in shown if f"`{f}" not in text) == []
    assert (
        "inference on P, metrics on P+2, TorchServe's gRPC on P+3 and P+4 (7070 and 7071 when P "
        "is 8080). With token auth on, the management API has no TCP port" in text
    )
    assert "with `--disable-token-auth` it is on P+1" in text
