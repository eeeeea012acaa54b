"""The matcher language: a small, safe boolean expression over signals, compiled once to closures.

    expr    := or
    or      := and ('||' and)*
    and     := unary ('&&' unary)*
    unary   := '!' unary | '(' expr ')' | compare
    compare := operand (('=='|'!='|'<'|'<='|'>'|'>=') operand | 'not'? 'in' '[' literal (',' literal)* ']')?
    operand := signal | 'metadata.'key | number | 'string' | "string" | true | false | bareword

A bare word that is not a signal is a string literal, so `priority == normal` works. Types are
checked at compile time against the signal catalogue; a matcher never fails at request time.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..signals import SETTABLE, SIGNALS, Signals, SignalType

Predicate = Callable[[Signals], bool]
Getter = Callable[[Signals], Any]

_NUMBER_LIKE = re.compile(r"-?\.?\d[\w.+-]*")  # what a user may mean as a number: 1e3, 1_000, .5
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>-?\d+(?:\.\d+)?)(?![\w.])
      | (?P<str>'[^']*'|"[^"]*")
      | (?P<op>&&|\|\||==|!=|<=|>=|<|>|!|\(|\)|\[|\]|,)
      | (?P<word>[A-Za-z_][\w.\-]*)
    )""",
    re.VERBOSE,
)

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


class MatcherError(Exception):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column  # 1-based, within the matcher text


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, str, op, word, end
    text: str
    column: int


@dataclass(frozen=True, slots=True)
class _Operand:
    kind: str  # "signal" or "literal"
    value: Any  # signal name, or the literal's Python value
    column: int
    bare: bool = False  # a bare word literal


@dataclass(frozen=True, slots=True)
class Matcher:
    """A compiled matcher: its source, the signals it reads, and its predicate."""

    source: str
    signals: frozenset[str]
    predicate: Predicate
    literals: tuple[tuple[str, Any], ...]  # (signal, literal) pairs it compares, for table analysis

    def __call__(self, signals: Signals) -> bool:
        return self.predicate(signals)


def always() -> Matcher:
    return Matcher("true", frozenset(), lambda _s: True, ())


def compile_matcher(source: str) -> Matcher:
    parser = _Parser(source)
    predicate = parser.parse()
    return Matcher(source, frozenset(parser.used), predicate, tuple(parser.literals))


