"""Schemathesis hooks for Keel's contract run (tests/contract/run.sh).

An `Idempotency-Key` must be new for each new request (shared/api.md): a repeat of a key
with another body is refused with 422, and a repeat with the same body is answered with
the first response, even when what it created has since been deleted. No schema can say
"unique", so generated keys repeat (the examples phase sends one example key to every
create), and schemathesis reads those correct answers as failures: "schema-valid request
rejected", "created resource not found". Like a real client, the run gives each request
that carries a well-formed key a fresh one. Malformed keys, schemathesis's negative cases,
are sent as generated, so their refusal is still checked; replays are the integration
tests' business (tests/api/idempotency.rs).
"""

import re
import uuid

import schemathesis

# The documented form (the parameter's `pattern` in the OpenAPI document): 1-255 visible
# ASCII characters, bare or as a Structured Field String.
WELL_FORMED = re.compile(r'(?:[!#-~][!-~]{0,254}|"(?:[!#-\[\]-~]|\\["\\]){1,255}")\Z')


@schemathesis.hook
def before_call(context, case, **kwargs):
    headers = case.headers or {}
    for name, value in list(headers.items()):
        if name.lower() == "idempotency-key" and isinstance(value, str) and WELL_FORMED.match(value):
            headers[name] = str(uuid.uuid4())
