"""A small compiler for the FHIRPath subset used by FHIR R4 search parameters.

The R4 SearchParameter definitions (``SearchParameter.expression``, see
http://hl7.org/fhir/R4/searchparameter-definitions.html#SearchParameter.expression)
use only a sliver of FHIRPath (http://hl7.org/fhirpath/N1/): member navigation,
choice elements (``value`` matching ``valueQuantity`` ...), ``|`` union,
``ofType()`` / ``as`` / ``is``, ``where()`` with ``resolve() is X`` or simple
equality, ``exists()``, ``and`` and ``!=``.  Evaluating those with a general
interpreter costs milliseconds per resource, so this module compiles each
expression **once** into nested Python closures that work directly on R4 JSON
(plain ``dict``/``list``/``str`` values as produced by ``json.loads``).

Evaluation model (FHIRPath section 4 "Path selection" and FHIR JSON rules from
http://hl7.org/fhir/R4/json.html):

* every compiled node is ``fn(nodes: list, root: dict) -> list``; ``nodes`` is
  the input collection and ``root`` is ``%resource``;
* arrays are flattened, ``null`` entries of primitive arrays (placeholders for
  ``_given``-style primitive extensions) are dropped, and the ``_element``
  extension siblings are never visited;
* a member name that is absent but is a choice element (``value[x]``) yields
  the values of the keys ``name + <TypeName>`` (json.html#choice);
* ``X.ofType(T)`` / ``X as T`` on a member ``X`` is compiled to the single key
  ``X + T`` (``value.ofType(Quantity)`` reads ``valueQuantity``); elsewhere the
  type test is made on the JSON shape (``resourceType`` for resources, Python
  type for primitives, the key itself for choice values);
* ``resolve() is T`` checks the *target type of a Reference* without resolving
  it: ``Reference.reference`` (relative ``T/id`` or absolute ``.../T/id``,
  http://hl7.org/fhir/R4/references.html#literal) or else ``Reference.type``.

Anything outside the subset raises :class:`UnsupportedExpression`; the caller
(``hub.fhir.search.extract``) then falls back to ``fhirpathpy``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Callable
from typing import Any

__all__ = [
    "CHOICE_ELEMENTS",
    "DATA_TYPE_SUFFIXES",
    "Compiled",
    "UnsupportedExpression",
    "compile_expression",
    "parse_literal_reference",
    "reference_target_type",
    "required_keys",
    "required_paths",
    "split_union",
]

Compiled = Callable[[list, Any], list]
"""A compiled expression: ``fn(input_collection, root_resource) -> output_collection``."""


class UnsupportedExpression(ValueError):
    """The expression uses FHIRPath outside the compiled subset."""


# Upper-camel names of the R4 data types (datatypes.html, metadatatypes.html) as they
# appear as suffixes of choice-element JSON keys (json.html#choice): valueDateTime ...
DATA_TYPE_SUFFIXES: frozenset[str] = frozenset(
    """Base64Binary Boolean Canonical Code Date DateTime Decimal Id Instant Integer Markdown
    Oid PositiveInt String Time UnsignedInt Uri Url Uuid Address Age Annotation Attachment
    CodeableConcept Coding ContactPoint Count Distance Duration HumanName Identifier Money
    Period Quantity Range Ratio Reference SampledData Signature Timing ContactDetail
    Contributor DataRequirement Expression ParameterDefinition RelatedArtifact
    TriggerDefinition UsageContext Dosage Meta""".split()
)

# Names of the choice elements ("[x]") of the R4/R4B resources and data types.  Only for
# these names does navigation look for ``name + TypeName`` keys when ``name`` itself is
# absent -- a cheap guard against false matches such as ``countMax`` for ``count``.
# Generated from the fhir.resources R4B models (``one_of_many`` field metadata) plus the
# R4 elements that R4 search expressions select with ``ofType()``.
CHOICE_ELEMENTS: frozenset[str] = frozenset(
    """abatement additive age allowed amount answer asNeeded author born bounds characteristic
    chargeItem citeAs code collected concentration content created date deceased defaultValue
    definition detail diagnosis dose doseNumber due duration effective entity event example
    fastingStatus fixed identified indication item legallyBinding location manufacturer
    maxValue medication minValue minimumVolume module multipleBirth name occurred occurrence
    offset onset participantEffective pattern performed period presentation probability
    procedure product quantity rate reported scheduled seriesDoses serviced source start
    statusReason strength studyEffective subject substance substanceDefinition target time
    timing topic used value when""".split()
)

# FHIR primitive type names -> Python JSON types, for shape-based type tests.
_PRIMITIVE_PY: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "integer": (int,),
    "unsignedInt": (int,),
    "positiveInt": (int,),
    "decimal": (int, float),
}
for _t in ("string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown",
           "base64Binary", "date", "dateTime", "instant", "time"):
    _PRIMITIVE_PY[_t] = (str,)


def _cap(type_name: str) -> str:
    """``dateTime`` -> ``DateTime``: the suffix a type gets in a choice-element key."""
    return type_name[:1].upper() + type_name[1:]


# --------------------------------------------------------------------------- tokenizer

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.)*')
      | (?P<num>\d+(?:\.\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
      | (?P<env>%[A-Za-z_][A-Za-z0-9_]*)
      | (?P<dollar>\$[a-z]+)
      | (?P<op>!=|<=|>=|[.()\[\]|=<>,])
    )""",
    re.VERBOSE,
)


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m or m.end() == pos:
            raise UnsupportedExpression(f"cannot tokenize {expr!r} at {pos}")
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "ident" and text.startswith("`"):
            text = text[1:-1]
        tokens.append((kind, text))
        pos = m.end()
    tokens.append(("eof", ""))
    return tokens


