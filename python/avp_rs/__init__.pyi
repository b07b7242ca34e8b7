"""Type stubs of avp_rs (see __init__.py for the documentation)."""

from contextlib import AbstractContextManager
from os import PathLike
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from typing_extensions import Buffer

from . import conformance as conformance
from ._native import (
    AvpError as AvpError,
    InternalError as InternalError,
    Message as Message,
    PeerError as PeerError,
    StreamDecoder as StreamDecoder,
    UsageError as UsageError,
    crc32 as crc32,
    decode as decode,
    encode as encode,
    encode_kv as encode_kv,
    kv_layout as kv_layout,
    mac_sign as mac_sign,
    mac_verify as mac_verify,
    peek as peek,
    weights_digest as weights_digest,
)

def model_hash(config: Mapping[str, Any]) -> str: ...
def tokenizer_hash(path_or_vocab: Union[str, PathLike[str], Mapping[str, int], Any], threads: int = 0) -> str: ...
def identity(config: Mapping[str, Any], tokenizer_hash: str = "") -> dict: ...
def resolve(
    local: Mapping[str, Any],
    remote: Mapping[str, Any],
    local_vocab: Any = None,
    remote_vocab: Any = None,
    maps: Sequence[str] = (),
    local_weights_digest: Optional[str] = None,
    remote_weights_digest: Optional[str] = None,
) -> dict: ...
def kv_arrays(payload: Buffer, strict: bool = False, bfloat16: str = "uint16") -> Tuple[dict, List[Tuple[Any, Any]]]: ...
def install() -> None: ...
def uninstall() -> None: ...
def is_installed() -> bool: ...
def installed() -> AbstractContextManager[None]: ...
