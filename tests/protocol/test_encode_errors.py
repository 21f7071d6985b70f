"""An encode failure names the field that msgpack cannot carry (it said only "cannot encode")."""

from __future__ import annotations

import pytest
from isthmus.protocol import (
    ChatMessage,
    ErrorCode,
    GenerateRequest,
    ProtocolError,
    SamplingOptions,
    encode,
    validate,
)


@pytest.mark.parametrize(
    ("req", "path"),
    [
        (GenerateRequest(id="x", prompt="hi", sampling=SamplingOptions(max_tokens=10**30)),
         "sampling.max_tokens"),
        (GenerateRequest(id="x", prompt="hi", sampling=SamplingOptions(seed=-(10**40))), "sampling.seed"),
        (GenerateRequest(id="x", messages=[ChatMessage("user", "ok"), ChatMessage("user", "a\ud800")]),
         "messages[1].content"),
        (GenerateRequest(id="x", prompt="\udfff"), "prompt"),
    ],
)
def test_encode_errors_name_the_field(req: GenerateRequest, path: str) -> None:
    for fn in (encode, validate):
        with pytest.raises(ProtocolError) as err:
            fn(req)
        assert err.value.code == ErrorCode.INVALID_MESSAGE
        assert err.value.message.startswith(f"{path}: cannot encode"), err.value.message