# --------------------------------------------------------------------------- parser
# AST nodes are tuples: ("root",) ("this",) ("env", name) ("lit", value)
# ("member", base, name) ("index", base, n) ("func", base, name, args)
# ("union", a, b) ("is"|"as", base, type) ("="|"!="|"and"|"or", a, b)

_KEYWORD_OPS = {"and", "or", "is", "as", "xor", "implies", "in", "contains", "div", "mod"}


class _Parser:
    def __init__(self, expr: str):
        self.expr = expr
        self.toks = _tokenize(expr)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i]

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        kind, t = self.take()
        if t != text:
            raise UnsupportedExpression(f"expected {text!r}, got {t!r} in {self.expr!r}")

    def parse(self):
        node = self.p_or()
        if self.peek()[0] != "eof":
            raise UnsupportedExpression(f"unexpected {self.peek()[1]!r} in {self.expr!r}")
        return node

    def p_or(self):
        node = self.p_and()
        while self.peek() == ("ident", "or"):
            self.take()
            node = ("or", node, self.p_and())
        return node

    def p_and(self):
        node = self.p_eq()
        while self.peek() == ("ident", "and"):
            self.take()
            node = ("and", node, self.p_eq())
        return node

    def p_eq(self):
        node = self.p_union()
        if self.peek()[0] == "op" and self.peek()[1] in ("=", "!="):
            op = self.take()[1]
            node = (op, node, self.p_union())
        return node

    def p_union(self):
        node = self.p_type()
        while self.peek() == ("op", "|"):
            self.take()
            node = ("union", node, self.p_type())
        return node

    def p_type(self):
        node = self.p_chain()
        while self.peek() in (("ident", "is"), ("ident", "as")):
            op = self.take()[1]
            node = (op, node, self.p_type_name())
        return node

    def p_type_name(self) -> str:
        kind, name = self.take()
        if kind != "ident":
            raise UnsupportedExpression(f"type name expected in {self.expr!r}")
        if self.peek() == ("op", "."):  # FHIR.Patient / System.String
            self.take()
            name = self.take()[1]
        return name

    def p_chain(self):
        node = self.p_term()
        while True:
            tok = self.peek()
            if tok == ("op", "."):
                self.take()
                node = self.p_invocation(node)
            elif tok == ("op", "["):
                self.take()
                kind, num = self.take()
                if kind != "num" or "." in num:
                    raise UnsupportedExpression(f"only integer indexers are supported: {self.expr!r}")
                self.expect("]")
                node = ("index", node, int(num))
            else:
                return node

    def p_term(self):
        kind, text = self.peek()
        if kind == "op" and text == "(":
            self.take()
            node = self.p_or()
            self.expect(")")
            return node
        if kind == "str":
            self.take()
            return ("lit", _unescape(text[1:-1]))
        if kind == "num":
            self.take()
            return ("lit", float(text) if "." in text else int(text))
        if kind == "env":
            self.take()
            if text in ("%resource", "%context", "%rootResource"):
                return ("env", text)
            raise UnsupportedExpression(f"environment variable {text} in {self.expr!r}")
        if kind == "dollar":
            self.take()
            if text == "$this":
                return ("this",)
            raise UnsupportedExpression(f"{text} in {self.expr!r}")
        if kind == "ident":
            if text in ("true", "false") and self.toks[self.i + 1] != ("op", "("):
                self.take()
                return ("lit", text == "true")
            if text in _KEYWORD_OPS:
                raise UnsupportedExpression(f"operator {text!r} in term position: {self.expr!r}")
            return self.p_invocation(("root",))
        raise UnsupportedExpression(f"unexpected {text!r} in {self.expr!r}")

    def p_invocation(self, base):
        kind, name = self.take()
        if kind != "ident":
            raise UnsupportedExpression(f"identifier expected after '.' in {self.expr!r}")
        if self.peek() == ("op", "("):
            self.take()
            args = []
            if self.peek() != ("op", ")"):
                if name in ("ofType", "as", "is"):
                    args.append(("type", self.p_type_name()))
                else:
                    args.append(self.p_or())
                    while self.peek() == ("op", ","):
                        self.take()
                        args.append(self.p_or())
            self.expect(")")
            return ("func", base, name, args)
        return ("member", base, name)


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), s)


