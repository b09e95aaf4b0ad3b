"""An idempotency key's body hash is stored with its operation and compared on every replay, so the way it
is computed must never change: the fast path (orjson) must give exactly the hash of the original
definition (the standard library's canonical JSON), for any body, ASCII or not."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gifting.plans import Plan

# Mostly the characters JSON encoders treat specially: control characters, quotes, DEL, non-ASCII.
texts = st.text(st.characters(max_codepoint=0x2030), max_size=20) | st.text(max_size=20)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), texts)
bodies = st.dictionaries(
    texts,
    st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_size=6,
)


def original_hash(kind: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind, **body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@given(kind=st.sampled_from(["gift", "tip", "course"]), body=bodies)
def test_body_hash_matches_the_original_definition(kind: str, body: dict[str, Any]) -> None:
    body.pop("kind", None)
    plan = Plan(key="k", kind=kind, body=body, actor="a")
    assert plan.body_hash() == original_hash(kind, body)


def test_non_ascii_and_control_characters_hash_as_before() -> None:
    for text in ("café", "💰 tip", "tab\there", "nul\x00", "del\x7f", 'quote"slash\\/', "\u2028"):
        plan = Plan(key="k", kind="tip", body={"message": text, "coins": 5}, actor="a")
        assert plan.body_hash() == original_hash("tip", {"message": text, "coins": 5}), text
