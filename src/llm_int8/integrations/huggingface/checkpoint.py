"""Reading Hugging Face checkpoints tensor by tensor, with errors that name the file and tensor.

A safetensors file is ``[u64 header length N][N bytes of JSON header][raw little-endian data]``;
the header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` with
offsets relative to the start of the data. ``SafetensorsFile`` parses and checks that header, then
reads row ranges of a tensor with plain ``readinto`` calls into a buffer it owns.

We read instead of memory-mapping on purpose: every page of a mapping that has been touched counts
in the process's resident set until the file is unmapped, so streaming a 1 GB shard through an
mmap leaves ~1 GB of RSS behind even though no tensor holds it. Reads go through the page cache
(which the kernel may drop at will) and only the rows asked for ever land in process memory.

``.bin`` pickles are opened with ``torch.load(weights_only=True)`` only: a checkpoint is data, and
unpickling arbitrary objects would execute code from the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

__all__ = [
    "CheckpointError",
    "check_config_json",
    "SAFETENSORS_DTYPES",
    "CheckpointShards",
    "SafetensorsFile",
    "TensorInfo",
]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

# A JSON header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100 * 2**20

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, or disagrees with the model's config."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range in the file."""

    name: str
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """One ``.safetensors`` file opened for reading; the header is validated on open.

    Use as a context manager. ``read(name)`` returns a whole tensor; ``read_rows(name, r0, r1)``
    returns rows ``r0:r1`` of dim 0 (contiguous in the file), the unit of streaming.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint file not found: {self.path}")
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        try:
            self.tensors = self._parse_header()
        except BaseException:
            self._file.close()
            raise

    def _parse_header(self) -> dict[str, TensorInfo]:
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{self.path}: {size} bytes, too short to be a safetensors file (truncated?)")
        header_len = int.from_bytes(head, "little")
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise CheckpointError(
                f"{self.path}: corrupt safetensors file: header length {header_len} does not fit the "
                f"file's {size} bytes"
            )
        try:
            header = json.loads(self._file.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.path}: corrupt safetensors header ({err})") from err
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        data_start = 8 + header_len
        data_size = size - data_start
        tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = SAFETENSORS_DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(f"{self.path}: tensor {name!r} has a corrupt header entry {entry!r}") from err
            expected = math.prod(shape) * dtype.itemsize
            if end - begin != expected or begin < 0:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} is {end - begin} bytes in the header but its shape "
                    f"{list(shape)} of {entry['dtype']} needs {expected}"
                )
            if end > data_size:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} ends at byte {data_start + end} but the file has only "
                    f"{size} bytes: the file is truncated"
                )
            tensors[name] = TensorInfo(name, self.path, dtype, shape, data_start + begin, data_start + end)
        self._check_layout(tensors, data_start, data_size)
        return tensors

    def _check_layout(self, tensors: dict[str, TensorInfo], data_start: int, data_size: int) -> None:
        """The byte ranges must tile the data section: no overlap (two tensors reading the same bytes
        would load garbage codes) and no hole, as the format requires and ``safetensors`` checks."""
        offset = 0
        for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
            begin = info.begin - data_start
            if begin < offset:
                raise CheckpointError(
                    f"{self.path}: tensor {info.name!r} starts at data byte {begin}, inside the previous tensor "
                    f"(which ends at {offset}): overlapping data_offsets, the header is corrupt"
                )
            if begin > offset:
                raise CheckpointError(
                    f"{self.path}: tensor {info.name!r} starts at data byte {begin}, but the previous tensor ends at "
                    f"{offset}: a hole in data_offsets, the header is corrupt"
                )
            offset = info.end - data_start
        if offset != data_size:
            raise CheckpointError(
                f"{self.path}: the tensors end at data byte {offset} but the data section has {data_size} bytes: "
                "the header does not describe the file (corrupt or truncated)"
            )

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def keys(self) -> list[str]:
        return list(self.tensors)

    def _read_bytes(self, info: TensorInfo, begin: int, nbytes: int, out: torch.Tensor) -> None:
        view = memoryview(out.view(torch.uint8).reshape(-1).numpy())
        got = os.preadv(self._file.fileno(), [view[:nbytes]], begin) if nbytes else 0
        if got != nbytes:
            raise CheckpointError(
                f"{self.path}: tensor {info.name!r}: read {got} of {nbytes} bytes: the file is truncated"
            )

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor ``name`` as a new CPU tensor in its stored dtype."""
        info = self.tensors[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        self._read_bytes(info, info.begin, info.nbytes, out)
        return out

    def read_rows(self, name: str, r0: int, r1: int, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``r0:r1`` of dim 0 of ``name``, in its stored dtype.

        With ``scratch`` (a uint8 buffer of at least the rows' bytes, reused across calls) the result
        is a view into it, valid until the next call; otherwise a new tensor.
        """
        info = self.tensors[name]
        shape = (r1 - r0, *info.shape[1:])
        row_bytes = math.prod(info.shape[1:]) * info.dtype.itemsize
        nbytes = (r1 - r0) * row_bytes
        if scratch is None:
            out = torch.empty(shape, dtype=info.dtype)
        else:
            out = scratch[:nbytes].view(info.dtype).view(shape)
        self._read_bytes(info, info.begin + r0 * row_bytes, nbytes, out)
        return out


class _PickleFile:
    """A ``pytorch_model.bin`` opened with ``weights_only=True`` (memory-mapped where possible)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                # legacy (pre-zip) torch.save format: no memory map, still weights_only
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a corrupt or unsafe pickle
            raise CheckpointError(
                f"{path}: cannot load with torch.load(weights_only=True): {err.__class__.__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}"
            ) from err
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not a state dict of tensors")
        self._state = state
        self.tensors = {
            k: TensorInfo(k, path, v.dtype, tuple(v.shape), 0, v.numel() * v.element_size()) for k, v in state.items()
        }

    def __enter__(self) -> _PickleFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._state = {}

    def keys(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> torch.Tensor:
        return self._state[name].clone()

    def read_rows(self, name: str, r0: int, r1: int, scratch: torch.Tensor | None = None) -> torch.Tensor:
        rows = self._state[name][r0:r1]
        if scratch is None:
            return rows.clone()
        return scratch[: rows.numel() * rows.element_size()].view(rows.dtype).view(rows.shape).copy_(rows)


def check_config_json(folder: str | os.PathLike) -> dict:
    """The model folder's ``config.json`` as a dict, checked before transformers reads it.

    transformers fails on some corruptions deep inside (a ``quantization_config`` that is a string
    raises ``AttributeError`` while it formats a log line); here each is a ``CheckpointError``
    naming the file and the key.
    """
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: not found: not a Hugging Face model folder") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a {type(config).__name__}, not a JSON object")
    qc = config.get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise CheckpointError(f"{path}: quantization_config is {qc!r}, not a JSON object")
    if isinstance(qc, dict) and "quant_method" in qc and not isinstance(qc["quant_method"], str):
        raise CheckpointError(f"{path}: quantization_config.quant_method is {qc['quant_method']!r}, not a name")
    return config


def _read_index(index_path: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index: tensor name -> a file name inside the index's folder.

    A file outside the folder (an absolute path, a ``..`` component) is refused: a checkpoint is
    data from elsewhere, and must not make us read an arbitrary file. Symlinked shards (the Hugging
    Face cache) are fine: only the name written in the index is checked.
    """
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path}: corrupt index ({err.__class__.__name__}: {err})") from err
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: corrupt index: weight_map is a {type(weight_map).__name__}, not a dict")
    for name, file in weight_map.items():
        if not isinstance(file, str) or not file:
            raise CheckpointError(f"{index_path}: tensor {name!r} is mapped to {file!r}, not a file name")
        parts = PurePosixPath(file.replace("\\", "/")).parts
        if parts[0] == "/" or Path(file).is_absolute() or ".." in parts:
            raise CheckpointError(
                f"{index_path}: tensor {name!r} is mapped to {file!r}, outside the checkpoint folder: refused"
            )
    return weight_map


class CheckpointShards:
    """The weight files of a local Hugging Face model folder, single-file or sharded with an index.

    Checks, on open, that every file the index names exists and that every tensor the index places
    in a file is in that file's header. Iterate with ``open_files()``, one file at a time.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.index: dict[str, str] | None = None
        for index_name, single_name in ((SAFE_INDEX, SAFE_WEIGHTS), (PT_INDEX, PT_WEIGHTS)):
            index_path = self.folder / index_name
            if index_path.is_file():
                self.index = _read_index(index_path)
                self.files = [self.folder / f for f in dict.fromkeys(sorted(self.index.values()))]
                self.index_path = index_path
                break
            if (self.folder / single_name).is_file():
                self.files = [self.folder / single_name]
                break
        else:
            raise CheckpointError(
                f"no weights in {self.folder}: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {PT_WEIGHTS} or {PT_INDEX}"
            )
        missing = [f for f in self.files if not f.is_file()]
        if missing:
            tensor = next(k for k, f in self.index.items() if self.folder / f == missing[0])
            raise CheckpointError(
                f"checkpoint shard {missing[0]} is missing (listed in {self.index_path.name} for tensor {tensor!r}"
                f"{f' and others; {len(missing) - 1} more shards are missing' if len(missing) > 1 else ''})"
            )

    @property
    def is_safetensors(self) -> bool:
        return self.files[0].suffix == ".safetensors"

    def open_files(self) -> Iterator[SafetensorsFile | _PickleFile]:
        """Yield each file opened (and closed after use), its contents checked against the index."""
        for path in self.files:
            handle = SafetensorsFile(path) if path.suffix == ".safetensors" else _PickleFile(path)
            with handle:
                if self.index is not None:
                    expected = [k for k, f in self.index.items() if f == path.name]
                    absent = [k for k in expected if k not in handle.tensors]
                    if absent:
                        raise CheckpointError(
                            f"{path}: tensor {absent[0]!r} is listed in {self.index_path.name} but is not in this "
                            f"shard ({len(absent)} such tensors)"
                        )
                yield handle

    def read_headers(self) -> dict[str, TensorInfo]:
        """Every tensor's ``TensorInfo``, by name, without reading any data (safetensors only)."""
        infos: dict[str, TensorInfo] = {}
        if not self.is_safetensors:
            for handle in self.open_files():
                infos.update(handle.tensors)
            return infos
        for path in self.files:
            with SafetensorsFile(path) as handle:
                infos.update(handle.tensors)
        return infos
