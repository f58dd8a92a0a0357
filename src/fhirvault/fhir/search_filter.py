"""The syntax of the `_filter` search parameter (R4 search_filter.html): text to an expression tree.

    filter    = or
    or        = and *("or" and)
    and       = unary *("and" unary)
    unary     = "not" "(" filter ")" / "(" filter ")" / paramExp
    paramExp  = paramPath SP compareOp SP compValue
    compValue = string (a JSON string in double quotes) / token (characters up to whitespace or ")")

R4's grammar leaves the precedence of `and` and `or` open; here `and` binds tighter, as in SQL and
FHIRPath, and parentheses say otherwise. Keywords and operators are lower case, as the spec writes them.
What the expression means (which parameter, which operator applies to which type) is for the search
service to decide; this module only reads the text."""

from __future__ import annotations

import json
from dataclasses import dataclass

OPERATORS = frozenset({"eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le", "ap", "sa", "eb", "pr", "po", "ss",
                       "sb", "in", "ni", "re"})
MAX_LENGTH = 4000
MAX_DEPTH = 20


class FilterSyntaxError(ValueError):
    """The text is no `_filter` expression; the message says where and what was expected."""


@dataclass(frozen=True)
class Comparison:
    """`path op value`: `path` the dotted parameter path (a chain), `value` as written (strings unquoted)."""

    path: str
    op: str
    value: str


@dataclass(frozen=True)
class Logical:
    """`and` / `or` of two or more expressions."""

    op: str  # and | or
    parts: tuple[Expression, ...]


@dataclass(frozen=True)
class Negation:
    """`not (expression)`."""

    part: Expression


Expression = Comparison | Logical | Negation


@dataclass(frozen=True)
class _Token:
    text: str
    pos: int
    quoted: bool = False


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "()":
            out.append(_Token(ch, i))
            i += 1
        elif ch == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                raise FilterSyntaxError(f"the string starting at character {i + 1} has no closing quote")
            try:
                value = json.loads(text[i:j + 1])
            except ValueError:
                raise FilterSyntaxError(f"the string starting at character {i + 1} has an invalid escape") from None
            out.append(_Token(value, i, quoted=True))
            i = j + 1
        else:
            # up to whitespace or ")", but a path's filter (`link[type eq seealso].other`) is one token
            j, depth = i, 0
            while j < len(text) and (depth > 0 or (not text[j].isspace() and text[j] != ")")):
                depth += {"[": 1, "]": -1}.get(text[j], 0) if depth > 0 or text[j] == "[" else 0
                j += 1
            out.append(_Token(text[i:j], i))
            i = j
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Token | None:
        k = self.i + ahead
        return self.tokens[k] if k < len(self.tokens) else None

    def is_word(self, word: str, ahead: int = 0) -> bool:
        t = self.peek(ahead)
        return t is not None and not t.quoted and t.text == word

    def take(self, what: str) -> _Token:
        t = self.peek()
        if t is None:
            raise FilterSyntaxError(f"the expression ends where {what} was expected")
        self.i += 1
        return t

    def expect(self, word: str) -> None:
        t = self.take(f"'{word}'")
        if t.quoted or t.text != word:
            raise FilterSyntaxError(f"'{word}' expected at character {t.pos + 1}, not '{t.text}'")

    def logical(self, op: str, lower: str) -> Expression:
        parts = [self.unary() if lower == "unary" else self.logical("and", "unary")]
        while self.is_word(op):
            self.i += 1
            parts.append(self.unary() if lower == "unary" else self.logical("and", "unary"))
        return parts[0] if len(parts) == 1 else Logical(op, tuple(parts))

    def nested(self) -> Expression:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterSyntaxError(f"the expression nests more than {MAX_DEPTH} levels deep")
        self.expect("(")
        inner = self.logical("or", "and")
        self.expect(")")
        self.depth -= 1
        return inner

    def unary(self) -> Expression:
        if self.is_word("not") and self.is_word("(", 1):
            self.i += 1
            return Negation(self.nested())
        if self.is_word("("):
            return self.nested()
        path = self.take("a search parameter")
        if path.quoted or path.text in ("(", ")"):
            raise FilterSyntaxError(f"a search parameter expected at character {path.pos + 1}, not '{path.text}'")
        op = self.take(f"an operator after '{path.text}'")
        if op.quoted or op.text not in OPERATORS:
            raise FilterSyntaxError(f"'{op.text}' at character {op.pos + 1} is no operator (one of "
                                    f"{', '.join(sorted(OPERATORS))})")
        value = self.take(f"a value after '{path.text} {op.text}'")
        if not value.quoted and value.text in ("(", ")"):
            raise FilterSyntaxError(f"a value expected at character {value.pos + 1}, not '{value.text}'")
        return Comparison(path.text, op.text, value.text)


def parse_filter(text: str) -> Expression:
    """The expression tree of a `_filter` value. Raises FilterSyntaxError."""
    if len(text) > MAX_LENGTH:
        raise FilterSyntaxError(f"the expression is longer than {MAX_LENGTH} characters")
    parser = _Parser(text)
    if not parser.tokens:
        raise FilterSyntaxError("the expression is empty")
    tree = parser.logical("or", "and")
    rest = parser.peek()
    if rest is not None:
        raise FilterSyntaxError(f"unexpected '{rest.text}' at character {rest.pos + 1}")
    return tree


def comparisons(tree: Expression) -> int:
    """How many `param op value` comparisons `tree` holds."""
    if isinstance(tree, Comparison):
        return 1
    if isinstance(tree, Negation):
        return comparisons(tree.part)
    return sum(comparisons(p) for p in tree.parts)
