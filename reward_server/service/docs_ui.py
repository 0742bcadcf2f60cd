"""The interactive API docs (``/docs``, ``/redoc``), with every script, style sheet and icon served
by this server from installed files.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (jsdelivr) and the favicon from
fastapi.tiangolo.com, so on a GPU cluster without internet ``/docs`` is a blank page. The files
come from the ``fastapi-offline`` package (Swagger UI and ReDoc's standalone bundle, kept current
by its maintainer), which is the only part of it used: the app stays a plain ``FastAPI`` built by
``create_app``, and the pages are FastAPI's own HTML with local URLs.

Every asset is served under one mount, and an asset request's metrics label is that mount's path
(``/docs/static``), never one label per file: see :class:`_DocsAssets`.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
STATIC_URL = "/docs/static"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def _check_assets() -> None:
    """Fail when the app is built, not with a blank page later: where the files lie inside
    fastapi-offline is its layout, not a promised API, and an upgrade could move them."""
    missing = [name for name in ASSETS if not (ASSETS_DIR / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline at {ASSETS_DIR} lacks {', '.join(missing)}; reinstall mixed-reward")


class _DocsAssets(StaticFiles):
    """The asset files, recording their mount as the matched route.

    ``metrics._endpoint`` labels a request with ``scope["route"].path``, or else with the first
    route that matches the scope. FastAPI's router records no route for a mount, and the mount has
    already moved its prefix into ``root_path`` so that nothing matches afterwards: every asset,
    and every 404 under the mount, would be counted as ``other``, among scanners' probes.
    """

    mount: Mount | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.mount is not None:
            scope["route"] = self.mount
        await super().__call__(scope, receive, send)


def install_docs_ui(app: FastAPI) -> None:
    """Serve ``/docs`` (Swagger UI, with its OAuth2 redirect page) and ``/redoc`` from local assets.

    ``app`` must be built with ``docs_url=None, redoc_url=None``: FastAPI's routes come first in
    the router, so if they were left in, they would answer and load the CDN again, unnoticed.
    """
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("build the app with FastAPI(docs_url=None, redoc_url=None): these pages replace them")
    if app.openapi_url is None:
        return  # no schema, nothing to show
    _check_assets()
    openapi_url = app.openapi_url
    redirect_url = app.swagger_ui_oauth2_redirect_url
    assets = _DocsAssets(directory=ASSETS_DIR)
    assets.mount = Mount(STATIC_URL, app=assets, name="docs-static")
    app.router.routes.append(assets.mount)  # what app.mount() does, keeping the Mount for the label

    def root(request: Request) -> str:
        """The prefix a proxy (or Ray Serve's route_prefix) mounts the app under, as FastAPI's pages do."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        prefix = root(request)
        return get_swagger_ui_html(
            openapi_url=prefix + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{prefix}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}{STATIC_URL}/favicon.png",
            oauth2_redirect_url=prefix + redirect_url if redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    if redirect_url:

        @app.get(redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        prefix = root(request)
        return get_redoc_html(
            openapi_url=prefix + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{prefix}{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix}{STATIC_URL}/favicon.png",
            with_google_fonts=False,  # fonts.googleapis.com is off-machine too; ReDoc falls back to system fonts
        )
