"""Read a TensorFlow checkpoint (OpenAI's model.ckpt.*) with NumPy and the standard library alone.

A checkpoint is two files. model.ckpt.data-00000-of-00001 holds the tensors' bytes back to back, raw
little-endian float32 for GPT-2. model.ckpt.index says where each tensor is: it is a table in
LevelDB's "SSTable" format, sorted by key, whose keys are the tensor names ("model/h0/attn/c_attn/w")
and whose values describe the tensors.

The index file, from its end:
- The footer, its last 48 bytes: two block handles (a handle is a varint offset and a varint size:
  first the metaindex block's, unused here, then the index block's), zero padding, and the magic
  number 0xdb4775248b80fb57 as a little-endian uint64.
- Blocks. A block is a run of entries, then the uint32 offsets of its "restart points" and their
  count. An entry is three varints (the length of the key it shares with the previous entry's key,
  the length of the rest of its key, the length of its value), the rest of the key, then the value:
  keys are prefix-compressed against the entry before, which restart points reset. After each block
  come 5 bytes that its handle does not count: a compression byte (0: none) and the masked crc32c of
  the block and that byte.
- The index block's entries point to the data blocks: their values are block handles. The data
  blocks' entries are the tensors: the empty key holds a header, every other key is a tensor's name
  and its value a BundleEntryProto.

A BundleEntryProto is a protocol buffer: field 1 the dtype (1 is float32), field 2 the shape (a
TensorShapeProto: repeated field 2, the dimensions, each with field 1, the size), field 3 the shard,
field 4 the offset of the tensor's bytes in the data file, field 5 their size, and field 6 (fixed32)
the masked crc32c of those bytes. A crc32c is "masked" as ((crc >> 15) | (crc << 17)) + 0xa282ead8,
modulo 2**32, so that the checksum of data holding checksums stays well distributed.
"""

import os
import struct

import numpy as np

FOOTER_SIZE = 48
MAGIC = 0xDB4775248B80FB57
BLOCK_TRAILER_SIZE = 5  # the compression byte and the masked crc32c after each block
FLOAT32 = 1  # TensorFlow's DT_FLOAT


class CheckpointError(OSError):
    """The checkpoint files are not what they should be: damaged, cut short, or not a checkpoint."""


def masked_crc32c(data):
    import crc32c

    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(data, position):
    """The unsigned varint at data[position:] (7 bits a byte, low bits first) and the position after it."""
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise CheckpointError("a number runs past the end of its block")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if byte < 0x80:
            return value, position


def protobuf_fields(data):
    """Yield (field number, value) of a protocol buffer message: an int for varint and fixed fields,
    bytes for length-delimited ones (strings and nested messages)."""
    position = 0
    while position < len(data):
        key, position = varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:  # varint
            value, position = varint(data, position)
        elif wire_type == 1:  # 64 bits
            value, position = int.from_bytes(data[position : position + 8], "little"), position + 8
        elif wire_type == 2:  # length-delimited
            length, position = varint(data, position)
            value, position = data[position : position + length], position + length
        elif wire_type == 5:  # 32 bits
            value, position = int.from_bytes(data[position : position + 4], "little"), position + 4
        else:
            raise CheckpointError(f"an index entry holds a protocol buffer field of unknown wire type {wire_type}")
        yield number, value


def block(index, handle):
    """The entries (key, value) of the block at handle = (offset, size), its checksum verified."""
    offset, size = handle
    contents = index[offset : offset + size + BLOCK_TRAILER_SIZE]
    if len(contents) != size + BLOCK_TRAILER_SIZE:
        raise CheckpointError("it is cut short")
    data, compression, crc = contents[:size], contents[size], int.from_bytes(contents[size + 1 :], "little")
    if masked_crc32c(data + bytes([compression])) != crc:
        raise CheckpointError(f"a block at offset {offset} fails its checksum")
    if compression != 0:
        raise CheckpointError(f"a block is compressed (type {compression}), which TensorFlow does not do")
    n_restarts = int.from_bytes(data[-4:], "little")
    end = len(data) - 4 * (n_restarts + 1)  # the entries end where the restart offsets begin
    entries, key, position = [], b"", 0
    while position < end:
        shared, position = varint(data, position)
        unshared, position = varint(data, position)
        value_length, position = varint(data, position)
        key = key[:shared] + data[position : position + unshared]
        position += unshared
        entries.append((key, data[position : position + value_length]))
        position += value_length
    return entries


