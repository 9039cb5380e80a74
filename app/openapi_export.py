"""Print the API's OpenAPI document as YAML: `python -m app.openapi_export > openapi.yaml`."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from app.main import create_app
from app.settings import Settings


def openapi_document() -> dict[str, Any]:
    """The spec, built with throwaway embedded settings (it does not depend on configuration)."""
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(Settings(data_dir=Path(folder)))
        try:
            return app.openapi()
        finally:
            app.state.database.dispose()


def render() -> str:
    return yaml.safe_dump(openapi_document(), sort_keys=False, allow_unicode=True, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
