"""Griffe extension of the documentation site: what reading the sources alone does not show.

mkdocstrings reads structdrop without importing it. Some things of the package are only
known at run time or are written for Sphinx, and this extension supplies them:

* names loaded on first use by a module's ``__getattr__`` (``structdrop.CheckpointError``,
  ``structdrop.HeadMonitor``) are listed in a dict of the module (``_LAZY_NAMES``: name ->
  submodule); they become members of the module;
* a class whose docstring is set in its body (``__doc__ = TEMPLATE.format(...)``, as the
  DropBlock layers' is) gets the docstring of the imported class, and an exported function
  made by a call (``drop_block2d = _with_spatial_dims(...)``) is read from the imported module;
* ``#:`` comments above an attribute are its docstring, and so is the ``help`` of a dataclass
  field made by a call (``dataset: str = _setting("digits", "Data set: ...")``, read from the
  imported class), whose default becomes the field's value;
* Sphinx roles (``:class:`~structdrop.nn.DropBlock2d```) become links to the object's entry
  on the site when it has one (plain code otherwise), and a paragraph ending in ``::`` ends
  in ``:`` (the literal block after it is already a code block in Markdown);
* a page of the docs folder named in a docstring (``docs/theory.md#sliding-dropblock``) links
  to that page (and section) of the site.

Docstrings in the sources are left as they are: this runs when the site is built.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import inspect
import re
from pathlib import Path
from typing import Any

from griffe import Alias, Docstring, Extension, Module, Object, dynamic_import
from griffe import inspect as griffe_inspect
from markdown.extensions.toc import slugify

#: A Sphinx cross-reference role: ``:class:`target``` (and ``func``, ``meth``, ...).
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`([^`]+)`")
#: A sentence that introduces a literal block (``...::`` at the end of a line).
LITERAL_INTRO = re.compile(r"(?<=\S)::$", re.MULTILINE)
#: A page of the docs folder, with an optional section anchor: ``docs/theory.md#rho-rule``.
DOCS_PAGE = re.compile(r"(?<![\w/`])docs/(\w+)\.md(?:#([\w-]+))?")
#: The docs folder (this file is in docs/api/).
DOCS = Path(__file__).resolve().parents[1]
#: The dicts of lazily loaded names: name -> submodule of the module that defines the dict.
LAZY_TABLES = ("_LAZY_NAMES",)


class StructdropDocs(Extension):
    """Lazily loaded names as members, docstrings built at import, Sphinx roles as links."""

    def on_package(self, *, pkg: Module, loader: Any, **kwargs: Any) -> None:
        if pkg.path != "structdrop":
            return
        for module in _modules(pkg):
            _add_lazy_names(module)
            _functions_made_at_import(module, loader)
        for obj in _objects(pkg):
            if obj.is_attribute and obj.docstring is None:
                _comment_docstring(obj, loader)
            if obj.is_class and obj.docstring is None and "__doc__" in obj.members:
                _runtime_docstring(obj, loader)
            if obj.is_class and "dataclass" in obj.labels:
                _field_help(obj, loader)
            if obj.docstring is not None:
                obj.docstring.value = _markdown(obj.docstring.value, obj, pkg)


def _modules(module: Module) -> list[Module]:
    found = [module]
    for member in module.members.values():
        if not member.is_alias and member.is_module:
            found.extend(_modules(member))  # type: ignore[arg-type]
    return found


def _objects(obj: Object) -> list[Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_objects(member))  # type: ignore[arg-type]
    return found


def _add_lazy_names(module: Module) -> None:
    """Each name of a lazy table becomes an alias of ``module.<submodule>.<name>``."""
    names: list[str] = []
    for table in LAZY_TABLES:
        attribute = module.members.get(table)
        if attribute is None or attribute.is_alias or attribute.value is None:
            continue
        try:
            rooms = ast.literal_eval(str(attribute.value))
        except (ValueError, SyntaxError):
            continue
        for name, room in rooms.items():
            if name not in module.members:
                module.set_member(name, Alias(name, f"{module.path}.{room}.{name}", parent=module))
            names.append(name)
    if names and not _static_exports(module):
        module.exports = sorted(names)  # ``__all__`` computed at import


def _static_exports(module: Module) -> bool:
    return bool(module.exports) and all(isinstance(name, str) for name in module.exports or ())


def _runtime_docstring(cls: Object, loader: Any) -> None:
    """The docstring of the imported class (one built at import time)."""
    runtime = dynamic_import(cls.path, import_paths=loader.finder.search_paths)
    text = inspect.getdoc(runtime)
    if text:
        cls.docstring = Docstring(
            text,
            parent=cls,
            parser=loader.docstring_parser,
            parser_options=loader.docstring_options,
        )


def _field_help(cls: Object, loader: Any) -> None:
    """The ``help`` metadata of the dataclass fields that a call makes, as their docstrings."""
    made = [
        name
        for name, member in cls.members.items()
        if not member.is_alias
        and member.is_attribute
        and member.docstring is None
        and "(" in str(member.value or "")
    ]
    if not made:
        return
    runtime = dynamic_import(cls.path, import_paths=loader.finder.search_paths)
    for field in dataclasses.fields(runtime):
        text = field.metadata.get("help")
        if field.name not in made or not isinstance(text, str):
            continue
        member = cls.members[field.name]
        member.docstring = Docstring(
            text,
            parent=member,
            parser=loader.docstring_parser,
            parser_options=loader.docstring_options,
        )
        if field.default is not dataclasses.MISSING:
            member.value = repr(field.default)


def _functions_made_at_import(module: Module, loader: Any) -> None:
    """Exported module attributes that a call makes (no docstring in the sources) and that are
    functions at run time: replaced by what inspecting the imported module finds."""
    names = [
        name
        for name in module.exports or ()
        if isinstance(name, str)
        and (member := module.members.get(name)) is not None
        and not member.is_alias
        and member.is_attribute
        and member.docstring is None
        and str(member.value or "").startswith("_")  # a private factory's call
    ]
    if not names:
        return
    runtime = dynamic_import(module.path, import_paths=loader.finder.search_paths)
    names = [name for name in names if inspect.isfunction(getattr(runtime, name, None))]
    if not names:
        return
    inspected = griffe_inspect(
        module.path,
        import_paths=loader.finder.search_paths,
        docstring_parser=loader.docstring_parser,
        docstring_options=loader.docstring_options,
    )
    for name in names:
        function = inspected.members[name]
        function.lineno = module.members[name].lineno
        function.endlineno = module.members[name].endlineno
        module.set_member(name, function)


_SOURCES: dict[str, list[str]] = {}


def _comment_docstring(attribute: Object, loader: Any) -> None:
    """``#:`` comment lines right above the attribute (Sphinx's attribute documentation)."""
    if attribute.lineno is None or attribute.filepath is None:
        return
    path = str(attribute.filepath)
    if path not in _SOURCES:
        with open(path, encoding="utf-8") as source:
            _SOURCES[path] = source.read().splitlines()
    lines, comment = _SOURCES[path], []
    index = attribute.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        comment.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    if comment:
        attribute.docstring = Docstring(
            "\n".join(comment),
            lineno=index + 2,
            endlineno=attribute.lineno - 1,
            parent=attribute,
            parser=loader.docstring_parser,
            parser_options=loader.docstring_options,
        )


