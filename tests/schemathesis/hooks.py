"""Checks for the schemathesis run against `fleetledger serve` (scripts/schemathesis).

Besides schemathesis' own (no 5xx), every answer must be JSON, and no GraphQL error may be
INTERNAL: a request the server cannot handle must get a clear error with a code of its own.
"""

import schemathesis


@schemathesis.check
def no_internal_error(response, case):
    if response.status_code >= 500:
        raise AssertionError(f"HTTP {response.status_code}: {response.text[:500]}")
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"not JSON: {response.text[:200]}")
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        if code in (None, "INTERNAL"):
            raise AssertionError(f"error with code {code!r}: {error}")


# The API's own scalars: well-formed values mostly, and now and then any text at all (which
# must be refused with a code, never answered INTERNAL).
from hypothesis import strategies as st  # noqa: E402
from schemathesis.graphql import nodes  # noqa: E402

_decimal = st.decimals(
    min_value=-10**9, max_value=10**9, allow_nan=False, places=2
).map(str)
schemathesis.graphql.scalar(
    "Decimal", st.one_of(_decimal, _decimal, st.text(max_size=20)).map(nodes.String)
)
schemathesis.graphql.scalar(
    "NaiveDate",
    st.one_of(st.dates().map(lambda d: d.isoformat()), st.text(max_size=12)).map(nodes.String),
)
