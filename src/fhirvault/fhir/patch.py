"""PATCH documents applied to a resource: JSON Patch, JSON Merge Patch and FHIRPath Patch (R4 http.html#patch)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import jsonpatch
import jsonpointer
from fhirpathpy import evaluate as fhirpath_evaluate
from fhirpathpy.models import models as fhirpath_models

from fhirvault import jsoncodec
from fhirvault.fhir.r4 import is_repeating

JSON_PATCH = "json-patch"  # RFC 6902, application/json-patch+json
MERGE_PATCH = "merge-patch"  # RFC 7386, application/merge-patch+json (and a plain JSON object)
FHIRPATH_PATCH = "fhirpath-patch"  # R4 fhirpatch.html, a Parameters resource

_R4_MODEL = fhirpath_models["r4"]
_ROOT = ""  # the key of the stand-in container that holds the resource itself
_STEP = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\[(\d+)\])?$")


class PatchError(ValueError):
    """A patch that cannot be used.

    `malformed` is True when the document itself is wrong (HTTP 400) and False when it is well formed
    but cannot be applied to this resource, e.g. a failed `test` or a path that matches nothing (422).
    """

    def __init__(self, message: str, *, malformed: bool, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.malformed = malformed
        self.expression = expression


@dataclass(frozen=True)
class PatchDocument:
    """A parsed PATCH body: `kind` is JSON_PATCH, MERGE_PATCH or FHIRPATH_PATCH; `body` its JSON."""

    kind: str
    body: Any


def apply_patch(resource: dict[str, Any], document: PatchDocument) -> dict[str, Any]:
    """The resource with the patch applied, as a new dict (the argument is left as it was).

    Raises PatchError. Whether the result is a valid resource is for the caller's update path to judge.
    """
    if document.kind == JSON_PATCH:
        return apply_json_patch(resource, document.body)
    if document.kind == MERGE_PATCH:
        if not isinstance(document.body, dict):
            raise PatchError("A JSON Merge Patch on a resource must be a JSON object", malformed=True)
        merged = merge_patch(resource, document.body)
        assert isinstance(merged, dict)
        return merged
    if document.kind == FHIRPATH_PATCH:
        return apply_fhirpath_patch(resource, document.body)
    raise PatchError(f"Unknown patch kind {document.kind!r}", malformed=True)


# -- JSON Patch (RFC 6902) -----------------------------------------------------------------------------
def apply_json_patch(resource: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 operations (add, remove, replace, move, copy, test) applied with the `jsonpatch` library."""
    if not isinstance(operations, list):
        raise PatchError("A JSON Patch must be a JSON array of operations", malformed=True)
    for i, op in enumerate(operations):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or not isinstance(op.get("path"), str):
            raise PatchError(f"JSON Patch operation {i} needs an 'op' and a 'path'", malformed=True)
    try:
        patch = jsonpatch.JsonPatch(operations)
        result = patch.apply(resource, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(_test_failure(resource, operations, exc), malformed=False) from None
    except jsonpatch.InvalidJsonPatch as exc:
        raise PatchError(f"The JSON Patch is not valid: {exc}", malformed=True) from None
    except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException) as exc:
        raise PatchError(f"The JSON Patch does not apply to this resource: {exc}", malformed=False) from None
    if not isinstance(result, dict):
        raise PatchError("The JSON Patch replaced the whole resource with something that is not an object",
                         malformed=False)
    return result


def _shown(value: Any) -> str:
    """`value` as JSON text (a decimal as written), cut to a readable length."""
    text = jsoncodec.dumps(value).decode("utf-8")
    return text if len(text) <= 80 else text[:77] + "..."