def _tokenize(source: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        m = _TOKEN.match(source, pos)
        if m is None or m.end() == pos:
            col = pos + len(source[pos:]) - len(source[pos:].lstrip()) + 1
            bad = source[col - 1]
            hint = " (use `==` to compare, `&&`/`||` to combine)" if bad in "=&|" else ""
            if number := _NUMBER_LIKE.match(source, col - 1):
                raise MatcherError(f"`{number.group()}` is not a number the matcher reads; write digits with an "
                                   "optional decimal point, e.g. `1000` or `0.5`", col)
            raise MatcherError(f"unexpected character {bad!r}{hint}", col)
        kind = m.lastgroup or "op"
        tokens.append(_Tok(kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()
    tokens.append(_Tok("end", "", len(source) + 1))
    return tokens


MAX_NESTING = 32


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.pos = 0
        self.used: set[str] = set()
        self.literals: list[tuple[str, Any]] = []
        self.depth = 0  # parentheses and `!` open around the current token

    def parse(self) -> Predicate:
        if self.tokens[0].kind == "end":
            raise MatcherError("empty matcher; write a condition such as `convo_length <= 8`", 1)
        predicate = self._or()
        tok = self._peek()
        if tok.kind != "end":
            raise MatcherError(f"unexpected `{tok.text}`; expected `&&`, `||` or the end", tok.column)
        return predicate

    def _peek(self) -> _Tok:
        return self.tokens[self.pos]

    def _next(self) -> _Tok:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def _expect(self, text: str) -> _Tok:
        tok = self._next()
        if tok.text != text or tok.kind not in ("op",):
            found = f"`{tok.text}`" if tok.kind != "end" else "the end"
            raise MatcherError(f"expected `{text}`, found {found}", tok.column)
        return tok

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._peek().text == "||" and self._peek().kind == "op":
            self._next()
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda s: any(p(s) for p in parts)

    def _and(self) -> Predicate:
        parts = [self._unary()]
        while self._peek().text == "&&" and self._peek().kind == "op":
            self._next()
            parts.append(self._unary())
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            first, second = parts
            return lambda s: first(s) and second(s)
        return lambda s: all(p(s) for p in parts)

    def _unary(self) -> Predicate:
        tok = self._peek()
        if tok.kind == "op" and tok.text in ("!", "("):
            if self.depth == MAX_NESTING:  # the parser, and a `!` when matched, recurse once per level
                raise MatcherError(f"nested more than {MAX_NESTING} levels deep (parentheses and `!`); write the "
                                   "condition flatter", tok.column)
            self.depth += 1
            self._next()
            if tok.text == "!":
                negated = self._unary()
                inner: Predicate = lambda s: not negated(s)  # noqa: E731 (a closure over `negated`)
            else:
                inner = self._or()
                self._expect(")")
            self.depth -= 1
            return inner
        return self._compare()

    def _compare(self) -> Predicate:
        left = self._operand()
        tok = self._peek()
        if tok.kind == "op" and tok.text in _COMPARE:
            self._next()
            right = self._operand()
            return self._binary(left, tok, right)
        negate = False
        if tok.kind == "word" and tok.text == "not" and self.tokens[self.pos + 1].text == "in":
            self._next()
            negate = True
            tok = self._peek()
        if tok.kind == "word" and tok.text == "in":
            self._next()
            return self._membership(left, negate)
        if left.kind == "signal" and SIGNALS.get(left.value, _ANY).kind in ("bool", "any"):
            getter = _getter(left.value)
            return lambda s: bool(getter(s))
        if left.kind == "literal" and isinstance(left.value, bool):
            value = left.value
            return lambda _s: value
        if left.kind == "literal" and left.bare:  # a word that names no signal: most likely a misspelled one
            raise _not_a_signal(left)
        raise MatcherError(
            f"`{_show(left)}` is not a condition; compare it, e.g. `{_show(left)} == ...`", left.column
        )

    def _operand(self) -> _Operand:
        tok = self._next()
        if tok.kind == "num":
            return _Operand("literal", float(tok.text) if "." in tok.text else int(tok.text), tok.column)
        if tok.kind == "str":
            return _Operand("literal", tok.text[1:-1], tok.column)
        if tok.kind == "word":
            if tok.text in ("true", "false"):
                return _Operand("literal", tok.text == "true", tok.column)
            if tok.text in SIGNALS or tok.text.startswith("metadata."):
                if tok.text == "metadata.":
                    raise MatcherError("`metadata.` needs a key, e.g. `metadata.plan`", tok.column)
                if (key := tok.text[len("metadata."):]) in SETTABLE:
                    # A request's `metadata.tier` sets the signal `tier`; it is not kept among the metadata.
                    raise MatcherError(f"`{tok.text}` is read as the signal `{key}`: write `{key} == ...`", tok.column)
                self.used.add(tok.text)
                return _Operand("signal", tok.text, tok.column)
            return _Operand("literal", tok.text, tok.column, bare=True)
        found = f"`{tok.text}`" if tok.kind != "end" else "the end of the matcher"
        raise MatcherError(f"expected a signal or a value, found {found}", tok.column)

    def _binary(self, left: _Operand, op: _Tok, right: _Operand) -> Predicate:
        if left.kind == "literal" and right.kind == "signal":
            left, right = right, left
            op = _Tok(op.kind, _FLIP.get(op.text, op.text), op.column)
        if left.kind != "signal":
            raise _not_a_signal(left)
        if right.kind == "signal":
            raise MatcherError("compare a signal with a value, not with another signal", right.column)
        name = left.value
        value = _check_literal(name, right, op.text)
        self.literals.append((name, value))
        compare = _COMPARE[op.text]
        getter = _getter(name)
        if name.startswith("metadata."):
            return lambda s: _loose_compare(compare, getter(s), value)
        return lambda s: compare(getter(s), value)

    def _membership(self, left: _Operand, negate: bool) -> Predicate:
        if left.kind != "signal":
            raise _not_a_signal(left)
        self._expect("[")
        values: list[Any] = []
        while True:
            item = self._operand()
            if item.kind != "literal":
                raise MatcherError("a list holds values, not signals", item.column)
            values.append(_check_literal(left.value, item, "=="))
            sep = self._next()
            if sep.text == "]":
                break
            if sep.text != ",":
                raise MatcherError(f"expected `,` or `]` in the list, found `{sep.text}`", sep.column)
        for value in values:
            self.literals.append((left.value, value))
        getter = _getter(left.value)
        if left.value.startswith("metadata."):
            texts = frozenset(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
            return lambda s: (_text(getter(s)) in texts) != negate
        members = frozenset(values)
        return lambda s: (getter(s) in members) != negate


_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
_ANY = SignalType("any")


def _not_a_signal(operand: _Operand) -> MatcherError:
    close = difflib.get_close_matches(str(operand.value), list(SIGNALS), n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"known signals: {', '.join(sorted(SIGNALS))}, metadata.<key>"
    return MatcherError(f"`{_show(operand)}` is not a signal; {hint}", operand.column)


def _show(operand: _Operand) -> str:
    if operand.kind == "literal" and isinstance(operand.value, str) and not operand.bare:
        return repr(operand.value)
    if isinstance(operand.value, bool):
        return "true" if operand.value else "false"
    return str(operand.value)


def _getter(name: str) -> Getter:
    if name.startswith("metadata."):
        key = name[len("metadata."):]
        return lambda s: s.metadata.get(key)
    return operator.attrgetter(name)


def _check_literal(name: str, literal: _Operand, op: str) -> Any:
    if name.startswith("metadata."):
        return literal.value
    kind = SIGNALS[name]
    value = literal.value
    ordered = op in ("<", "<=", ">", ">=")
    if kind.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MatcherError(f"`{name}` is a number; compare it with a number, not `{_show(literal)}`",
                               literal.column)
        return value
    if ordered:
        raise MatcherError(f"`{name}` is not a number; `{op}` needs a numeric signal", literal.column)
    if kind.kind == "bool":
        if not isinstance(value, bool):
            raise MatcherError(f"`{name}` is true or false, not `{_show(literal)}`", literal.column)
        return value
    if not isinstance(value, str):
        raise MatcherError(f"`{name}` is text; quote the value or use a word, not `{_show(literal)}`",
                           literal.column)
    if kind.kind == "enum" and value not in kind.values:
        raise MatcherError(
            f"unknown value `{value}` for `{name}`; expected one of {', '.join(kind.values)}", literal.column
        )
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _loose_compare(compare: Callable[[Any, Any], bool], actual: Any, expected: Any) -> bool:
    """metadata values arrive as JSON or header text; compare them in the literal's type."""
    if actual is None:
        return compare is operator.ne
    if isinstance(expected, bool):
        return compare(_text(actual), _text(expected))
    if isinstance(expected, (int, float)):
        try:
            return compare(float(actual), expected)
        except (TypeError, ValueError):
            return compare is operator.ne
    return compare(_text(actual), expected)