def _markdown(text: str, obj: Object, pkg: Module) -> str:
    text = ROLE.sub(lambda match: _link(match.group(1), obj, pkg), text)
    text = DOCS_PAGE.sub(_page_link, text)
    return LITERAL_INTRO.sub(":", text)


def _page_link(match: re.Match[str]) -> str:
    """A link to a page of the site (to its title when no section is named)."""
    page, anchor = match.groups()
    source = DOCS / f"{page}.md"
    if anchor is None and source.is_file():
        titles = [line for line in source.read_text().splitlines() if line.startswith("# ")]
        anchor = slugify(titles[0][2:].strip(), "-") if titles else None
    if anchor is None:
        return match.group(0)
    return f'<autoref identifier="{anchor}" optional>{match.group(0)}</autoref>'


def _link(target: str, obj: Object, pkg: Module) -> str:
    """An optional cross-reference: a link where the site documents the object, else code."""
    label, explicit = target, re.fullmatch(r"(.*?)\s*<(.+)>", target)
    if explicit:
        label, target = explicit.groups()
    target = target.lstrip("~")
    if not explicit:
        label = target.rsplit(".", 1)[-1] if label.startswith("~") else target.lstrip(".")
    code = f"<code>{html.escape(label)}</code>"
    path = _resolve(target, obj, pkg)
    if path is None:
        return code
    return f'<autoref identifier="{path}" optional>{code}</autoref>'


def _resolve(target: str, obj: Object, pkg: Module) -> str | None:
    """The canonical path of ``target`` as Python would read it in ``obj``'s module."""
    module = obj.module
    if target.startswith("."):
        level = len(target) - len(target.lstrip("."))
        base = module if module.is_package else module.parent
        for _ in range(level - 1):
            base = base.parent if base is not None else None
        candidates = [f"{base.path}.{target[level:]}"] if base is not None else []
    else:
        scopes = [obj, *_parents(obj)]
        candidates = [f"{scope.path}.{target}" for scope in scopes] + [target]
    for candidate in candidates:
        if not candidate.startswith(pkg.path + ".") and candidate != pkg.path:
            continue
        try:
            found = pkg.modules_collection.get_member(candidate)
            return str(found.final_target.path if found.is_alias else found.path)
        except Exception:  # not in the package, or an alias that does not resolve
            continue
    return None


def _parents(obj: Object) -> list[Object]:
    parents = []
    parent = obj.parent
    while parent is not None:
        parents.append(parent)
        parent = parent.parent
    return parents
