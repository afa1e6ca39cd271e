"""What a Ray job's processes run with: their environment, the proxies botocore would use, and where the S3 client
that fastslow.storage made got its credentials (not a test module; tests/test_cluster_env.py uses it).

- `python -m tests.env_probe_job MODULE ARGS...`, as a job's entrypoint: runs `python -m MODULE ARGS` (e.g.
  `jobs.build_index ...`) in this process, the job's driver, and records the driver as it exits.
- `tests.env_probe_job.record`, as the job's `worker_process_setup_hook` (Ray runs it in every worker process of
  the job as it starts: the Ray Data tasks, the embedding actors): records that worker, and keeps its record
  current while it lives (every 0.2 s), so a change fastslow's code makes after start-up is seen too.

Records go to $FASTSLOW_ENV_PROBE_DIR/<pid>.json (set in the job's runtime env): {"pid", "role" ("driver" or
"worker"), "argv", "env", "proxies" {url: botocore.utils.get_environ_proxies(url)} for PROXY_URLS and the
metadata endpoint set in the environment, "s3_credentials" [{"method", "access_key"}] of each boto3 S3 client that
fastslow.storage holds in the process}. Nothing of fastslow's is changed.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading

PROBE_DIR_ENV = "FASTSLOW_ENV_PROBE_DIR"
# The instance-metadata address botocore's credential lookup asks, and an S3-compatible endpoint on another host.
PROXY_URLS = ("http://169.254.169.254/latest/api/token", "http://minio.internal:9000")


def snapshot(role: str) -> dict:
    """This process, now."""
    from botocore.utils import get_environ_proxies

    credentials = []
    s3 = sys.modules.get("fastslow.storage_s3")  # only once fastslow's storage layer is in use here
    for client in list(getattr(s3, "_clients", {}).values()):
        creds = getattr(getattr(client, "_request_signer", None), "_credentials", None)
        if creds is not None:
            credentials.append({"method": getattr(creds, "method", None), "access_key": creds.access_key})
    with open("/proc/self/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    return {"pid": os.getpid(), "role": role, "argv": argv, "env": dict(os.environ),
            "proxies": {url: get_environ_proxies(url) for url in _proxy_urls()}, "s3_credentials": credentials}


def _proxy_urls() -> tuple[str, ...]:
    """PROXY_URLS, and the metadata endpoint this process is told to use instead of 169.254.169.254, if any."""
    endpoint = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    return PROXY_URLS + ((endpoint,) if endpoint else ())


def _write(record: dict) -> None:
    path = os.path.join(os.environ[PROBE_DIR_ENV], f"{record['pid']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


_stopped = threading.Event()


def _keep_current(role: str) -> None:
    last = None
    while not _stopped.is_set():
        try:
            record = snapshot(role)
            if record != last:
                _write(record)
                last = record
        except Exception:  # noqa: BLE001 - a probe must never break the process it watches
            pass
        _stopped.wait(0.2)


def record() -> None:
    """The worker_process_setup_hook: record this worker now and while it lives."""
    threading.Thread(target=_keep_current, args=("worker",), daemon=True, name="env-probe").start()


def main(argv: list[str]) -> None:
    import runpy

    if not argv:
        raise SystemExit("usage: python -m tests.env_probe_job MODULE [ARGS...]")

    def at_exit() -> None:
        _stopped.set()
        _write(snapshot("driver"))

    atexit.register(at_exit)
    threading.Thread(target=_keep_current, args=("driver",), daemon=True, name="env-probe").start()
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