# --------------------------------------------------------------------------- runtime helpers


def _step(name: str) -> Compiled:
    """``nodes -> the JSON children name of each node``, arrays flattened and their nulls
    dropped; a choice element (json.html#choice) also reads ``name + TypeName`` when ``name``
    is absent. One specialised loop per member name: this runs for every search parameter of
    every resource written."""
    if name in CHOICE_ELEMENTS:
        typed_keys = frozenset(name + suffix for suffix in DATA_TYPE_SUFFIXES)

        def choice_step(nodes: list, root: Any = None) -> list:
            out: list = []
            for node in nodes:
                if type(node) is not dict:
                    continue
                v = node.get(name)
                if v is None:
                    for k, cv in node.items():
                        if k in typed_keys:
                            if type(cv) is list:
                                out += [x for x in cv if x is not None] if None in cv else cv
                            else:
                                out.append(cv)
                elif type(v) is list:
                    out += [x for x in v if x is not None] if None in v else v
                else:
                    out.append(v)
            return out
        return choice_step

    def step(nodes: list, root: Any = None) -> list:
        out: list = []
        for node in nodes:
            if type(node) is dict:
                v = node.get(name)
                if v is not None:
                    if type(v) is list:
                        out += [x for x in v if x is not None] if None in v else v
                    else:
                        out.append(v)
        return out
    return step


def _chain(steps: tuple[Compiled, ...]) -> Compiled:
    """The member steps applied in turn, stopping at the first empty collection."""
    if len(steps) == 1:
        return steps[0]
    if len(steps) == 2:
        first, second = steps

        def two(nodes: list, root: Any = None) -> list:
            cur = first(nodes)
            return second(cur) if cur else cur
        return two

    def chain(nodes: list, root: Any = None) -> list:
        cur = nodes
        for s in steps:
            cur = s(cur)
            if not cur:
                return cur
        return cur
    return chain


_ABS_RE = re.compile(r"^(https?://.+?/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[^/]*)?$")


def _parse_identifier_query(query: str) -> tuple[str | None, str | None]:
    """``identifier=sys|val`` of a conditional reference -> (sys, val)."""
    for part in query.split("&"):
        if part.startswith("identifier="):
            tok = part[len("identifier="):]
            if "|" in tok:
                s, val = tok.split("|", 1)
                return (s or None), (val or None)
            return None, tok or None
    return None, None


_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."


def _is_id(s: str) -> bool:
    """FHIR ``id`` syntax: [A-Za-z0-9-.]{1,64} (datatypes.html#id)."""
    return 0 < len(s) <= 64 and not s.strip(_ID_CHARS)


