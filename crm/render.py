"""Render messages from the shops' Jinja2 templates, safely.

Templates live in ``templates/<locale>/<name>.j2`` (``payment_reminder/new.cute``, ``followup/sms``,
``call_script/followup`` …). Shops edit them, so they run in Jinja2's sandbox (no attribute of
Python internals is reachable) with strict undefined variables (a typo is an error, not an empty
string). Every template a run needs is compiled before anything is sent, with the templates it
imports or includes: a missing or broken one stops the run with one line naming it.

Rendering one message is bounded (templates/README.md, "Limits"): it may take at most MAX_STEPS steps
(loop iterations, calls, filters) and MAX_SECONDS, build no value (string, list, number) larger than
MAX_VALUE characters or items (MAX_INT_BITS bits), build at most MAX_BUILT characters and items in all,
and its body may be at most MAX_CHARS characters (MAX_EMAIL_CHARS for an e-mail). The bound is
cooperative, enforced where the sandbox already intercepts (calls, attribute access, operators) and where
the compiled template loops, joins, slices and writes output (a code generator that adds the checks), so
nothing needs a thread or a process. Every way a template can fail — a limit, an unsafe attribute, an
unknown variable, a missing include, a recursion without end, an error inside an operator or a filter
(``1/0``, ``none|length``) — is one RenderError line naming the template and the line.
"""

from __future__ import annotations

import math
import re
import threading
import time
from functools import cached_property, wraps
from pathlib import Path
from types import BuiltinMethodType, MethodType

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import make_attrgetter
from jinja2.meta import find_referenced_templates
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, _PassArg, pass_environment
from markupsafe import Markup

from crm.db import asset_dir
from crm.redact import redact

LOCALES = ("zh-CN", "en")

# the limits of one message (templates/README.md "Limits"); the shipped templates use under 1 % of each
MAX_STEPS = 20_000            # loop iterations, calls of macros and methods, filters and tests
MAX_SECONDS = 0.25            # wall clock, checked every 16 steps
MAX_VALUE = 200_000           # characters and items of any one value (a list's items and theirs)
MAX_BUILT = 5_000_000         # characters and items of all the values built, together
MAX_INT_BITS = 100_000        # a number (about 30,000 digits)
MAX_CHARS = 8_000             # a message body (SMS, chat, call script, a payment reminder by e-mail)
MAX_EMAIL_CHARS = 200_000     # the body of an e-mail template (<locale>/…/email.j2)


class RenderError(Exception):
    """A template is missing, broken, unsafe, too costly or failed: one line for the user."""


class _Limit(Exception):
    """A rendering limit was reached (the message says which)."""


def max_chars(name: str) -> int:
    """The longest body a template may render: an e-mail's is longer than a message's."""
    return MAX_EMAIL_CHARS if name.rsplit("/", 1)[-1] == "email" else MAX_CHARS


# --------------------------------------------------------------------------------------------------
# sizes


def _size(value, limit: int = MAX_VALUE) -> int:
    """Characters and items in `value`, its containers' items counted in (a list of ten 1,000-character
    strings: 10,010); stops counting once past `limit`. Lazy objects (a range, a generator) count 1."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v)
        elif isinstance(v, bool) or v is None or isinstance(v, float):
            total += 1
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1              # ≥ its decimal digits
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += len(v)
            stack.extend(v)
        elif isinstance(v, dict):
            total += len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, Namespace):
            stack.append(object.__getattribute__(v, "_Namespace__attrs"))
        else:
            total += 1
        if total > limit:
            return total
    return total


def _too_big(n: int | None = None) -> _Limit:
    """`n`: the size an operation would build, known before it runs; None: a value found too big once built."""
    if n is None:
        return _Limit(f"builds a value of more than {MAX_VALUE:,} characters or items (the most a value may hold)")
    return _Limit(f"would build a value of {n:,} characters or items, more than the {MAX_VALUE:,} a value may hold")


def _need(n: int) -> None:
    """Refuse an operation that would build a value of about `n` characters or items, before it does."""
    if n > MAX_VALUE:
        raise _too_big(n)


def _width(n) -> None:
    if isinstance(n, int) and n > MAX_VALUE:
        raise _Limit(f"asks for a width or count of {n:,}, more than the {MAX_VALUE:,} a value may hold")


def _replacing(s, old, new, count=-1) -> None:
    if not isinstance(new, (str, bytes)) or not isinstance(old, (str, bytes)) or not isinstance(s, (str, bytes)):
        return
    grows = len(new) * (6 if isinstance(s, Markup) else 1) - len(old)     # Markup escapes what it puts in
    if grows <= 0:
        return
    times = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    _need(len(s) + times * grows)


def _joining(sep, items: list) -> None:
    _need(sum(_size(x) for x in items) + _size(sep) * max(0, len(items) - 1))


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _printf(fmt, args) -> None:
    """`fmt % args`: refuse widths over the limit, and a format that repeats a large value."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    if not isinstance(fmt, str):
        return
    values = list(args.values()) if isinstance(args, dict) else list(args) if isinstance(args, tuple) else [args]
    specs = _PRINTF.findall(fmt)
    widest = 0
    for spec in specs:
        for part in spec:
            if part == "*":
                widest = max([widest, *(v for v in values if isinstance(v, int))])
            elif part:
                widest = max(widest, int(part) if len(part) <= 100 else 10**100)
    _width(widest)
    biggest = max((_size(v) for v in values), default=0)
    _need(len(fmt) + len(specs) * max(biggest, widest))