def _test_failure(resource: dict[str, Any], operations: list[Any], exc: Any) -> str:
    """What a failed `test` operation found, in JSON terms (the library's message shows Python's
    `True (<class 'bool'>)`). The value is looked up again in the patched copy the failure came from:
    the operations before the failed one are replayed on a copy."""
    op = getattr(exc, "op", None)
    operation = getattr(op, "operation", None)
    index = next((i for i, o in enumerate(operations) if o is operation), None)
    if index is None or not isinstance(operation, dict):
        return f"JSON Patch test failed: {exc}"
    path = str(operation.get("path"))  # checked to be a string before the patch was applied
    try:
        before = jsonpatch.JsonPatch(operations[:index]).apply(resource, in_place=False)
        found = jsonpointer.resolve_pointer(before, path)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
        return f"JSON Patch test failed (operation {index}): {path} is not in the resource"
    return (f"JSON Patch test failed (operation {index}): {path} is {_shown(found)}, not "
            f"{_shown(operation.get('value'))}")


# -- JSON Merge Patch (RFC 7386) -----------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 section 2, MergePatch(Target, Patch): objects merge member by member, null removes."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# -- FHIRPath Patch (R4 fhirpatch.html) ----------------------------------------------------------------
@dataclass
class _Location:
    """Where one FHIRPath result lives: `container[key]`, or `container[key][index]` in a list.

    `name` is the element's FHIRPath name (`value`), `key` its JSON name (`valueQuantity` for a choice);
    `type_path` the element's type or definition path as fhirpathpy names it (HumanName, Patient.contact).
    """

    container: dict[str, Any]
    name: str
    key: str
    index: int | None
    type_path: str

    def get(self) -> Any:
        value = self.container[self.key]
        return value if self.index is None else value[self.index]


def apply_fhirpath_patch(resource: dict[str, Any], parameters: Any) -> dict[str, Any]:
    """The operations of a FHIRPath Patch `Parameters` resource applied in order.

    Types add, insert, delete, replace and move; `path` is evaluated with fhirpathpy on the resource as
    patched so far. Except for delete (no match: nothing to do), a path must match exactly one element;
    insert and move name one whole list. Objects and lists left empty are removed. Raises PatchError.
    """
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise PatchError("A FHIRPath Patch is a Parameters resource", malformed=True)
    operations = parameters.get("parameter")
    if not isinstance(operations, list) or not operations:
        raise PatchError("The FHIRPath Patch has no 'operation' parameter", malformed=True)
    result = copy.deepcopy(resource)
    for i, param in enumerate(operations):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(param, dict) or param.get("name") != "operation":
            raise PatchError(f"{where} must be named 'operation'", malformed=True, expression=where)
        _apply_operation(result, _parts(param, where), where)
        _prune_empty(result)
    return result


