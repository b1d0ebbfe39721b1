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
# UUIDs: now and then one of what exists (FLEETLEDGER_ST_IDS, the signed-in run), else any.
import datetime  # noqa: E402
import os  # noqa: E402

_known = [i for i in os.environ.get("FLEETLEDGER_ST_IDS", "").split(",") if i]
_uuid = st.uuids().map(str)
schemathesis.graphql.scalar(
    "UUID",
    (st.one_of(st.sampled_from(_known), st.sampled_from(_known), _uuid) if _known else _uuid).map(
        nodes.String
    ),
)
# Instants: mostly on the hour in the coming weeks (so bookings can succeed), else any text.
_now = datetime.datetime.now(datetime.timezone.utc).replace(minute=0, second=0, microsecond=0)
_soon = st.integers(min_value=24, max_value=24 * 40).map(
    lambda hours: (_now + datetime.timedelta(hours=hours)).isoformat()
)
schemathesis.graphql.scalar(
    "DateTime", st.one_of(_soon, _soon, st.text(max_size=30)).map(nodes.String)
)
schemathesis.graphql.scalar(
    "NaiveDate",
    st.one_of(st.dates().map(lambda d: d.isoformat()), st.text(max_size=12)).map(nodes.String),
)


# Signed in, a refused request must store nothing either. tests/schemathesis.rs runs the
# signed-in pass with one worker and gives the hooks a token that may read the log: before
# each call the log's end is noted; a call answered with errors and no data must leave the
# log where it was.
import requests  # noqa: E402

_LOG_URL = os.environ.get("FLEETLEDGER_ST_LOG_URL")
_LOG_TOKEN = os.environ.get("FLEETLEDGER_ST_LOG_TOKEN")
_PAGE = """query($a: String) { events(afterPosition: $a, first: 100) {
  edges { cursor node { eventType } } pageInfo { hasNextPage endCursor } } }"""
_log_end = {"cursor": None}


def _events_after(cursor, first_only=False):
    answer = requests.post(
        _LOG_URL,
        json={"query": _PAGE, "variables": {"a": cursor}},
        headers={"Authorization": f"Bearer {_LOG_TOKEN}"},
        timeout=30,
    ).json()
    if answer.get("errors"):
        raise AssertionError(f"cannot read the log: {answer['errors']}")
    return answer["data"]["events"]


if _LOG_URL and _LOG_TOKEN:

    @schemathesis.hook
    def before_call(context, case):
        page = _events_after(_log_end["cursor"])
        while True:
            if page["pageInfo"]["endCursor"]:
                _log_end["cursor"] = page["pageInfo"]["endCursor"]
            if not page["pageInfo"]["hasNextPage"]:
                return
            page = _events_after(_log_end["cursor"])

    @schemathesis.check
    def refusal_stores_nothing(response, case):
        try:
            body = response.json()
        except ValueError:
            return  # no_internal_error reports it
        data = body.get("data")
        refused = body.get("errors") and (
            data is None or all(value is None for value in data.values())
        )
        if not refused:
            return
        stored = _events_after(_log_end["cursor"])["edges"]
        if stored:
            kinds = sorted({edge["node"]["eventType"] for edge in stored})
            raise AssertionError(f"a refused request stored events {kinds}: {body['errors']}")
