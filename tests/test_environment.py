"""The project's own environment works for what its users run in it (the pins in
`constraints.txt` agree with one another)."""

from __future__ import annotations

import pytest
from ens.utils import normalize_name


@pytest.mark.parametrize(
    ("name", "normal"),
    [("Vitalik.ETH", "vitalik.eth"), ("🚀.eth", "🚀.eth"), ("Ünïcode.eth", "ünïcode.eth")],
)
def test_web3_normalises_ens_names(name: str, normal: str) -> None:
    # pyunormalize 18 broke web3 8's ENSIP-15 normalisation: every name raised.
    assert normalize_name(name) == normal
