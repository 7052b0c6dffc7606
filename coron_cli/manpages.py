"""Man pages generated from the click definitions (``make man``, checked by a test)."""

import os
import re

import click

from . import __version__

__all__ = ["COMMANDS", "render", "render_all", "write_all"]

#: (command name, import path of its click object)
COMMANDS = (
    ("coron-stack", "coron_cli.cli.stack"),
    ("coron-align", "coron_cli.cli.align"),
    ("coron-klip", "coron_cli.cli.klip"),
    ("coron-hlsp", "coron_cli.cli.hlsp"),
    ("coron-combine", "coron_cli.cli.combine"),
    ("coron-select", "coron_cli.cli.select"),
    ("coron3", "coron_cli.cli.coron3"),
)

_DATE = "2026-11"


def _esc(text):
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _paragraphs(help_text):
    """Split click help into (kind, text) blocks honouring the \\b no-rewrap marker."""
    blocks = []
    for chunk in re.split(r"\n\s*\n", help_text.strip()):
        lines = chunk.splitlines()
        if lines and lines[0].strip() == "\b":
            blocks.append(("pre", "\n".join(lines[1:])))
        else:
            blocks.append(("para", " ".join(line.strip() for line in lines)))
    return blocks


def _options(cmd, ctx):
    out = []
    for param in cmd.get_params(ctx):
        if isinstance(param, click.Argument):
            continue
        rec = param.get_help_record(ctx)
        if rec is None:
            continue
        names, help_ = rec
        out.append(f".TP\n.B {_esc(names)}\n{_esc(help_)}")
    return out


def _section(cmd, name, parent=None):
    ctx = click.Context(cmd, info_name=name, parent=parent)
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    parts = []
    help_text = cmd.help or ""
    parts.append(".SH SYNOPSIS\n.B " + _esc(ctx.command_path) + "\n" + _esc(usage))
    parts.append(".SH DESCRIPTION")
    for kind, text in _paragraphs(help_text):
        if kind == "pre":
            parts.append(".PP\n.nf\n" + _esc(text) + "\n.fi")
        else:
            parts.append(".PP\n" + _esc(text))
    opts = _options(cmd, ctx)
    if opts:
        parts.append(".SH OPTIONS")
        parts.extend(opts)
    return ctx, parts


def render(name, cmd):
    """The roff text of one command's man page."""
    first = (cmd.help or "").strip().splitlines()[0] if cmd.help else name
    head = [f'.TH {name.upper()} 1 "{_DATE}" "coron {__version__}" "coron manual"',
            ".SH NAME", f"{_esc(name)} \\- {_esc(first.rstrip('.'))}"]
    ctx, parts = _section(cmd, name)
    body = head + parts
    if isinstance(cmd, click.Group):
        body.append(".SH COMMANDS")
        for sub_name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, sub_name)
            _, sub_parts = _section(sub, sub_name, parent=ctx)
            body.append(f".SS {_esc(name + ' ' + sub_name)}")
            for part in sub_parts:
                body.append(part.replace(".SH ", ".SS ", 1) if part.startswith(".SH ") else part)
    body += [
        ".SH EXIT STATUS",
        "0 success; 1 internal failure; 2 usage error or bad input (one line on stderr naming "
        "the file and the problem); 130 interrupted; 143 terminated.",
        ".SH ENVIRONMENT",
        "NO_COLOR disables colour on stderr.",
        *_completion(name),
        ".SH SEE ALSO",
        ", ".join(f"{_esc(n)}(1)" for n, _ in COMMANDS if n != name),
    ]
    return "\n".join(body) + "\n"


def _completion(name):
    """ENVIRONMENT note and COMPLETION section: click's completion-script mechanism."""
    var = "_" + name.upper().replace("-", "_") + "_COMPLETE"
    lines = [f'eval "$({var}=bash_source {name})"      # in ~/.bashrc',
             f'eval "$({var}=zsh_source {name})"       # in ~/.zshrc',
             f"{var}=fish_source {name} > ~/.config/fish/completions/{name}.fish"]
    return [
        ".PP",
        _esc(f"{var}=bash_source, zsh_source or fish_source makes {name} print its shell "
             "completion script on standard output, instead of running."),
        ".SH COMPLETION",
        _esc(f"Options and subcommands of {name} complete in bash, zsh and fish "
             "once the shell has loaded the script:"),
        ".PP\n.nf\n" + _esc("\n".join(lines)) + "\n.fi",
    ]


def render_all():
    """{file name: roff text} for every command."""
    import importlib

    out = {}
    for name, mod in COMMANDS:
        cmd = importlib.import_module(mod).cli
        out[f"{name}.1"] = render(name, cmd)
    return out


def write_all(folder):
    """Write every page into `folder`; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for fname, text in render_all().items():
        path = os.path.join(folder, fname)
        with open(path, "w") as fh:
            fh.write(text)
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m coron_cli.manpages man/
    import sys

    for p in write_all(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(p)
