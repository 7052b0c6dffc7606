"""The committed man pages are generated from the commands and must not drift."""

import os

import click

from coron_cli.manpages import COMMANDS, render_all
from tests.helpers import ROOT

MAN = os.path.join(ROOT, "man")


def test_man_pages_up_to_date():
    pages = render_all()
    assert sorted(pages) == sorted(f"{name}.1" for name, _ in COMMANDS)
    for name, text in pages.items():
        path = os.path.join(MAN, name)
        assert os.path.exists(path), f"{name} missing: run 'make man'"
        with open(path) as fh:
            assert fh.read() == text, f"man/{name} is out of date: run 'make man'"


def _commands(command, path):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


def test_man_pages_document_every_option():
    pages = render_all()
    import importlib

    for name, module in COMMANDS:
        cli = importlib.import_module(module).cli
        page = pages[f"{name}.1"]
        plain = " ".join(page.replace("\\-", "-").split())        # roff escapes undone
        for path, command in _commands(cli, name):
            if path != name:
                assert path.replace("-", "\\-") in page, path
            for p in command.params:
                if isinstance(p, click.Option) and not p.hidden:
                    flag = max(p.opts, key=len).replace("-", "\\-")
                    assert flag in page, (path, flag)
                    # with its help text (its first words; the page rewraps the lines)
                    assert p.help, (path, p.name)
                    start = " ".join(p.help.split()[:4]).split("\b")[0].strip()
                    assert start in plain, (path, p.name, start)
                elif isinstance(p, click.Argument):
                    assert p.human_readable_name in page, (path, p.name)
    assert "coron3 run" in pages["coron3.1"] and "coron3 demo" in pages["coron3.1"]