def parse_literal_reference(ref: str, resource_types: frozenset[str]) -> tuple:
    """Parse a literal reference (references.html#literal): the search index's reading of it
    (``hub.fhir.search.extract.reference_rows``) and ``resolve() is T``'s
    (:func:`reference_target_type`), which must agree for the type (``hub.fhir.search.registry``
    reads a type-filtered parameter from the rows of its unfiltered one).

    Returns ``(type, id, url, query_ident_system, query_ident_value, is_bare_id)``.
    """
    slash = ref.find("/")
    if slash > 0 and ref[:slash] in resource_types:  # relative "Type/id[/_history/v]"
        rest = ref[slash + 1:]
        h = rest.find("/")
        rid = rest if h < 0 else (rest[:h] if rest.startswith("/_history/", h) else "")
        if _is_id(rid):
            return ref[:slash], rid, None, None, None, False
    if ref.startswith(("http://", "https://")):
        m = _ABS_RE.match(ref)
        if m and m.group(2) in resource_types:
            return m.group(2), m.group(3), (ref[: m.start(4)] if m.group(4) else ref), None, None, False
        return None, None, ref, None, None, False
    q = ref.find("?")
    if q > 0 and ref[:q] in resource_types:  # conditional reference (transaction bundles)
        isys, ival = _parse_identifier_query(ref[q + 1:])
        return ref[:q], None, ref, isys, ival, False
    if _is_id(ref):
        return None, ref, None, None, None, True
    return None, None, ref, None, None, False  # urn:uuid:, urn:oid:, #contained, other URIs



@lru_cache(maxsize=1)
def _resource_types() -> frozenset[str]:
    from hub.fhir.search.registry import get_registry  # here: the registry imports this module

    return get_registry().resource_types


#: reference text -> the type parse_literal_reference finds in it (None for urn:, #id, a bare id); the resources of a
#: bundle point at the same few (where() filters test each once per parameter); forgotten all at
#: once when full
_LITERAL_TYPES: dict[str, str | None] = {}
_LITERAL_TYPES_SIZE = 8192
#: longest reference text remembered (here and in hub.fhir.search.extract): the cache is bounded
#: in entries, so only a bound on each keeps its memory bounded (a 256 MiB request could fill
#: 8,192 entries with 30 kB texts, kept after the request); stored references are at most 255
REMEMBERED_TEXT_MAX = 512
_UNKNOWN = object()


def reference_target_type(ref: Any) -> str | None:
    """Best-effort target resource type of a Reference (references.html#Reference).

    Uses the literal reference (``Type/id``, ``http://base/Type/id``, with or without
    ``/_history/n``, or a conditional ``Type?query``: :func:`parse_literal_reference`, as the
    search index reads it) and else ``Reference.type``; an embedded resource
    (``Bundle.entry[0].resource``) is of its own type, as the index stores it.
    Returns ``None`` when unknown (``urn:uuid:``, contained ``#id``, display-only).
    """
    if not isinstance(ref, dict):
        return None
    embedded = ref.get("resourceType")
    if embedded is not None:
        return embedded if type(embedded) is str else None
    r = ref.get("reference")
    if type(r) is str and r:
        rt = _LITERAL_TYPES.get(r, _UNKNOWN)
        if rt is _UNKNOWN:
            rt = parse_literal_reference(r, _resource_types())[0]
            if len(r) <= REMEMBERED_TEXT_MAX:  # a long text (a request's to choose) is not kept
                if len(_LITERAL_TYPES) >= _LITERAL_TYPES_SIZE:
                    _LITERAL_TYPES.clear()
                _LITERAL_TYPES[r] = rt
        if rt is not None:
            return rt
    t = ref.get("type")
    if type(t) is str:
        # Reference.type is a URI; for core types it is the bare type name.
        return t.rsplit("/", 1)[-1] if "/" in t else t
    return None


