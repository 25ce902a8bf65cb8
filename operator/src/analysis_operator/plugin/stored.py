"""Reading results where the ObjectStore sink put them, with the caller's own store credentials.

The plugin never holds the operator's storage credential: it reads a batch's
folder (``status.results.location``) as the person running it, with what
S3 clients read from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``), so a
platform team can hand each tenant a key that may only read its own
namespace's prefix. The endpoint is the one in status
(``status.results.endpoint``) unless ``AWS_ENDPOINT_URL`` or ``--endpoint``
says otherwise.
"""

from __future__ import annotations

import os
import re
from typing import Any

from analysis_operator import objectstore, results

_LOCATION = re.compile(r"^s3://([^/]+)/(.*)$")


class UnreadableLocation(ValueError):
    pass


StoreError = objectstore.StoreError  # what reading fails with (the message names the setting)


def read_location(location: str, endpoint: str | None) -> list[dict[str, Any]]:
    """Every row under ``location`` (``s3://bucket/folder/``), each position once, in export order."""
    found = _LOCATION.match(location)
    if found is None:
        raise UnreadableLocation(f"{location!r} is not an s3://bucket/folder/ location")
    bucket, folder = found.group(1), found.group(2).strip("/")
    chosen = endpoint or os.environ.get("AWS_ENDPOINT_URL") or ""
    settings = objectstore.Settings(
        bucket=bucket,
        endpoint=chosen.rstrip("/"),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        names={
            objectstore.BUCKET: "the location's bucket",
            objectstore.ENDPOINT: "--endpoint (or AWS_ENDPOINT_URL)",
            objectstore.CREDENTIALS: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        },
    )
    return read_folder(objectstore.open_store(settings), folder)


def read_folder(store: objectstore.Store, folder: str) -> list[dict[str, Any]]:
    """Every row of the parts under ``folder`` of ``store``, each position once, in export order.

    Blocking reads (``Store.list_blocking``): the plugin exits right after them."""
    parts = []
    for key, _size in store.list_blocking(folder + "/"):
        if results.parse_part(key) is not None:
            parts.append((key, (store.get_blocking(key) or b"").decode("utf-8")))
    return results.read_parts(parts)
