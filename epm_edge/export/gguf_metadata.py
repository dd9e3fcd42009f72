"""`epm.*` keys in GGUF files: the provenance, cuts and verification scores epm-edge stamps into
the models it builds (read back by runtime.llamacpp). Tensors are copied byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import gguf

EPM_PREFIX = "epm."


def add_epm(w: gguf.GGUFWriter, key: str, value) -> None:
    key = key if key.startswith(EPM_PREFIX) else EPM_PREFIX + key
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, int):
        w.add_int64(key, value)
    else:
        w.add_string(key, str(value))


def set_metadata(path: Path, metadata: dict) -> None:
    """Rewrite a GGUF with `epm.*` keys added, replaced or (None) removed (the thresholds and verification scores
    are only known after verify). The tensors are copied byte for byte."""
    reader = gguf.GGUFReader(path)
    tmp = path.with_name(path.name + ".tmp")
    write_like(reader, tmp, metadata=metadata)
    del reader  # release the memory map before replacing the file
    os.replace(tmp, path)


def write_like(reader: gguf.GGUFReader, out: Path, tensors: list | None = None, metadata: dict | None = None) -> None:
    """Write `reader`'s metadata, with the `epm.*` keys of `metadata` added, replaced or (None) removed, and
    `tensors` (ReaderTensors, default the reader's own) byte for byte to `out`."""
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    new = {k if k.startswith(EPM_PREFIX) else EPM_PREFIX + k: v for k, v in (metadata or {}).items()}
    tensors = reader.tensors if tensors is None else tensors
    w = gguf.GGUFWriter(str(out), arch, endianess=reader.endianess)
    for field in reader.fields.values():
        # GGUF.* are virtual fields and general.architecture is written by the writer itself.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE or field.name in new:
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for key, value in new.items():
        if value is not None:  # None removes the key
            add_epm(w, key, value)
    for t in tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in tensors:
        w.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    w.close()


def read_metadata(path: Path) -> dict:
    """The `epm.*` keys of a GGUF file, without the prefix."""
    fields = gguf.GGUFReader(path).fields
    return {k[len(EPM_PREFIX):]: f.contents() for k, f in fields.items() if k.startswith(EPM_PREFIX)}
