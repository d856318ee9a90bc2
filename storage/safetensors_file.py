"""Read a safetensors file (HuggingFace's model.safetensors) with NumPy alone.

The format: 8 bytes, the length of the header as a little-endian uint64; the header, JSON, whose keys
are the tensors' names, each with its "dtype" ("F32", "F16", "BF16", ...), "shape" and "data_offsets"
[begin, end], counted from the end of the header (an optional "__metadata__" key holds strings); then
the tensors' raw little-endian bytes. No pickle, nothing to run: reading it is reading an array.

Every tensor comes out as float32. BF16 is the top half of a float32's bits, so it widens exactly by
shifting its 16 bits up; F16 widens exactly too.
"""

import json
import os

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}  # BF16 read as its bits
MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(OSError):
    """The file is not a safetensors file, or one that disagrees with itself: cut short, offsets
    outside the data, a size that is not its shape's."""


def read_header(path):
    """({tensor name: (dtype, shape, begin, end)}, where the data starts), every entry checked against
    the file: its dtype known, its byte range inside the data and as long as its shape needs."""
    name, size = path, os.path.getsize(path)
    header, header_length = header_object(path)
    data_start, data_size = 8 + header_length, size - 8 - header_length
    tensors = {}
    for tensor, entry in header.items():
        if tensor == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{name}: the entry of {tensor} lacks its dtype, shape or data_offsets") from None
        if dtype not in DTYPES:
            raise SafetensorsError(f"{name}: {tensor} is {dtype}; F32, F16 and BF16 can be read")
        if not 0 <= begin <= end <= data_size:
            raise SafetensorsError(
                f"{name}: {tensor} lies at bytes {begin} to {end}, outside the {data_size} bytes of data (cut short?)"
            )
        if end - begin != DTYPES[dtype].itemsize * int(np.prod(shape)):
            raise SafetensorsError(f"{name}: {tensor} has shape {shape} of {dtype} but {end - begin} bytes")
        tensors[tensor] = (dtype, shape, begin, end)
    return tensors, data_start


def header_object(path):
    """The header's JSON object, and its length in bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{path} is cut short: {size} bytes, not even a header length")
        header_length = int.from_bytes(prefix, "little")
        if header_length > min(size - 8, MAX_HEADER_BYTES):
            raise SafetensorsError(
                f"{path} is not a safetensors file, or is cut short: a header of {header_length} bytes announced in {size}"
            )
        try:
            header = json.loads(f.read(header_length))
        except (ValueError, UnicodeDecodeError):
            raise SafetensorsError(f"{path} has a header that is not JSON: not a safetensors file") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} has a header that is not a JSON object")
    return header, header_length


def read_metadata(path):
    """The header's "__metadata__": {key: string}."""
    metadata = header_object(path)[0].get("__metadata__", {})
    return metadata if isinstance(metadata, dict) else {}


def read_tensors(path):
    """Yield (name, float32 array) for each tensor of the file, read through a memory map."""
    tensors, data_start = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for tensor, (dtype, shape, begin, end) in tensors.items():
        raw = data[data_start + begin : data_start + end].view(DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":
            yield tensor, (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            yield tensor, raw.astype(np.float32)


def write(path, tensors, metadata=None):
    """Write {name: array} as a safetensors file of F32 tensors, C order, the data 8-byte aligned."""
    header, offset = {}, 0
    arrays = {name: np.ascontiguousarray(array, dtype="<f4") for name, array in tensors.items()}
    for name, array in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = {key: str(value) for key, value in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts on an 8-byte boundary
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        for array in arrays.values():
            f.write(array.tobytes())
        f.flush()
        os.fsync(f.fileno())