def _spec(format_spec: str) -> None:
    """A str.format field's width or precision: `{:>1000000000}`."""
    for digits in re.findall(r"\d+", format_spec):
        _width(int(digits) if len(digits) <= 100 else 10**100)


# filters that can build much more than they are given, each checked before it runs; `args` without the
# environment/context a filter may take first
def _f_indent(s, width=4, *rest, **kw):
    w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    if isinstance(s, str):
        _width(w)
        _need(len(s) + (s.count("\n") + 1) * w)


def _f_wordwrap(s, width=79, break_long_words=True, wrapstring=None, *rest, **kw):
    wrapstring = kw.get("wrapstring", wrapstring)
    if isinstance(s, str) and isinstance(wrapstring, str):
        _need(len(s) + (len(s) + 1) * len(wrapstring))


def _f_urlize(value, *args, **kw):
    extra = sum(len(v) for v in [*args, *kw.values()] if isinstance(v, str))
    if isinstance(value, str):
        _need(len(value) * (1 + extra) if extra else 0)


def _f_tojson(value, indent=None):
    if isinstance(indent, int):
        _need(_size(value) * (1 + indent))


_FILTER_RULES = {
    "center": lambda value, width=80: _width(width),
    "indent": _f_indent,
    "replace": lambda s, old, new, count=None: _replacing(s, old, new, -1 if count is None else count),
    "wordwrap": _f_wordwrap,
    "batch": lambda value, linecount, *rest: _width(linecount),
    "slice": lambda value, slices, *rest: _width(slices),
    "format": lambda value, *args, **kwargs: _printf(value, kwargs or args),
    "urlize": _f_urlize,
    "tojson": _f_tojson,
    # n paragraphs of up to `max` words of up to 12 letters
    "lipsum": lambda n=5, html=True, min=20, max=100: _need(n * max * 12) if isinstance(n * max, int) else None,
}


def _m_width(s, args, kwargs, key="width"):
    _width(args[0] if args else kwargs.get(key))


def _m_expandtabs(s, args, kwargs):
    tab = args[0] if args else kwargs.get("tabsize", 8)
    if isinstance(tab, int):
        _need(len(s) + s.count("\t" if isinstance(s, str) else b"\t") * tab)


def _m_translate(s, args, kwargs):
    table = args[0] if args else None
    values = table.values() if isinstance(table, dict) else table if isinstance(table, (list, tuple)) else ()
    kinds = set(map(type, values))                     # a table that deletes (None) or maps to one character (int)
    if kinds - {type(None), int}:
        longest = max((len(v) for v in values if isinstance(v, (str, bytes))), default=1)
        _need(len(s) * max(1, longest))


# methods of str and bytes that can build much more than they are given
_METHOD_RULES = {
    "center": _m_width, "ljust": _m_width, "rjust": _m_width, "zfill": _m_width,
    "expandtabs": _m_expandtabs,
    "replace": lambda s, args, kwargs: _replacing(s, *args[:3]),
    "translate": _m_translate,
}


# --------------------------------------------------------------------------------------------------
# the environment: the sandbox, with the budget of the message being rendered


class _Budget:
    __slots__ = ("steps", "deadline", "built")

    def __init__(self):
        self.steps = MAX_STEPS
        self.deadline = time.perf_counter() + MAX_SECONDS
        self.built = MAX_BUILT


class _SizedFormatting:
    """str.format with the widths and the length of its result bounded."""

    def format_field(self, value, format_spec):
        _spec(format_spec)
        out = super().format_field(value, format_spec)
        self._written = getattr(self, "_written", 0) + len(out)
        _need(self._written)
        return out


