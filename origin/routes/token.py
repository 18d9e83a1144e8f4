"""``/token`` (Docker token protocol, GET and OAuth2 POST) and the public JWKS."""

from __future__ import annotations

import json

from quart import Quart, request

from core.auth.credentials import parse_authorization
from core.auth.scopes import parse_scopes
from core.errors import Unauthorized, Unsupported
from core.web.response import RegistryResponse as Response
from origin.auth.issuer import TokenIssuer
from origin.auth.keys import KeyRing


def install_token_routes(app: Quart, issuer: TokenIssuer, keys: KeyRing) -> None:
    """``/token`` and the JWKS. Failed credentials count per client (behind the trusted
    proxies of ``issuer.failures``, the client their ``X-Forwarded-For`` names)."""

    @app.route("/token", methods=["GET", "POST"])
    async def token() -> Response:
        password: str | None = None
        scopes: list[str] = request.args.getlist("scope")
        if request.method == "POST":
            form = await request.form
            grant_type = form.get("grant_type", "")
            if grant_type != "password":
                # We issue no refresh tokens; clients fall back to GET with Basic auth.
                raise Unsupported("unsupported grant_type", detail={"grant_type": grant_type})
            password = form.get("password", "")
            scopes += form.getlist("scope")
        else:
            password = _basic_password(request.headers.get("Authorization"))
        try:
            issued = await issuer.exchange(
                host=request.host,
                client=issuer.failures.client(
                    request.remote_addr, request.headers.get("X-Forwarded-For")
                ),
                password=password,
                scopes=parse_scopes(scopes),
            )
        except Unauthorized as exc:
            exc.headers.setdefault("WWW-Authenticate", 'Basic realm="depot-registry"')
            raise
        return Response(json.dumps(issued.body()), content_type="application/json")

    @app.route("/.well-known/jwks.json", methods=["GET"])
    async def jwks() -> Response:
        response = Response(json.dumps(keys.jwks()), content_type="application/json")
        response.headers["Cache-Control"] = "max-age=300"
        return response


def _basic_password(header: str | None) -> str | None:
    credentials = parse_authorization(header)
    if credentials is None:
        return None
    if credentials.scheme != "basic" or not credentials.secret:
        raise Unauthorized("the token endpoint takes Basic credentials")
    return credentials.secret
