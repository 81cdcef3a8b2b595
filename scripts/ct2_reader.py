"""Reader for CTranslate2's binary model format (``model.bin``).

Layout (little-endian, binary versions 1..6; Whisper models use >= 5):

* ``u32`` binary version
* version >= 2: spec name (string), ``u32`` spec revision
* ``u32`` variable count, then per variable: name (string), ``u8`` rank,
  ``rank`` x ``u32`` dims, then for version >= 4 ``u8`` dtype id and
  ``u32`` byte count (older versions: ``u8`` item size and ``u32`` item count),
  followed by the raw bytes
* version >= 3: ``u32`` alias count, then per alias: alias name, target name

A string is a ``u16`` length (including a trailing NUL) followed by the bytes.
Only the standard library and numpy are needed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Order of the DataType enum in CTranslate2's include/ctranslate2/types.h.
_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_LEGACY_ITEM_DTYPES: dict[int, str] = {4: "float32", 2: "int16", 1: "int8"}


@dataclass
class Ct2Model:
    """The variables and aliases of one ``model.bin``."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        """True if ``name`` is a variable or an alias of one."""
        return name in self.variables or name in self.aliases

    def get(self, name: str) -> np.ndarray:
        """Return a variable by name, following aliases."""
        seen: set[str] = set()
        while name in self.aliases:
            if name in seen:
                raise ValueError(f"alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        try:
            return self.variables[name]
        except KeyError:
            raise KeyError(f"variable {name!r} not in model.bin") from None

    def f32(self, name: str) -> np.ndarray:
        """Return a floating-point variable converted to float32."""
        array = self.get(name)
        if array.dtype.kind != "f":
            raise TypeError(f"{name!r} has dtype {array.dtype}, expected floating point")
        return np.ascontiguousarray(array, dtype=np.float32)

    def scalar(self, name: str) -> int | float:
        """Return a scalar (rank-0 or single element) variable as a Python number."""
        return self.get(name).reshape(-1)[0].item()


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("truncated model.bin")
    return data


def _unpack(stream: BinaryIO, fmt: str) -> int:
    return struct.unpack("<" + fmt, _read_exact(stream, struct.calcsize("<" + fmt)))[0]


def _read_string(stream: BinaryIO) -> str:
    length = _unpack(stream, "H")
    return _read_exact(stream, length).rstrip(b"\0").decode("utf-8")


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _read_variable(stream: BinaryIO, version: int) -> tuple[str, np.ndarray]:
    name = _read_string(stream)
    rank = _unpack(stream, "B")
    shape = tuple(_unpack(stream, "I") for _ in range(rank))
    if version >= 4:
        dtype = _DTYPES[_unpack(stream, "B")]
        num_bytes = _unpack(stream, "I")
    else:
        item_size = _unpack(stream, "B")
        dtype = _LEGACY_ITEM_DTYPES[item_size]
        num_bytes = _unpack(stream, "I") * item_size
    raw = _read_exact(stream, num_bytes)
    if dtype == "bfloat16":
        array = _bfloat16_to_float32(np.frombuffer(raw, dtype="<u2"))
    else:
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    expected = int(np.prod(shape)) if shape else 1
    if array.size != expected:
        raise ValueError(f"{name!r}: {array.size} items for shape {shape}")
    return name, array.reshape(shape)


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` file (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    with path.open("rb") as stream:
        version = _unpack(stream, "I")
        if not 1 <= version <= 6:
            raise ValueError(f"unsupported CTranslate2 binary version {version}")
        spec, revision = "", 1
        if version >= 2:
            spec = _read_string(stream)
            revision = _unpack(stream, "I")
        model = Ct2Model(version, spec, revision)
        for _ in range(_unpack(stream, "I")):
            name, array = _read_variable(stream, version)
            model.variables[name] = array
        if version >= 3:
            for _ in range(_unpack(stream, "I")):
                alias = _read_string(stream)
                model.aliases[alias] = _read_string(stream)
    return model


if __name__ == "__main__":  # pragma: no cover - debugging aid
    import sys

    loaded = read_ct2_model(sys.argv[1])
    print(f"version={loaded.binary_version} spec={loaded.spec} revision={loaded.revision}")
    for var_name, value in loaded.variables.items():
        print(f"{var_name} {value.dtype} {list(value.shape)}")
    for alias_name, target in loaded.aliases.items():
        print(f"alias {alias_name} -> {target}")
