"""Schemathesis over the live OpenAPI schema: no input makes any endpoint answer 5xx,
and every answer's status code, content type and body are the ones the schema
declares (a client generated from /openapi.json is right).

Runs its CLI against a real queue-only server (fuzzed configs must not start
training). The SSE endpoint is left out: on a queued run it streams until the
run finishes, which a fuzzer's request cannot wait for; test_api covers its 404
and test_lifecycle its stream.
"""

import re
import subprocess
import sys

import pytest

pytest.importorskip("schemathesis")

MAX_EXAMPLES = 5
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_no_input_makes_the_api_answer_5xx_or_off_schema(queue_only_server, tmp_path):
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{queue_only_server.url}/openapi.json",
               "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--seed", "1",
               "--workers", "2", "--exclude-path-regex", "/events$", "--request-timeout", "10",
               "--report-dir", str(tmp_path / "report")]
    # cwd: schemathesis keeps a hypothesis database in ./.schemathesis
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    output = result.stdout + result.stderr
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    print(f"\nschemathesis: {cases.group(0) if cases else 'no summary'}")
    assert result.returncode == 0, output[-6000:]
    assert cases and int(cases.group(1)) == int(cases.group(2)) >= 500
    log = (queue_only_server.data_dir / "server.log").read_text()
    assert not re.search(r'HTTP/1.1" 5\d\d', log)
