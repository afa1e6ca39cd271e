"""What a cluster node's `ray start` needs from its AWS account, printed as shell exports (ray_cluster.yaml):

    envs="$(python -m cluster.node_env)" && eval "$envs" && ray start ...

- FASTSLOW_API_KEY: the search endpoint's key, from the Secrets Manager secret `fastslow/api-key`;
- FASTSLOW_STORAGE_ROOT: where relative paths of jobs and the app land, from the SSM parameter
  `/fastslow/storage-root` (e.g. s3://my-bucket/fastslow), so the cluster config names no bucket;
- AWS_DEFAULT_REGION: the node's own region (from the instance metadata) unless one is configured: boto3 takes no
  region from the instance metadata by itself, and Secrets Manager, SSM and the workers' clients need one.

boto3 with the node's own credentials (its instance profile), not the `aws` CLI: Ray's images have boto3 and no
CLI. Anything missing ends the command with exit 1, one line on stderr and nothing on stdout: no key, no Ray start.
"""

from __future__ import annotations

import shlex
import sys

API_KEY_SECRET = "fastslow/api-key"
STORAGE_ROOT_PARAMETER = "/fastslow/storage-root"


class NodeEnvError(Exception):
    """A setting this node cannot get; its message is the one line the node's log shows."""


def node_region(session) -> str:
    """The configured region, else the instance's (its availability zone less the letter)."""
    if session.region_name:
        return session.region_name
    from botocore.utils import IMDSRegionProvider

    region = IMDSRegionProvider(session._session).provide()
    if not region:
        raise NodeEnvError("no AWS region: none configured and none from the instance metadata")
    return region


def node_env(session=None) -> dict[str, str]:
    """The settings, read with `session` (a boto3 Session; the default chain when None)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = session or boto3.session.Session()
    region = node_region(session)
    try:
        key = session.client("secretsmanager", region_name=region).get_secret_value(
            SecretId=API_KEY_SECRET).get("SecretString", "")
    except (ClientError, BotoCoreError) as e:
        raise NodeEnvError(f"no API key in AWS secret {API_KEY_SECRET} ({e})") from None
    if not key.strip():
        raise NodeEnvError(f"no API key in AWS secret {API_KEY_SECRET} (it is empty)")
    try:
        root = session.client("ssm", region_name=region).get_parameter(
            Name=STORAGE_ROOT_PARAMETER)["Parameter"]["Value"].strip()
    except (ClientError, BotoCoreError) as e:
        raise NodeEnvError(f"no storage root in SSM parameter {STORAGE_ROOT_PARAMETER} ({e})") from None
    if not root.startswith("s3://") or len(root) <= len("s3://"):
        raise NodeEnvError(f"SSM parameter {STORAGE_ROOT_PARAMETER} is {root!r}: expected s3://BUCKET[/PREFIX]")
    return {"FASTSLOW_API_KEY": key, "FASTSLOW_STORAGE_ROOT": root.rstrip("/"), "AWS_DEFAULT_REGION": region}


def main() -> int:
    try:
        env = node_env()
    except NodeEnvError as e:
        print(f"fastslow node: {e}: Ray not started", file=sys.stderr)
        return 1
    print("\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
