"""The committed man pages are generated from the commands and must not drift."""

import os

import click

from coron_cli.manpages import COMMANDS, render_all

MAN = os.path.join(os.path.dirname(__file__), os.pardir, "man")


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
        for path, command in _commands(cli, name):
            if path != name:
                assert path.replace("-", "\\-") in page, path
            for p in command.params:
                if isinstance(p, click.Option) and not p.hidden:
                    flag = max(p.opts, key=len).replace("-", "\\-")
                    assert flag in page, (path, flag)
    assert "coron3 run" in pages["coron3.1"] and "coron3 demo" in pages["coron3.1"]