def _shape_is(value: Any, type_name: str) -> bool:
    """Shape-based ``is`` test for a JSON value whose FHIR type is not known statically."""
    if type(value) is dict:
        rt = value.get("resourceType")
        if rt is not None:
            return rt == type_name or type_name in ("Resource", "DomainResource")
        # complex data types: recognise the few that matter by their elements
        if type_name in ("Quantity", "Age", "Duration", "Distance", "Count"):
            return "value" in value and "currency" not in value and "low" not in value
        if type_name == "Money":
            return "currency" in value
        if type_name == "Period":
            return ("start" in value or "end" in value) and "value" not in value
        if type_name == "Range":
            return "low" in value or "high" in value
        if type_name == "CodeableConcept":
            return "coding" in value or ("text" in value and len(value) == 1)
        if type_name == "Coding":
            return "code" in value or "system" in value and "value" not in value
        if type_name == "Reference":
            return "reference" in value or "identifier" in value or "display" in value
        if type_name == "Identifier":
            return "value" in value and "reference" not in value
        return False
    py = _PRIMITIVE_PY.get(type_name)
    if py is None:
        return False
    if type(value) is bool:
        return bool in py
    return isinstance(value, py)


def _eq(a: list, b: list) -> list:
    if not a or not b:
        return []
    return [a == b]


def _bool3(coll: list) -> bool | None:
    """FHIRPath singleton evaluation of collections as booleans (fhirpath #singleton-evaluation)."""
    if not coll:
        return None
    if len(coll) == 1 and type(coll[0]) is bool:
        return coll[0]
    return True


# --------------------------------------------------------------------------- compiler


def _compile(node, ctx_type: str | None) -> Compiled:  # noqa: C901 - a dispatcher
    kind = node[0]
    if kind == "root" or kind == "this":
        return lambda nodes, root: nodes
    if kind == "env":
        return lambda nodes, root: [root]
    if kind == "lit":
        value = node[1]
        return lambda nodes, root: [value]
    if kind == "member":
        base, name = node[1], node[2]
        if base == ("root",) and name[:1].isupper():
            # A leading type name ("Observation.code") selects nodes of that type.
            if name == ctx_type or name in ("Resource", "DomainResource"):
                return lambda nodes, root: nodes
            return lambda nodes, root: [
                n for n in nodes if type(n) is dict and n.get("resourceType") == name
            ]
        # Fuse chains of plain member steps into one loop.
        names = [name]
        while base[0] == "member" and not (base[1] == ("root",) and base[2][:1].isupper()):
            names.append(base[2])
            base = base[1]
        names.reverse()
        path = _chain(tuple(_step(nm) for nm in names))
        if base == ("root",) or base == ("this",) or (
            base[0] == "member" and base[1] == ("root",) and (base[2] == ctx_type or base[2] in ("Resource", "DomainResource"))
        ):
            # The common case "Type.a.b": navigate straight from the input collection.
            return path
        bf = _compile(base, ctx_type)
        return lambda nodes, root: path(bf(nodes, root))
    if kind == "index":
        bf = _compile(node[1], ctx_type)
        idx = node[2]
        return lambda nodes, root: bf(nodes, root)[idx: idx + 1]
    if kind == "union":
        af = _compile(node[1], ctx_type)
        bf = _compile(node[2], ctx_type)
        return lambda nodes, root: af(nodes, root) + bf(nodes, root)
    if kind in ("=", "!="):
        af = _compile(node[1], ctx_type)
        bf = _compile(node[2], ctx_type)
        if kind == "=":
            return lambda nodes, root: _eq(af(nodes, root), bf(nodes, root))

        def ne(nodes, root):
            r = _eq(af(nodes, root), bf(nodes, root))
            return [not r[0]] if r else r
        return ne
    if kind in ("and", "or"):
        af = _compile(node[1], ctx_type)
        bf = _compile(node[2], ctx_type)
        if kind == "and":
            def and_(nodes, root):
                a = _bool3(af(nodes, root))
                if a is False:
                    return [False]
                b = _bool3(bf(nodes, root))
                if b is False:
                    return [False]
                return [True] if a and b else []
            return and_

        def or_(nodes, root):
            a = _bool3(af(nodes, root))
            if a is True:
                return [True]
            b = _bool3(bf(nodes, root))
            if b is True:
                return [True]
            return [False] if a is False and b is False else []
        return or_
    if kind == "is":
        return _compile_is(node[1], node[2], ctx_type)
    if kind == "as":
        return _compile_oftype(node[1], node[2], ctx_type)
    if kind == "func":
        return _compile_func(node, ctx_type)
    raise UnsupportedExpression(f"node {kind}")


