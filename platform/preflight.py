"""Checks that run before any stage: is the Ray cluster there, is the MLflow server there, can
object storage be written with the credentials in the environment?

Each failure is one line that names the setting and how to fix it, raised within a few seconds
instead of minutes into a run (or never: a missing Ray head can make ray.init wait a long time).
Exit codes: 2 for a setting that cannot work as given (missing credentials, a dashboard URL
where the cluster address belongs, a missing bucket, credentials that are refused), 1 for a
service that does not answer (it may only be down for now).
"""
from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

TIMEOUT_S = 3.0
BAD_INPUT, UNREACHABLE = 2, 1


class PreflightError(RuntimeError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _connect(host: str, port: int) -> str | None:
    """None if a TCP connection opens within TIMEOUT_S, else why not."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return None
    except socket.timeout:
        return f"no answer within {TIMEOUT_S:g}s"
    except OSError as err:
        return err.strerror or str(err)


def check_ray_address(address: str | None) -> None:
    """RAY_ADDRESS as ray.init reads it: unset (a local Ray), 'auto'/'local', HOST:PORT of the
    head's GCS, or ray://HOST:PORT (Ray Client)."""
    if not address or address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise PreflightError(
            f"RAY_ADDRESS={address} is a Ray dashboard URL, the address for `ray job submit`; "
            "submit the command with `ray job submit --address URL -- understudy ...` (the job "
            "gets its own RAY_ADDRESS), or set RAY_ADDRESS to the head's HOST:6379", BAD_INPUT)
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise PreflightError(f"RAY_ADDRESS={address} is not HOST:PORT or ray://HOST:PORT; set it "
                             "to the head's address (e.g. 10.0.0.5:6379) or unset it to run on "
                             "a local Ray", BAD_INPUT)
    why = _connect(host.strip("[]"), int(port))
    if why:
        raise PreflightError(
            f"Ray cluster at RAY_ADDRESS={address} is unreachable ({why}); start it with "
            "`ray start --head`, fix RAY_ADDRESS, or unset RAY_ADDRESS to run on a local Ray",
            UNREACHABLE)


def check_tracking_uri(uri: str) -> None:
    """An http(s) MLflow tracking URI must answer GET /health; local stores need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    fix = ("start the server (`mlflow server --backend-store-uri ... --artifacts-destination "
           "s3://...`) or fix --tracking-uri / MLFLOW_TRACKING_URI")
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=TIMEOUT_S) as reply:
            status = reply.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            why = f"no answer within {TIMEOUT_S:g}s"
        else:
            why = getattr(reason, "strerror", None) or reason
        raise PreflightError(f"MLflow tracking server at {uri} is unreachable ({why}); {fix}",
                             UNREACHABLE) from None
    if status != 200:
        raise PreflightError(f"MLflow tracking server at {uri} answered /health with HTTP {status}; "
                             f"{fix}", UNREACHABLE)


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint from the environment, as pyarrow, boto3 and MLflow read it."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def check_object_storage(locations: dict[str, str]) -> None:
    """locations: URI -> the setting it came from. For s3:// URIs: credentials in the
    environment, then one request to the bucket with short timeouts."""
    s3 = {uri: setting for uri, setting in locations.items() if uri.startswith("s3://")}
    if not s3:
        return
    keys = os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    web_identity = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") and os.environ.get("AWS_ROLE_ARN")
    first = next(iter(s3.items()))
    if not (keys or web_identity):
        raise PreflightError(
            f"no object-storage credentials in the environment for {first[0]} ({first[1]}): "
            "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an "
            "S3-compatible store such as MinIO); understudy never reads them from config files",
            BAD_INPUT)
    checked = set()
    for uri, setting in s3.items():
        bucket = urlsplit(uri).netloc
        if bucket not in checked:
            _probe_bucket(bucket, uri, setting)
            checked.add(bucket)


def _probe_bucket(bucket: str, uri: str, setting: str) -> None:
    import pyarrow.fs as pafs

    endpoint = s3_endpoint()
    where = f"at {endpoint}" if endpoint else "on AWS"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    try:
        if not region and not endpoint:
            region = pafs.resolve_s3_region(bucket)
        # pyarrow's constructor, unlike FileSystem.from_uri, does not read AWS_ENDPOINT_URL.
        fs = pafs.S3FileSystem(endpoint_override=endpoint, region=region or "us-east-1",
                               connect_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S,
                               retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
        found = fs.get_file_info(bucket).type
    except OSError as err:
        text = str(err)
        if any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId",
                                   "SignatureDoesNotMatch")):
            raise PreflightError(f"object storage {where} refused the credentials in the "
                                 f"environment for {uri} ({setting}); check AWS_ACCESS_KEY_ID "
                                 "and AWS_SECRET_ACCESS_KEY", BAD_INPUT) from None
        raise PreflightError(f"object storage {where} is unreachable for {uri} ({setting}): "
                             f"{text.splitlines()[0]}; fix AWS_ENDPOINT_URL or the network",
                             UNREACHABLE) from None
    if found == pafs.FileType.NotFound:
        raise PreflightError(f"bucket {bucket!r} of {uri} ({setting}) does not exist {where}; "
                             f"create it (e.g. `aws s3 mb s3://{bucket}`) or fix {setting}",
                             BAD_INPUT)


def check_all(ws, ray_address: str | None) -> None:
    """Storage first (cheapest to get wrong), then the two services."""
    check_object_storage(ws.remote_locations())
    check_tracking_uri(ws.tracking_uri)
    check_ray_address(ray_address)


def shared_storage_warning(ws, ray_address: str | None) -> str | None:
    """On a cluster, local paths work only if every node sees the same folder (NFS, or the
    loopback test's one machine); say so once instead of failing late on a worker node."""
    if not ray_address or ray_address == "local":
        return None
    settings = (("--storage", ws.storage_root), ("--shard-root", ws.shard_root))
    local = [name for name, value in settings if "://" not in value]
    if not local:
        return None
    return (f"understudy: note: {' and '.join(local)} are local paths on a Ray cluster; every "
            "node must see them (shared filesystem), or use s3://bucket/prefix")