def block_handle(data):
    offset, position = varint(data, 0)
    size, _ = varint(data, position)
    return offset, size


def read_index(index_path):
    """{tensor name: (shape, offset, size, masked crc32c)} of a checkpoint's index file."""
    with open(index_path, "rb") as f:
        index = f.read()
    name = os.path.basename(index_path)
    if len(index) < FOOTER_SIZE or struct.unpack("<Q", index[-8:])[0] != MAGIC:
        raise CheckpointError(f"{name} is not a checkpoint index (no magic number at its end)")
    footer = index[-FOOTER_SIZE:]
    _, position = varint(footer, 0)  # the metaindex block's handle (offset, size), unused
    _, position = varint(footer, position)
    index_handle = block_handle(footer[position:])
    tensors = {}
    try:
        for _, handle in block(index, index_handle):
            for key, value in block(index, block_handle(handle)):
                if key:  # the empty key holds the header
                    tensors[key.decode()] = tensor_entry(value)
    except CheckpointError as e:
        raise CheckpointError(f"{name} cannot be read: {e}") from None
    return tensors


def tensor_entry(value):
    """(shape, offset, size, masked crc32c) from a BundleEntryProto."""
    fields = {"dtype": 0, "shape": b"", "offset": 0, "size": 0, "crc32c": None}
    names = {1: "dtype", 2: "shape", 4: "offset", 5: "size", 6: "crc32c"}
    for number, field in protobuf_fields(value):
        if number in names:
            fields[names[number]] = field
    if fields["dtype"] != FLOAT32:
        raise CheckpointError(f"a tensor has dtype {fields['dtype']}, not float32")
    shape = tuple(
        size for _, dim in protobuf_fields(fields["shape"]) for number, size in protobuf_fields(dim) if number == 1
    )
    return shape, fields["offset"], fields["size"], fields["crc32c"]


def read_tensors(prefix):
    """Yield (name, float32 array) for each tensor of the checkpoint at prefix (".../model.ckpt"), one at
    a time, each checked against the size its shape implies and against its crc32c."""
    tensors = read_index(f"{prefix}.index")
    data_path = f"{prefix}.data-00000-of-00001"
    data_name = os.path.basename(data_path)
    with open(data_path, "rb") as f:
        for name, (shape, offset, size, crc) in tensors.items():
            if size != 4 * int(np.prod(shape)):
                raise CheckpointError(f"{name} has shape {shape} but {size} bytes in the index")
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise CheckpointError(f"{data_name} is cut short: {name} lies past its end")
            if crc is not None and masked_crc32c(data) != crc:
                raise CheckpointError(f"{name} in {data_name} fails its checksum: the file is damaged")
            yield name, np.frombuffer(data, dtype="<f4").reshape(shape)


def gpt2_tensors(prefix):
    """Yield (flat key, float32 array) for each tensor of OpenAI's GPT-2 checkpoint: the variable
    "model/h3/attn/c_attn/w" becomes the key "blocks.3.attn.c_attn.w" of the nested params (see
    utils.nest), and the weights of OpenAI's 1x1 convolutions, stored as [1, n_in, n_out], lose their 1."""
    for name, array in read_tensors(prefix):
        parts = name.removeprefix("model/").split("/")
        if parts[0].startswith("h") and parts[0][1:].isdigit():
            parts = ["blocks", parts[0][1:]] + parts[1:]
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        yield ".".join(parts), array