def _compile_is(base, type_name: str, ctx_type: str | None) -> Compiled:
    if base[0] == "func" and base[2] == "resolve" and not base[3]:
        # ``resolve() is T``: test the Reference's target type without resolving it.
        rf = _compile(base[1], ctx_type)

        def ref_is(nodes, root):
            items = rf(nodes, root)
            if not items:
                return []
            return [any(reference_target_type(i) == type_name for i in items)]
        return ref_is
    bf = _compile(base, ctx_type)

    def is_(nodes, root):
        items = bf(nodes, root)
        if not items:
            return []
        return [any(_shape_is(i, type_name) for i in items)]
    return is_


def _compile_oftype(base, type_name: str, ctx_type: str | None) -> Compiled:
    if base[0] == "member" and not (base[1] == ("root",) and base[2][:1].isupper()):
        # ``value.ofType(Quantity)`` -> the JSON key ``valueQuantity``; if the element is
        # not a choice element (``name`` itself present) fall back to a shape test.
        # on the resource itself ("Observation.value.ofType(Quantity)") the input is read directly
        bf = None if _is_context(base[1], ctx_type) else _compile(base[1], ctx_type)
        name = base[2]
        key = name + _cap(type_name)

        def choice(nodes, root):
            out: list = []
            for n in (nodes if bf is None else bf(nodes, root)):
                if type(n) is not dict:
                    continue
                v = n.get(key)
                if v is None:
                    v = n.get(name)
                    if v is None:
                        continue
                    vs = v if type(v) is list else [v]
                    out.extend(x for x in vs if x is not None and _shape_is(x, type_name))
                    continue
                if type(v) is list:
                    out += [x for x in v if x is not None] if None in v else v
                else:
                    out.append(v)
            return out
        return choice
    bf = _compile(base, ctx_type)
    return lambda nodes, root: [x for x in bf(nodes, root) if _shape_is(x, type_name)]


def _compile_func(node, ctx_type: str | None) -> Compiled:  # noqa: C901
    _, base, name, args = node
    if name in ("ofType", "as"):
        if len(args) != 1 or args[0][0] != "type":
            raise UnsupportedExpression(f"{name}() needs a type argument")
        return _compile_oftype(base, args[0][1], ctx_type)
    if name == "is":
        if len(args) != 1 or args[0][0] != "type":
            raise UnsupportedExpression("is() needs a type argument")
        return _compile_is(base, args[0][1], ctx_type)
    bf = _compile(base, ctx_type)
    if name == "where":
        if len(args) != 1:
            raise UnsupportedExpression("where() takes one argument")
        cond = args[0]
        if cond[0] == "is" and cond[1] == ("func", ("root",), "resolve", []):
            # where(resolve() is T), the usual filter of reference parameters: the test made
            # item by item, as ref_is would on the singleton [x]
            target = cond[2]
            return lambda nodes, root: [x for x in bf(nodes, root) if reference_target_type(x) == target]
        cf = _compile(cond, None)
        return lambda nodes, root: [x for x in bf(nodes, root) if _bool3(cf([x], root)) is True]
    if name == "exists":
        if args:
            cf = _compile(args[0], None)
            return lambda nodes, root: [any(_bool3(cf([x], root)) is True for x in bf(nodes, root))]
        return lambda nodes, root: [bool(bf(nodes, root))]
    if args and name != "extension":
        raise UnsupportedExpression(f"{name}() with arguments")
    if name == "empty":
        return lambda nodes, root: [not bf(nodes, root)]
    if name == "not":
        def not_(nodes, root):
            b = _bool3(bf(nodes, root))
            return [] if b is None else [not b]
        return not_
    if name == "first":
        return lambda nodes, root: bf(nodes, root)[:1]
    if name == "last":
        return lambda nodes, root: bf(nodes, root)[-1:]
    if name == "count":
        return lambda nodes, root: [len(bf(nodes, root))]
    if name == "hasValue":
        return lambda nodes, root: [any(type(x) is not dict for x in bf(nodes, root))]
    if name == "extension":
        if len(args) != 1 or args[0][0] != "lit" or type(args[0][1]) is not str:
            raise UnsupportedExpression("extension() needs a literal url")
        url = args[0][1]

        def extension(nodes, root):
            out: list = []
            for n in bf(nodes, root):
                if type(n) is dict:
                    for e in n.get("extension") or ():
                        if type(e) is dict and e.get("url") == url:
                            out.append(e)
            return out
        return extension
    raise UnsupportedExpression(f"function {name}()")


