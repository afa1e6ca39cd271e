"""A fake EC2 instance-metadata service (IMDSv2, as botocore asks it) on 127.0.0.1, for tests of what a cluster
node gets from it: the role's credentials (botocore's InstanceMetadataFetcher) and the node's region (its
IMDSRegionProvider). Point AWS_EC2_METADATA_SERVICE_ENDPOINT at `url`."""

from __future__ import annotations

import datetime
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeIMDS:
    """IMDSv2 on 127.0.0.1: PUT /latest/api/token gives a session token; with it, GET
    /latest/meta-data/iam/security-credentials/ names the role and .../<role> gives its credentials, and
    /latest/meta-data/placement/availability-zone/ the instance's zone (ZONE, region us-west-2). `requests`:
    (method, path, whether the request carried the token it was given).

    `url` names the host as 127.1: the same address as 127.0.0.1 (numeric shorthand, parsed without DNS) but not in
    the sandbox's no_proxy, so that a dead proxy in a process's environment captures its requests as it would
    169.254.169.254's, and the job's credentials fail as on EC2 (`test_the_fake_endpoint_is_behind_a_dead_proxy`)."""

    ROLE = "fastslow-node-role"
    ZONE = "us-west-2b"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s  # how long every answer waits: a node too busy to answer within botocore's 1 s
        self.token = f"imds-token-{uuid.uuid4().hex}"
        self.access_key = f"ASIAFAKEIMDS{uuid.uuid4().hex[:8].upper()}"
        self.requests: list[tuple[str, str, bool]] = []
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6)
        self.credentials = {"Code": "Success", "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "Type": "AWS-HMAC", "AccessKeyId": self.access_key,
                            "SecretAccessKey": uuid.uuid4().hex, "Token": uuid.uuid4().hex,
                            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: str = "") -> None:
                time.sleep(imds.delay_s)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):  # noqa: N802 - http.server's naming
                imds.requests.append(("PUT", self.path, False))
                if self.path == "/latest/api/token" and self.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                    self._answer(200, imds.token)
                else:
                    self._answer(400)

            def do_GET(self):  # noqa: N802
                tokened = self.headers.get("x-aws-ec2-metadata-token") == imds.token
                imds.requests.append(("GET", self.path, tokened))
                base = "/latest/meta-data/iam/security-credentials/"
                if not tokened:
                    self._answer(401)
                elif self.path == base:
                    self._answer(200, imds.ROLE)
                elif self.path == base + imds.ROLE:
                    self._answer(200, json.dumps(imds.credentials))
                elif self.path == "/latest/meta-data/placement/availability-zone/":
                    self._answer(200, imds.ZONE)
                else:
                    self._answer(404)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="fake-imds").start()

    def credential_requests(self, requests: list) -> int:
        """Of `requests`, those for the role's credentials that carried the session token."""
        return sum(1 for method, path, tokened in requests
                   if method == "GET" and tokened and path.endswith("/security-credentials/" + self.ROLE))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
