"""avp_rs: the Rust AVP codec, handshake and conformance runner for Python.

Native API (zero-copy, GIL released for large work):

- ``decode(buf, strict=False)`` / ``peek(buf)`` / ``encode(payload, **metadata)``
  / ``StreamDecoder``;
- ``kv_arrays(payload)``: KV-cache layers as numpy views of the payload;
- ``model_hash``, ``tokenizer_hash``, ``weights_digest``, ``identity``, ``resolve``;
- ``mac_sign`` / ``mac_verify``; ``crc32``;
- ``avp_rs.conformance.run``: the conformance runner;
- ``install()`` / ``installed()``: make the ``avp`` SDK 0.6.2 use all this.

Every error is an ``AvpError`` (``PeerError``: bad input; ``UsageError``:
bad call; ``InternalError``: our bug) with a stable ``.kind`` string, the
same as the ``avp`` CLI prints (e.g. ``"checksum_mismatch"``).
"""

from __future__ import annotations

import json as _json
import os as _os
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from ._native import (  # noqa: F401
    AvpError,
    InternalError,
    Message,
    PeerError,
    StreamDecoder,
    UsageError,
    crc32,
    decode,
    encode,
    encode_kv,
    kv_layout,
    mac_sign,
    mac_verify,
    peek,
    weights_digest,
)
from . import _native

__all__ = [
    "AvpError", "PeerError", "UsageError", "InternalError", "Message", "StreamDecoder",
    "decode", "peek", "encode", "encode_kv", "kv_layout", "kv_arrays", "crc32",
    "model_hash", "tokenizer_hash", "weights_digest", "identity", "resolve",
    "mac_sign", "mac_verify", "install", "uninstall", "installed", "is_installed",
]

_KV_HEADER_LEN = 17


def model_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of a model config (AVP-HASH-1).

    Equal to the SDK's ``compute_model_hash(config)`` for every config
    ``json.dumps`` accepts (big ints, floats, NaN and -0.0 included).
    """
    return _native.model_hash_json(_json.dumps(config).encode("utf-8"))


def tokenizer_hash(path_or_vocab: Union[str, "_os.PathLike[str]", Mapping[str, int], Any], threads: int = 0) -> str:
    """``tokenizer_hash`` (AVP-HASH-10) of a vocabulary.

    Accepts a path to a ``tokenizer.json`` (or a directory holding one), a
    ``{token: id}`` mapping, or an object with ``get_vocab()`` (a
    HuggingFace tokenizer), like the SDK's ``compute_tokenizer_hash``.
    Vocabularies of 32Ki tokens or more are hashed on up to ``threads``
    threads (0 = the available parallelism, at most 8; 1 = this thread
    only) with the GIL released; the hash never depends on the count.
    """
    if isinstance(path_or_vocab, (str, bytes, _os.PathLike)):
        return _native.tokenizer_hash_file(_os.fsdecode(path_or_vocab), threads)
    if hasattr(path_or_vocab, "get_vocab"):
        vocab = path_or_vocab.get_vocab()
    else:
        vocab = path_or_vocab if type(path_or_vocab) is dict else dict(path_or_vocab)
    # {str: int} (every real vocabulary) is read directly; anything else
    # takes the exact json.dumps route.
    direct = _native.tokenizer_hash_dict(vocab, threads)
    if direct is not None:
        return direct
    return _native.tokenizer_hash_json(_json.dumps(vocab).encode("utf-8"), threads)


def identity(config: Mapping[str, Any], tokenizer_hash: str = "") -> dict:
    """The model identity (AVP-HS-1) the SDK's ``extract_model_identity``
    derives from a config dict, as a dict of the wire fields."""
    text = _native.identity_json(_json.dumps(config).encode("utf-8"), tokenizer_hash)
    return _json.loads(text)


def resolve(
    local: Mapping[str, Any],
    remote: Mapping[str, Any],
    local_vocab: Any = None,
    remote_vocab: Any = None,
    maps: Sequence[str] = (),
    local_weights_digest: Optional[str] = None,
    remote_weights_digest: Optional[str] = None,
) -> dict:
    """Which mode two models can talk in: the SDK's six resolution rules
    (AVP-HS-5..10) and the weights-digest extension (AVP-HS-22).

    ``local``/``remote`` are identity dicts (as ``identity()`` returns),
    the vocabularies ``{token: id}`` dicts (rule 5), ``maps`` the available
    map files or map ids (rule 4). Returns ``mode``, ``resolution_path``,
    ``avp_map_id`` and ``weights_mismatch``.
    """
    dumps = lambda v: None if v is None else _json.dumps(v).encode("utf-8")  # noqa: E731
    mode, path, map_id, mismatch = _native.resolve_json(
        dumps(local), dumps(remote), dumps(local_vocab), dumps(remote_vocab), list(maps),
        local_weights_digest, remote_weights_digest)
    return {"mode": mode, "resolution_path": path, "avp_map_id": map_id, "weights_mismatch": mismatch}


def kv_arrays(payload: Any, strict: bool = False, bfloat16: str = "uint16") -> Tuple[dict, List[Tuple[Any, Any]]]:
    """The layers of a KV-cache payload as numpy arrays ``[heads, seq, dim]``.

    float32 and float16 layers are read-only views of ``payload`` (no copy;
    they keep it alive). bfloat16 has no numpy dtype: with
    ``bfloat16="uint16"`` (default) the layers are zero-copy ``uint16`` views
    of the raw bits (``torch.from_numpy(a).view(torch.bfloat16)`` restores
    them); with ``bfloat16="float32"`` they are converted (exactly) to new
    float32 arrays. An unknown dtype byte raises ``PeerError`` with kind
    ``unknown_enum``: it is never read as float16.
    """
    import numpy as np

    layers_n, heads, dim, seq, dtype, tensor_bytes, warnings = kv_layout(payload, strict)
    header = {
        "num_layers": layers_n, "num_kv_heads": heads, "head_dim": dim,
        "seq_len": seq, "dtype": dtype, "warnings": warnings,
    }
    if dtype == "bfloat16":
        np_dtype = np.uint16
    else:
        np_dtype = np.dtype(dtype)
    count = heads * seq * dim
    shape = (heads, seq, dim)
    out = []
    view = memoryview(payload)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    for i in range(layers_n):
        base = _KV_HEADER_LEN + 2 * i * tensor_bytes
        k = np.frombuffer(view, dtype=np_dtype, count=count, offset=base).reshape(shape)
        v = np.frombuffer(view, dtype=np_dtype, count=count, offset=base + tensor_bytes).reshape(shape)
        if dtype == "bfloat16" and bfloat16 == "float32":
            k = (k.astype(np.uint32) << 16).view(np.float32)
            v = (v.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "bfloat16" and bfloat16 != "uint16":
            raise UsageError(f"bfloat16={bfloat16!r}: expected 'uint16' or 'float32'")
        out.append((k, v))
    return header, out


from ._sdk import install, installed, is_installed, uninstall  # noqa: E402,F401
from . import conformance  # noqa: E402,F401
