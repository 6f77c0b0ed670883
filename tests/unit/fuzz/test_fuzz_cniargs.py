"""Fuzzing CNI_ARGS: every string is the known keys' values or a code-4 error naming
CNI_ARGS; a well-formed string round-trips."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_plugin.cni import cniargs
from node_plugin.cni.errors import INVALID_ENV, CniError
from tests.unit.fuzz.budget import budget

pytestmark = pytest.mark.fuzz

KNOWN = ("MAC", "IP", "K8S_POD_NAME")
text = st.one_of(st.text(max_size=60), st.binary(max_size=60).map(os.fsdecode))


@budget(500)
@given(raw=text)
def test_any_string_is_values_or_a_cni_args_error(raw: str) -> None:
    try:
        parsed = cniargs.parse(raw, KNOWN)
    except CniError as err:
        assert err.code == INVALID_ENV and err.msg.startswith("CNI_ARGS")
        return
    assert set(parsed) <= set(KNOWN)


value = st.text(alphabet=st.characters(blacklist_characters=";"), max_size=20)


@budget(300)
@given(pairs=st.dictionaries(st.sampled_from(KNOWN), value, max_size=3), ignore=st.booleans())
def test_well_formed_pairs_round_trip(pairs: dict[str, str], ignore: bool) -> None:
    items = [f"{k}={v}" for k, v in pairs.items()] + (["IgnoreUnknown=1", "X=y"] if ignore else [])
    assert cniargs.parse(";".join(items), KNOWN) == pairs