class _Formatter(_SizedFormatting, SandboxedFormatter):
    pass


class _EscapeFormatter(_SizedFormatting, SandboxedEscapeFormatter):
    pass


class BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, counting the steps, time and sizes of the message being rendered (see the module)."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._budget: _Budget | None = None         # of the message being rendered (one at a time: self.lock)
        self.lock = threading.Lock()
        self.filters["sum"] = _sum
        self.filters = {name: self._guard(name, f, _FILTER_RULES.get(name)) for name, f in self.filters.items()}
        self.tests = {name: self._guard(name, f, None) for name, f in self.tests.items()}
        self.globals["lipsum"] = self._guard("lipsum", self.globals["lipsum"], _FILTER_RULES["lipsum"])

    # ---- the budget ----

    def start(self) -> _Budget:
        self._budget = _Budget()
        return self._budget

    def stop(self) -> None:
        self._budget = None

    def tick(self) -> None:
        b = self._budget
        if b is not None:
            b.steps -= 1
            if b.steps < 0 or not b.steps & 15 and time.perf_counter() > b.deadline:
                self._over(b)

    @staticmethod
    def _over(b: _Budget):
        if b.steps < 0:
            raise _Limit(f"takes more than {MAX_STEPS:,} steps (loop iterations and calls): a loop too long, "
                         f"or loops inside loops")
        raise _Limit(f"takes longer than {MAX_SECONDS:g} s to render one message")

    def sized(self, value):
        """`value`, once counted: refused if larger than a value may be, or past the message's budget."""
        kind = type(value)
        if kind is str or kind is Markup:
            n = len(value)
        elif kind is int:
            if value.bit_length() > MAX_INT_BITS:
                raise _Limit(f"computes a number of more than {MAX_INT_BITS:,} bits")
            return value
        elif kind is bool or kind is float or value is None:
            return value
        elif isinstance(value, int):                        # an int subclass (bool is above)
            self.sized(int(value))
            return value
        else:
            n = _size(value)
        if n > MAX_VALUE:
            raise _too_big()
        b = self._budget
        if b is not None:
            b.built -= n
            if b.built < 0:
                raise _Limit(f"builds more than {MAX_BUILT:,} characters and items in all")
        return value

    def bounded_iter(self, iterable):
        """What a {% for %} loops over: one step per item."""
        tick = self.tick
        for item in iterable:
            tick()
            yield item

    def concat(self, pieces) -> str:
        """Joins the output of a template, a macro or a block: bounded before (or while) it is collected."""
        if type(pieces) is list:                            # a macro's or a block's buffer
            n = sum(map(len, pieces))
            b = self._budget
            if n <= MAX_VALUE and b is not None:
                b.built -= n
                if b.built >= 0:
                    return "".join(pieces)
        else:                                               # a template's output, as it is written
            out, n = [], 0
            for piece in pieces:
                n += len(piece)
                if n > MAX_VALUE:
                    break
                out.append(piece)
            pieces = out
        if n > MAX_VALUE:
            raise _Limit(f"writes more than {MAX_VALUE:,} characters")
        return self.sized("".join(pieces))

    # ---- the sandbox's hooks ----

    def call(self, context, obj, /, *args, **kwargs):
        b = self._budget                                      # tick(), inlined: calls are frequent
        if b is not None:
            b.steps -= 1
            if b.steps < 0 or not b.steps & 15 and time.perf_counter() > b.deadline:
                self._over(b)
        kind, owner = type(obj), None
        if kind is BuiltinMethodType or kind is MethodType:   # a method: 'x'.ljust(9), xs.append(x)
            owner = obj.__self__
            if isinstance(owner, (str, bytes)):
                name = obj.__name__
                if name == "join" and args:
                    args = (list(args[0]), *args[1:])
                    _joining(owner, args[0])
                elif name in _METHOD_RULES:
                    _METHOD_RULES[name](owner, args, kwargs)
            elif isinstance(owner, int) and obj.__name__ == "to_bytes":
                _m_width(owner, args, kwargs, "length")
        elif kind is LoopContext and args:                     # loop(children) in a recursive loop
            args = (self.bounded_iter(args[0]), *args[1:])
        if not self.is_safe_callable(obj):                    # the sandbox's call(), without its frame
            raise SecurityError(f"{obj!r} is not safely callable")
        result = context.call(obj, *args, **kwargs)
        if owner is not None and isinstance(owner, (list, dict, set, bytearray)) and _size(owner) > MAX_VALUE:
            raise _too_big()                                    # xs.extend(xs)
        if type(result) is str and b is not None:              # sized(), inlined for the commonest result
            b.built -= len(result)
            if b.built >= 0 and len(result) <= MAX_VALUE:
                return result
        return self.sized(result)

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and n > 0:
                    _need(_size(seq) * n)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if abs(left).bit_length() * right > MAX_INT_BITS:
                    raise _Limit(f"computes a number of more than {MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, (str, bytes)):
            _printf(left, right)
        return self.sized(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value):
        """As the sandbox's, with the widths and the result's length bounded."""
        fmt = super().wrap_str_format(value)
        if fmt is None:
            return None
        f_self = value.__self__
        is_format_map = value.__name__ == "format_map"

        @wraps(value)
        def bounded(*args, **kwargs):
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            formatter = _EscapeFormatter(self, escape=f_self.escape) if isinstance(f_self, Markup) else _Formatter(self)
            return self.sized(type(f_self)(formatter.vformat(f_self, args, kwargs)))

        return bounded

    def _guard(self, name, f, rule):
        """A filter, test or global function counted as a step, checked before (`rule`) and after. The plain
        case inlines tick() and sized() for a string: filters are the commonest step."""
        skip = 0 if _PassArg.from_obj(f) is None else 1
        env, tick, sized, perf_counter = self, self.tick, self.sized, time.perf_counter

        if name == "join":
            def guarded(*args, **kwargs):
                tick()
                if len(args) > skip:
                    args = (*args[:skip], list(args[skip]), *args[skip + 1:])
                    _joining(args[skip + 1] if len(args) > skip + 1 else kwargs.get("d", ""), args[skip])
                return sized(f(*args, **kwargs))
        else:
            def guarded(*args, **kwargs):
                b = env._budget
                if b is not None:
                    b.steps -= 1
                    if b.steps < 0 or not b.steps & 15 and perf_counter() > b.deadline:
                        env._over(b)
                if rule is not None:
                    try:
                        rule(*args[skip:], **kwargs)
                    except TypeError:
                        pass                               # wrong arguments: the filter itself says so
                result = f(*args, **kwargs)
                if type(result) is str and b is not None:
                    b.built -= len(result)
                    if b.built >= 0 and len(result) <= MAX_VALUE:
                        return result
                return sized(result)

        return wraps(f)(guarded)


@pass_environment
def _sum(environment, iterable, attribute=None, start=0):
    """Jinja's sum, one addition at a time, each counted (a sum of lists would copy them all each time)."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        environment.tick()
        total = environment.call_binop(None, "+", total, item)
    return total


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, adding the checks the sandbox has no hook for: a step per loop iteration, and
    the size of what `~`, a slice and an output expression build."""

    def visit_For(self, node, frame):
        # loop over environment.bounded_iter(<what it looped over>), written below without the call hook
        node.iter = nodes.Call(nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [], None, None,
                               lineno=node.iter.lineno)
        super().visit_For(node, frame)

    def visit_Call(self, node, frame, **kwargs):
        if isinstance(node.node, nodes.EnvironmentAttribute) and node.node.name == "bounded_iter":
            self.write("environment.bounded_iter(")
            self.visit(node.args[0], frame)
            self.write(")")
            return
        super().visit_Call(node, frame, **kwargs)

    def visit_Concat(self, node, frame):
        self.write("environment.sized(")
        super().visit_Concat(node, frame)
        self.write(")")

    def visit_Getitem(self, node, frame):
        if not isinstance(node.arg, nodes.Slice):
            return super().visit_Getitem(node, frame)
        self.write("environment.sized(")
        super().visit_Getitem(node, frame)
        self.write(")")

    def _output_child_pre(self, node, frame, finalize):
        self.write("environment.sized(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node, frame, finalize):
        super()._output_child_post(node, frame, finalize)
        self.write(")")


BoundedEnvironment.code_generator_class = BoundedCodeGenerator


# --------------------------------------------------------------------------------------------------
# the renderer


def _one_line(text: str, limit: int = 300) -> str:
    text = redact(" ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(tb, main: str) -> str:
    """' at line 3' (or ' at _macros.j2 line 12'): the innermost template line of a traceback."""
    found = None
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            found = template, tb.tb_lineno
        tb = tb.tb_next
    if found is None:
        return ""
    template, lineno = found
    line = template.get_corresponding_lineno(lineno)
    return f" at line {line}" if template.name == main else f" at {template.name} line {line}"


class Renderer:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else asset_dir("templates")
        self._checked: set[tuple[str, str]] = set()

    @cached_property
    def _envs(self) -> dict[str, BoundedEnvironment]:
        return {
            locale: BoundedEnvironment(
                loader=FileSystemLoader(self.root / locale),
                undefined=StrictUndefined,
                autoescape=False,
                trim_blocks=False,
                keep_trailing_newline=False,
            )
            for locale in LOCALES
        }

    def _env(self, locale: str) -> BoundedEnvironment:
        if locale not in self._envs:
            raise RenderError(f"no templates for locale {locale!r} (have {', '.join(LOCALES)})")
        return self._envs[locale]

    def check(self, locale: str, name: str) -> None:
        """Compile a template and what it imports or includes now, so a broken one fails before any send."""
        if (locale, name) in self._checked:
            return
        env, main = self._env(locale), f"{name}.j2"
        label, todo, seen = f"template {locale}/{main}", [main], set()
        while todo:
            file = todo.pop()
            seen.add(file)
            try:
                env.get_template(file)
                source = env.loader.get_source(env, file)[0]
                todo += [t for t in find_referenced_templates(env.parse(source)) if t and t not in seen]
            except TemplateNotFound as e:
                if file == main:
                    raise RenderError(f"{label} not found (missing: {e.name})") from None
                raise RenderError(f"{label} imports or includes {e.name}, which is not found") from None
            except TemplateSyntaxError as e:
                where = "" if (e.name or file) == main else f"{e.name or file} "
                raise RenderError(f"{label} is broken: {where}line {e.lineno}: {_one_line(e.message)}") from None
            except (RecursionError, MemoryError) as e:
                where = "" if file == main else f"{file}: "
                raise RenderError(f"{label} is broken: {where}nested too deeply to compile "
                                  f"({type(e).__name__})") from None
        self._checked.add((locale, name))

    def render(self, locale: str, name: str, context: dict) -> str:
        self.check(locale, name)
        env = self._env(locale)
        file = f"{name}.j2"
        template = env.get_template(file)
        label = f"template {locale}/{file}"
        with env.lock:
            return self._render(env, template, file, label, name, context)

    def _render(self, env, template, file, label, name, context) -> str:
        env.start()
        try:
            body = env.concat(template.root_render_func(template.new_context(dict(context))))
        except _Limit as e:
            raise RenderError(f"{label} stops{_where(e.__traceback__, file)}: it {e}") from None
        except SecurityError as e:
            raise RenderError(f"{label} tries to reach Python internals{_where(e.__traceback__, file)}: "
                              f"{_one_line(e)}") from None
        except UndefinedError as e:
            raise RenderError(f"{label} uses an unknown variable{_where(e.__traceback__, file)}: "
                              f"{_one_line(e.message)}") from None
        except TemplateNotFound as e:
            raise RenderError(f"{label} imports or includes {e.name}{_where(e.__traceback__, file)}, "
                              f"which is not found") from None
        except TemplateSyntaxError as e:
            raise RenderError(f"{label} imports or includes {e.name}, which is broken: line {e.lineno}: "
                              f"{_one_line(e.message)}") from None
        except RecursionError as e:
            raise RenderError(f"{label} recurses without end{_where(e.__traceback__, file)} (a macro calling "
                              f"itself, or a template including, importing or extending itself)") from None
        except MemoryError as e:
            raise RenderError(f"{label} runs out of memory{_where(e.__traceback__, file)}") from None
        except TemplateError as e:
            raise RenderError(f"{label} failed{_where(e.__traceback__, file)}: {_one_line(e)}") from None
        except Exception as e:                              # an error inside an operator or a filter: 1/0, int('x')
            raise RenderError(f"{label} failed{_where(e.__traceback__, file)}: "
                              f"{type(e).__name__}: {_one_line(e)}") from None
        finally:
            env.stop()
        body = body.strip()
        if len(body) > max_chars(name):
            raise RenderError(f"{label} renders {len(body):,} characters, more than the {max_chars(name):,} "
                              f"its message may have")
        return body


# --------------------------------------------------------------------------------------------------
# SMS length: one segment holds 160 GSM-7 characters, or 70 UCS-2 characters (Chinese); longer
# messages are split into parts of 153 / 67.

_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€")


def is_gsm7(text: str) -> bool:
    """Whether the text fits the GSM 7-bit alphabet (its extension table included); else it goes as UCS-2."""
    return all(c in _GSM7 or c in _GSM7_EXTENDED for c in text)


def sms_segments(text: str) -> int:
    if is_gsm7(text):
        units, single, part = len(text) + sum(c in _GSM7_EXTENDED for c in text), 160, 153
    else:
        units, single, part = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / part)
