"""The committed man pages are generated from the commands and must not drift."""

import os

from coron_cli.manpages import render_all

MAN = os.path.join(os.path.dirname(__file__), os.pardir, "man")


def test_man_pages_up_to_date():
    pages = render_all()
    assert len(pages) == 5
    for name, text in pages.items():
        path = os.path.join(MAN, name)
        assert os.path.exists(path), f"{name} missing: run 'make man'"
        with open(path) as fh:
            assert fh.read() == text, f"man/{name} is out of date: run 'make man'"


def test_man_pages_document_every_option():
    pages = render_all()
    assert "\\-\\-truncate" in pages["coron-klip.1"]
    assert "\\-\\-annuli\\-width" in pages["coron-hlsp.1"]
    assert "coron3 run" in pages["coron3.1"] and "coron3 demo" in pages["coron3.1"]