def _parts(param: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    parts: dict[str, dict[str, Any]] = {}
    for part in param.get("part") or []:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise PatchError(f"{where}.part needs a name on every part", malformed=True, expression=where)
        if part["name"] in parts:
            raise PatchError(f"{where} has the part '{part['name']}' twice", malformed=True, expression=where)
        parts[part["name"]] = part
    return parts


def _primitive(parts: dict[str, dict[str, Any]], name: str, kind: type, where: str) -> Any:
    part = parts.get(name)
    if part is None:
        raise PatchError(f"{where} needs the part '{name}'", malformed=True, expression=where)
    values = [v for k, v in part.items() if k.startswith("value")]
    if len(values) != 1 or not isinstance(values[0], kind) or isinstance(values[0], bool) != (kind is bool):
        raise PatchError(f"{where}: part '{name}' needs a {kind.__name__} value", malformed=True, expression=where)
    return values[0]


def _apply_operation(resource: dict[str, Any], parts: dict[str, dict[str, Any]], where: str) -> None:
    op = _primitive(parts, "type", str, where)
    if op not in ("add", "insert", "delete", "replace", "move"):
        raise PatchError(f"{where}: operation type '{op}' is not one of add, insert, delete, replace, move",
                         malformed=True, expression=where)
    path = _primitive(parts, "path", str, where)
    found = _locate(resource, path, where)
    if op == "delete":
        if len(found) > 1:
            raise PatchError(f"{where}: delete path '{path}' matches {len(found)} elements; it must match one",
                             malformed=False, expression=where)
        for loc in found:
            _not_root(loc, op, where)
            if loc.index is None:
                del loc.container[loc.key]
            else:
                del loc.container[loc.key][loc.index]
    elif op in ("add", "replace"):
        if len(found) != 1:
            raise PatchError(f"{where}: path '{path}' matches {len(found)} elements; it must match exactly one",
                             malformed=False, expression=where)
        if op == "add":
            _add(found[0].get(), found[0].type_path, path, parts, where)
        else:
            _not_root(found[0], op, where)
            _replace(found[0], parts, where)
    else:
        items = _collection(found, path, where)
        if op == "insert":
            index = _primitive(parts, "index", int, where)
            _check_index(index, len(items) + 1, "index", where)
            value, _ = _value(parts, where, found[0].type_path)
            items.insert(index, value)
        else:
            source = _primitive(parts, "source", int, where)
            destination = _primitive(parts, "destination", int, where)
            _check_index(source, len(items), "source", where)
            _check_index(destination, len(items), "destination", where)
            items.insert(destination, items.pop(source))


def _not_root(loc: _Location, op: str, where: str) -> None:
    if loc.key == _ROOT:
        raise PatchError(f"{where}: {op} cannot act on the whole resource", malformed=False, expression=where)


def _check_index(value: int, limit: int, name: str, where: str) -> None:
    if not 0 <= value < limit:
        raise PatchError(f"{where}: {name} {value} is outside 0..{limit - 1}", malformed=False, expression=where)


def _locate(resource: dict[str, Any], path: str, where: str) -> list[_Location]:
    """The locations of what `path` selects; the resource itself is the one key of a stand-in container."""
    try:
        nodes = fhirpath_evaluate(resource, path, {}, _R4_MODEL, {"returnRawData": True})
    except Exception as exc:  # fhirpathpy raises plain Exceptions for syntax errors
        raise PatchError(f"{where}: path '{path}' is not a FHIRPath expression this server can evaluate: {exc}",
                         malformed=True, expression=where) from None
    out: list[_Location] = []
    for node in nodes:
        prop = getattr(node, "propName", "missing")
        if prop is None and getattr(node, "data", None) is resource:
            out.append(_Location({_ROOT: resource}, _ROOT, _ROOT, None, resource["resourceType"]))
            continue
        if not isinstance(prop, str):
            raise PatchError(f"{where}: path '{path}' selects values, not elements of the resource",
                             malformed=False, expression=where)
        out.append(_walk(resource, prop, str(getattr(node, "path", "")), path, where))
    return out


def _walk(resource: dict[str, Any], prop: str, type_path: str, path: str, where: str) -> _Location:
    """Follows fhirpathpy's concrete path of a result (`Patient.name[0].given[1]`) into the JSON."""
    steps = prop.split(".")[1:]
    container: Any = resource
    for n, step in enumerate(steps):
        m = _STEP.match(step)
        if m is None or not isinstance(container, dict):
            break
        key = _actual_key(container, m.group(1))
        index = int(m.group(2)) if m.group(2) is not None else None
        if n == len(steps) - 1:
            return _Location(container, m.group(1), key, index, type_path)
        container = container[key] if index is None else container[key][index]
    raise PatchError(f"{where}: path '{path}' selects something this server cannot change in place",
                     malformed=False, expression=where)


def _actual_key(container: dict[str, Any], name: str) -> str:
    """`value` -> `valueQuantity` for choice elements, which FHIRPath names without their type."""
    if name in container:
        return name
    for key in container:
        if key.startswith(name) and key[len(name):len(name) + 1].isupper():
            return key
    return name


def _collection(found: list[_Location], path: str, where: str) -> list[Any]:
    """The one whole list that `found` are the items of (insert and move name a collection)."""
    lists = {id(loc.container[loc.key]) for loc in found if loc.index is not None}
    if not found or len(lists) != 1 or len(found) != len(found[0].container[found[0].key]):
        raise PatchError(f"{where}: path '{path}' must select one whole, existing list "
                         f"(it selects {len(found)} elements)", malformed=False, expression=where)
    items: list[Any] = found[0].container[found[0].key]
    return items


def _with_type(name: str, value_type: str) -> str:
    return name + value_type[0].upper() + value_type[1:]


def _add(element: Any, owner_type: str, path: str, parts: dict[str, dict[str, Any]], where: str) -> None:
    """add: the named child goes into the one element at `path`; appended when the child repeats."""
    name = _primitive(parts, "name", str, where)
    if not isinstance(element, dict):
        raise PatchError(f"{where}: path '{path}' is a primitive value; add needs an element with children",
                         malformed=False, expression=where)
    child_path = f"{owner_type}.{name}"
    value, value_type = _value(parts, where, child_path)
    key = _with_type(name, value_type) if child_path in _R4_MODEL["choiceTypePaths"] and value_type else name
    if is_repeating(child_path):
        existing = element.setdefault(key, [])
        if not isinstance(existing, list):
            raise PatchError(f"{where}: '{key}' at '{path}' is not a list", malformed=False, expression=where)
        existing.append(value)
    elif key in element:
        raise PatchError(f"{where}: '{key}' already exists at '{path}'; use replace", malformed=False,
                         expression=where)
    else:
        element[key] = value


def _replace(target: _Location, parts: dict[str, dict[str, Any]], where: str) -> None:
    value, value_type = _value(parts, where, target.type_path)
    if target.index is not None:
        target.container[target.key][target.index] = value
    elif target.key != target.name and value_type:
        # A choice element may change its type: valueQuantity replaced by a valueString.
        del target.container[target.key]
        target.container[_with_type(target.name, value_type)] = value
    else:
        target.container[target.key] = value


def _value(parts: dict[str, dict[str, Any]], where: str, element_path: str) -> tuple[Any, str]:
    """The `value` part as JSON, and its datatype name when given as value[x] ('' otherwise)."""
    part = parts.get("value")
    if part is None:
        raise PatchError(f"{where} needs a 'value' part", malformed=True, expression=where)
    return _part_value(part, where, element_path)


def _part_value(part: dict[str, Any], where: str, element_path: str) -> tuple[Any, str]:
    typed = [(k[len("value"):], v) for k, v in part.items() if k.startswith("value")]
    if len(typed) == 1:
        return copy.deepcopy(typed[0][1]), typed[0][0]
    if "resource" in part:
        return copy.deepcopy(part["resource"]), ""
    children = part.get("part")
    if isinstance(children, list) and children:
        # A complex value given as parts, one per child element (R4 fhirpatch.html, "value").
        out: dict[str, Any] = {}
        for child in children:
            if not isinstance(child, dict) or not isinstance(child.get("name"), str):
                raise PatchError(f"{where}: every part of a value needs a name", malformed=True, expression=where)
            name = child["name"]
            value, _ = _part_value(child, where, f"{element_path}.{name}")
            if name in out or is_repeating(f"{element_path}.{name}"):
                existing = out.setdefault(name, [])
                existing.append(value)
            else:
                out[name] = value
        return out, ""
    raise PatchError(f"{where}: the 'value' part needs a value[x], a resource or parts", malformed=True,
                     expression=where)


def _prune_empty(node: Any) -> bool:
    """Removes objects and lists left empty by a patch (R4 JSON has none); True when `node` is empty."""
    if isinstance(node, dict):
        for key in [k for k, v in node.items() if _prune_empty(v)]:
            del node[key]
        return not node
    if isinstance(node, list):
        node[:] = [v for v in node if not _prune_empty(v)]
        return not node
    return False
