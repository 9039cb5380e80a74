"""Downloads of local-disk storage through signed, expiring URLs (the embedded default)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from app.deps import StorageDep
from app.errors import ErrorResponse, LeapError, NotFound, error_responses
from app.storage.local import LocalStorage
from app.storage.signing import content_disposition

router = APIRouter(tags=["files"])


class LinkExpired(LeapError):
    status_code = 403
    code = "link_invalid"


@router.get(
    "/v1/files/{key:path}",
    summary="Download a file by a presigned link (local storage only)",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file, as an attachment"},
        403: {"model": ErrorResponse, "description": "Signature wrong or expired"},
        **error_responses(404),
    },
)
def download_file(
    key: str,
    storage: StorageDep,
    expires: Annotated[int, Query()],
    filename: Annotated[str, Query()],
    signature: Annotated[str, Query()],
) -> FileResponse:
    if not isinstance(storage, LocalStorage):
        raise NotFound("files are served by the object store on this server")
    path = storage.verify(key, expires=expires, filename=filename, signature=signature)
    if path is None:
        raise LinkExpired("download link is invalid or has expired; fetch the training again for a fresh one")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"Content-Disposition": content_disposition(filename)},
    )
