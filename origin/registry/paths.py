"""Where the origin keeps bytes in its storage driver (the driver knows nothing of OCI).

::

    blobs/<algorithm>/<first two hex>/<hex>/data     committed blobs, content-addressed
    uploads/<upload id>/data                         staged bytes of an upload session
"""

from __future__ import annotations

from core.digest import Digest

UPLOADS = "uploads"


def blob_path(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded[:2]}/{digest.encoded}/data"


def upload_dir(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}"


def upload_path(upload_id: str) -> str:
    return f"{upload_dir(upload_id)}/data"
