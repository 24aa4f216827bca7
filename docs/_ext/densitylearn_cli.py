"""Sphinx directive ``.. densitylearn-cli::``: the command-line reference from argparse.

Walks :func:`densitylearn.cli.build_parser` (so the page can never drift from the code) and
writes, per subcommand, a section with the usage line, the description (the command
module's docstring) and one ``.. option::`` entry per argument under
``.. program:: densitylearn <command>``, so that ``:option:`densitylearn train --target```
links work. Help texts are argparse's own (``%(default)s`` expanded), escaped for
reStructuredText.

Options::

    .. densitylearn-cli::
       :commands: train predict      (default: every subcommand, in registry order)
       :heading: -                   (section underline character, default "-")
       :main:                        (the top-level parser only, unless :commands: is given)
"""

from __future__ import annotations

import argparse
import re

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

_SPECIAL = re.compile(r"([\\`*_|\[\]<>])")


def escape(text: str) -> str:
    """Backslash-escape reStructuredText inline markup characters."""
    return _SPECIAL.sub(r"\\\1", text)


def paragraphs(text: str | None) -> list[str]:
    """Plain-text paragraphs (blank-line separated), each joined to one escaped line."""
    if not text:
        return []
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        line = " ".join(s.strip() for s in block.splitlines() if s.strip())
        if line:
            out.append(escape(line))
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_texts(parser: argparse.ArgumentParser) -> dict:
    """Subcommand name -> its one-line help (as given to ``add_parser``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help for a in action._choices_actions}
    return {}


def _option_signature(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if not action.option_strings:
        return formatter._get_default_metavar_for_positional(action) if action.metavar is None \
            else formatter._metavar_formatter(action, action.dest)(1)[0]
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
    return ", ".join(f"{s} {metavar}" for s in action.option_strings)


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)


def parser_rst(prog: str, parser: argparse.ArgumentParser, title: str | None, underline: str,
               summary: str | None = None) -> list[str]:
    """reStructuredText lines documenting one parser (no subparsers)."""
    lines: list[str] = []
    if title is not None:
        anchor = "cli-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        heading = f"``{title}``"
        lines += [f".. _{anchor}:", "", heading, underline * len(heading), ""]
    if summary:
        lines += [escape(summary[0].upper() + summary[1:]) + ("" if summary.endswith(".") else "."), ""]
    lines += [".. code-block:: text", ""]
    usage = parser.format_usage().strip()
    lines += ["   " + u for u in usage.splitlines()] + [""]
    for para in paragraphs(parser.description):
        lines += [para, ""]
    lines += [f".. program:: {prog}", ""]
    actions = [a for a in parser._actions
               if not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS]
    for action in actions:
        lines += [f".. option:: {_option_signature(parser, action)}", ""]
        text = _expanded_help(parser, action)
        extra = []
        if action.choices is not None and not isinstance(action.choices, dict):
            extra.append("choices: " + ", ".join(str(c) for c in action.choices))
        if action.required and action.option_strings:
            extra.append("required")
        body = " ".join(p for p in [escape(text)] if p)
        if extra:
            body = (body + " " if body else "") + "(" + escape("; ".join(extra)) + ")"
        lines += ["   " + (body or "(no help text)"), ""]
    return lines


class DensitylearnCLI(SphinxDirective):
    """The ``densitylearn-cli`` directive (see the module docstring)."""

    has_content = False
    option_spec = {"commands": directives.unchanged, "heading": directives.single_char_or_unicode,
                   "main": directives.flag}

    def run(self):
        from densitylearn.cli import build_parser

        parser = build_parser()
        import importlib

        from densitylearn.cli import COMMANDS

        for modname in ["densitylearn.cli"] + [f"densitylearn.commands.{m}" for m in COMMANDS.values()]:
            path = getattr(importlib.import_module(modname), "__file__", None)
            if path:
                self.env.note_dependency(path)  # rebuild the page when a command changes
        underline = self.options.get("heading", "-")
        subs = _subparsers(parser)
        helps = _help_texts(parser)
        wanted = self.options.get("commands")
        if wanted:
            names = wanted.split()
        else:
            names = [] if "main" in self.options else list(subs)
        unknown = [n for n in names if n not in subs]
        if unknown:
            raise self.error(f"densitylearn-cli: unknown command(s) {', '.join(unknown)}; "
                             f"known: {', '.join(subs)}")
        lines: list[str] = []
        if "main" in self.options:
            lines += parser_rst(parser.prog, parser, None, underline)
        for name in names:
            lines += parser_rst(f"{parser.prog} {name}", subs[name], f"{parser.prog} {name}", underline,
                                summary=helps.get(name))
        container = nodes.section()
        container.document = self.state.document
        source = self.get_source_info()[0]
        content = StringList(lines, source=source)
        nested_parse_with_titles(self.state, content, container)
        return container.children


def setup(app):
    app.add_directive("densitylearn-cli", DensitylearnCLI)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
