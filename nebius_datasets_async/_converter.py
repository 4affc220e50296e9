"""The one cattrs converter of the library, with every hook registered in one place.

Strict where drift would hide bugs (a number is not a string), tolerant where the API is open
(new statuses, new column types, new fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._exceptions import ResponseValidationError
from ._models import ColumnSchema, ColumnType, Dataset, DatasetOrigin, DatasetStatus

__all__ = ["converter", "structure_dataset"]

_KNOWN_STATUSES: Mapping[str, DatasetStatus] = {s.value: s for s in DatasetStatus}


def _strict_str(value: Any, _type: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _type: Any) -> int:
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is float and value.is_integer():
        return int(value)  # 1760109124.0: pydantic-based servers accept and may send it
    raise TypeError(f"expected an integer, got {kind.__name__}")


def _status(value: Any, _type: Any) -> DatasetStatus:
    if type(value) is not str:
        raise TypeError(f"expected a status string, got {type(value).__name__}")
    return _KNOWN_STATUSES.get(value, DatasetStatus.UNKNOWN)


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def freeze_json(value: Any) -> Any:
    """A read-only deep copy of decoded JSON: objects become mappingproxies, arrays tuples."""
    kind = type(value)
    if kind is dict:
        if not value:
            return _EMPTY
        return MappingProxyType({k: freeze_json(v) for k, v in value.items()})
    if kind is list:
        return tuple(freeze_json(v) for v in value)
    return value


def _json_object(value: Any, _type: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return freeze_json(value)  # type: ignore[no-any-return]


def _column_type(value: Any, _type: Any) -> ColumnType:
    if not isinstance(value, dict):
        raise TypeError(f"expected a column type object, got {type(value).__name__}")
    name = value.get("name")
    if type(name) is not str:
        raise TypeError("a column type needs a string 'name'")
    item = value.get("item")
    extra = _EMPTY
    if len(value) > (2 if "item" in value else 1):
        extra = freeze_json({k: v for k, v in value.items() if k not in ("name", "item")})
    return ColumnType(
        name=name, item=None if item is None else _column_type(item, ColumnType), extra=extra
    )


def _origin(value: Any, _type: Any) -> DatasetOrigin | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"expected an origin object, got {type(value).__name__}")
    origin_type = value.get("type")
    if origin_type is not None and type(origin_type) is not str:
        raise TypeError("the origin's 'type' must be a string")
    extra = _EMPTY
    if len(value) > (1 if "type" in value else 0):
        extra = freeze_json({k: v for k, v in value.items() if k != "type"})
    return DatasetOrigin(type=origin_type, extra=extra)


def _optional_str(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise TypeError(f"expected a string or null, got {type(value).__name__}")


#: One shared object per simple column type (``{"name": "string"}``): most columns are simple.
_SIMPLE_TYPES: dict[str | tuple[str, str], ColumnType] = {}


def _column_fast(value: Any) -> ColumnSchema:
    if type(value) is not dict:
        raise TypeError("expected a column object")
    name = value["name"]
    if type(name) is not str:
        raise TypeError("a column needs a string 'name'")
    raw = value["type"]
    column_type = None
    if type(raw) is dict and type(raw.get("name")) is str:
        if len(raw) == 1:
            key: str | tuple[str, str] = raw["name"]
        else:  # one level of nesting, as `option` of a simple type: shared as well
            item = raw.get("item")
            item_name = item.get("name") if type(item) is dict and len(item) == 1 else None
            key = (raw["name"], item_name) if len(raw) == 2 and type(item_name) is str else ""
        if key:
            column_type = _SIMPLE_TYPES.get(key)
            if column_type is None:
                column_type = _column_type(raw, ColumnType)
                if len(_SIMPLE_TYPES) < 256:
                    _SIMPLE_TYPES[key] = column_type
    if column_type is None:
        column_type = _column_type(raw, ColumnType)
    return ColumnSchema(name=name, type=column_type)


def _dataset_fast(obj: Any, _type: Any) -> Dataset:
    """A ``Dataset`` from decoded JSON, written out by hand for speed: the same rules as the
    generated hook (which the detailed converter keeps, to explain a body this one refuses).
    """
    get = obj.get
    raw_status = obj["status"]
    schema = obj["schema"]
    if type(schema) is not list:
        raise TypeError("expected a list of columns")
    return Dataset(
        id=_strict_str(obj["id"], str),
        name=_strict_str(obj["name"], str),
        status=_status(raw_status, DatasetStatus),
        raw_status=raw_status,
        schema=tuple([_column_fast(c) for c in schema]),
        metadata=_json_object(obj["metadata"], dict),
        folder=_strict_str(obj["folder"], str),
        current_version=_optional_str(get("current_version")),
        created_at=_strict_int(obj["created_at"], int),
        error=_optional_str(get("error")),
        current_version_origin=_origin(get("current_version_origin"), DatasetOrigin),
        type=_strict_str(get("type", "dataset"), str),
        ai_project_id=_optional_str(get("ai_project_id")),
    )


def _build_converter(*, detailed: bool) -> cattrs.Converter:
    """The converter, with every hook. ``detailed`` makes errors name their paths; it is
    slower, so it is used only to explain a body the fast one refused.
    """
    conv = cattrs.Converter(detailed_validation=detailed, forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(DatasetStatus, _status)
    conv.register_structure_hook(ColumnType, _column_type)
    conv.register_structure_hook(ColumnSchema, make_dict_structure_fn(ColumnSchema, conv))

    column = conv.get_structure_hook(ColumnSchema)

    def schema(value: Any, _type: Any) -> tuple[ColumnSchema, ...]:
        if not isinstance(value, list):
            raise TypeError(f"expected a list of columns, got {type(value).__name__}")
        if detailed:  # cattrs' own loop names the index of a bad column
            return conv.structure(value, tuple[ColumnSchema, ...])
        return tuple([column(c, ColumnSchema) for c in value])

    if not detailed:
        conv.register_structure_hook(Dataset, _dataset_fast)
        return conv
    conv.register_structure_hook(
        Dataset,
        make_dict_structure_fn(
            Dataset,
            conv,
            raw_status=override(rename="status"),
            schema=override(struct_hook=schema),
            metadata=override(struct_hook=_json_object),
            current_version_origin=override(struct_hook=_origin),
        ),
    )
    return conv


converter = _build_converter(detailed=False)
_explainer = _build_converter(detailed=True)


def structure_dataset(obj: Any) -> Dataset:
    """Turn decoded JSON into a ``Dataset``; raise ``ResponseValidationError`` naming each problem
    with its path (``$.status``) if it does not fit the contract.
    """
    if not isinstance(obj, dict):
        raise ResponseValidationError(
            "response is not a Dataset", errors=(f"expected a JSON object @ $, got {_kind(obj)}",)
        )
    try:
        return _dataset_fast(obj, Dataset)  # the converter's own hook, without its dispatch
    except Exception:  # any hook's error: structure again, slowly, to say where and why
        pass
    try:
        return _explainer.structure(obj, Dataset)
    except Exception as exc:  # cattrs wraps every hook's error; never let one escape as is
        raise ResponseValidationError(
            "response is not a valid Dataset",
            errors=tuple(cattrs.transform_error(exc, format_exception=_describe)),
        ) from None


def _describe(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc).startswith(("expected", "a ", "the ")):
        return str(exc)
    return cattrs.v.format_exception(exc, _type)


def _kind(obj: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(obj), "a number")