def split_union(expr: str) -> list[str]:
    """Split ``expr`` at its top-level ``|`` operators (outside parentheses and strings)."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(expr):
        if ch == "'" and (i == 0 or expr[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expr[start:i].strip())
            start = i + 1
    parts.append(expr[start:].strip())
    return [p for p in parts if p]


def _required_paths(node, ctx_type: str | None) -> frozenset[tuple[str, ...]] | None:
    """JSON paths of which at least one must be present for a non-empty result: ``(key,)`` a
    top-level key, ``(key, child)`` a child of a top-level *object* (a top-level array or
    other value is not looked into: the path is then taken as present).

    ``None`` when that cannot be told statically (boolean logic, literals ...).  Used to skip
    evaluating parameters cheaply.  A choice element is present as any of its typed keys
    (``effective`` as ``effectiveDateTime`` ..., what :func:`_step` reads); a choice element
    is never a path's child (its keys are not known to be the child's).
    """
    kind = node[0]
    if kind == "union":
        a = _required_paths(node[1], ctx_type)
        b = _required_paths(node[2], ctx_type)
        return None if a is None or b is None else a | b
    if kind in ("func", "index", "as") or (kind == "is" and node[1][0] == "func" and node[1][2] == "resolve"):
        if kind == "func" and node[2] in ("exists", "empty", "not", "count", "hasValue"):
            return None
        if kind == "func" and node[2] == "ofType" or kind == "as":
            base = node[1]
            tname = node[3][0][1] if kind == "func" else node[2]
            if base[0] == "member" and _is_context(base[1], ctx_type):
                return frozenset({(base[2],), (base[2] + _cap(tname),)})
        if kind == "is":
            return None
        return _required_paths(node[1], ctx_type)
    if kind == "member":
        base, name = node[1], node[2]
        if base == ("root",) and name[:1].isupper():
            return None  # a type name, not an element
        if _is_context(base, ctx_type):
            if name in CHOICE_ELEMENTS:
                return frozenset({(name,)} | {(name + suffix,) for suffix in DATA_TYPE_SUFFIXES})
            return frozenset({(name,)})
        if (base[0] == "member" and _is_context(base[1], ctx_type) and not base[2][:1].isupper()
                and base[2] not in CHOICE_ELEMENTS and name not in CHOICE_ELEMENTS and not name[:1].isupper()):
            return frozenset({(base[2], name)})
        return _required_paths(base, ctx_type)
    return None


def _is_context(node, ctx_type: str | None) -> bool:
    return node == ("root",) or (
        node[0] == "member" and node[1] == ("root",)
        and (node[2] == ctx_type or node[2] in ("Resource", "DomainResource"))
    )


def required_keys(expr: str, context_type: str | None = None) -> frozenset[str] | None:
    """The top-level keys of :func:`required_paths`: e.g. ``Observation.value.ofType(Quantity)``
    needs ``valueQuantity`` (or ``value``) at the top level of an Observation."""
    paths = required_paths(expr, context_type)
    return None if paths is None else frozenset(p[0] for p in paths)


def required_paths(expr: str, context_type: str | None = None) -> frozenset[tuple[str, ...]] | None:
    """See :func:`_required_paths`: ``Observation.meta.tag`` needs ``("meta", "tag")``."""
    return _required_paths(_Parser(expr).parse(), context_type)


def compile_expression(expr: str, context_type: str | None = None) -> Compiled:
    """Compile a FHIRPath expression of the supported subset.

    ``context_type`` is the resource type the expression will be evaluated on; a leading
    ``context_type.`` (or ``Resource.``/``DomainResource.``) is then a no-op instead of a
    type filter.  Raises :class:`UnsupportedExpression` for anything else.

    >>> f = compile_expression("Observation.value.ofType(Quantity).value", "Observation")
    >>> obs = {"resourceType": "Observation", "valueQuantity": {"value": 5}}
    >>> f([obs], obs)
    [5]
    """
    return _compile(_Parser(expr).parse(), context_type)
