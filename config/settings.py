"""Frozen settings, one dataclass per process kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class OriginSettings:
    data_dir: Path = Path("./data")
    listen: str = "127.0.0.1:5000"
    #: SQLAlchemy URL; empty means a SQLite file inside ``data_dir``.
    database_url: str = ""
    #: A statement waiting this long for a lock fails (SQLite's busy timeout, PostgreSQL's
    #: lock_timeout), and the request with it: 503 with Retry-After. Per-request SQLite reads
    #: run on the event loop and wait at most 1.5 s.
    database_busy_timeout_seconds: float = 30
    workers: int = 1
    max_manifest_bytes: int = 4 * 1024 * 1024
    #: Upload sessions untouched for this long are purged (their staged bytes deleted).
    upload_timeout_seconds: float = 24 * 3600
    upload_sweep_interval_seconds: float = 600
    #: Per org: upload sessions open at once and bytes staged in them (an abandoned session
    #: holds both until the upload timeout). Past either: 429 TOOMANYREQUESTS. 0: no limit.
    upload_sessions_per_org: int = 4096
    upload_staged_bytes_per_org: int = 64 * 1024**3
    #: Online garbage collection runs this often in each origin process (0: never; then run
    #: ``depot-registry gc`` by hand or from a timer).
    gc_interval_seconds: float = 6 * 3600
    #: Garbage collection keeps anything younger than this (a blob uploaded for a manifest
    #: that has not been pushed yet).
    gc_grace_seconds: float = 2 * 3600
    #: Advertised as OCI-Chunk-Min-Length.
    chunk_min_length_bytes: int = 0
    #: In-flight requests get this long to finish on SIGTERM/Ctrl-C.
    graceful_timeout_seconds: float = 30
    #: A request body that sends no byte for this long gets 408 and its connection closes.
    body_idle_timeout_seconds: float = 60
    #: A response the client accepts no byte of for this long is cut (a stalled reader
    #: must not hold the connection and its buffers).
    send_idle_timeout_seconds: float = 60

    #: Off only for local experiments (``--no-auth``); then only loopback addresses bind.
    auth: bool = True
    #: With ``registry.example`` here, ``acme.registry.example`` addresses org ``acme``.
    base_domain: str = ""
    #: ``service`` of the Docker token protocol and the audience of every bearer token.
    token_service: str = "depot-registry"
    token_issuer: str = "depot-registry"
    token_ttl_seconds: float = 300
    #: Failed token exchanges allowed per client address per window before 429.
    token_failures_allowed: int = 10
    token_failure_window_seconds: float = 60
    #: OIDC issuers over plain http on loopback (tests and local experiments only).
    oidc_allow_insecure_loopback: bool = False
    #: Comma-separated addresses/networks (the edges) whose X-Forwarded-For names the real
    #: client, so failed token exchanges are limited per client, not per edge.
    trusted_proxies: str = ""

    #: Saved builds expire this long after they are created, unless their org or project
    #: sets another TTL (``/api/v1/…/retention``).
    build_ttl_seconds: float = 7 * 86400
    #: US dollars per decimal GB stored for a 730-hour month (``/api/v1/orgs/{org}/usage``).
    storage_price_per_gb_month: float = 0.20
    #: How often byte-hours of stored data are accrued.
    metering_interval_seconds: float = 3600

    #: Where blob bytes live (core/storage/location.py): empty or ``file://DIR`` for the
    #: filesystem driver (empty: ``data_dir/storage``); ``s3://BUCKET[/PREFIX]?region=R`` for
    #: AWS S3, ``s3://BUCKET?endpoint=http://HOST:PORT&region=R`` for an S3-compatible server
    #: (path-style addressing). ``--storage-url``, ``DEPOT_ORIGIN_STORAGE_URL``.
    storage_url: str = ""
    #: The 32-byte key (base64) that encrypts the credentials orgs register for their
    #: upstream registries (``/api/v1/orgs/{org}/upstreams``). Empty: ``upstream-credentials.key``
    #: in ``data_dir``, created on first start. Origins sharing a database must share it.
    upstream_credentials_key_file: Path | None = None
    #: Let orgs register upstreams at ``localhost`` or a private, loopback or link-local IP
    #: address (off: the edges would fetch from inside this network for them).
    upstreams_allow_private_addresses: bool = False
    #: Files holding the S3 access key id and secret access key (give both). Without them the
    #: standard AWS variables below apply, and without those botocore's default chain
    #: (config files, instance or container credentials).
    storage_access_key_id_file: Path | None = None
    storage_secret_access_key_file: Path | None = None
    #: The standard AWS environment variables, read only from those names (never from the
    #: settings file or a DEPOT_ variable) and never printed.
    aws_access_key_id: str = field(
        default="", repr=False, metadata={"environ": "AWS_ACCESS_KEY_ID"}
    )
    aws_secret_access_key: str = field(
        default="", repr=False, metadata={"environ": "AWS_SECRET_ACCESS_KEY"}
    )
    aws_session_token: str = field(
        default="", repr=False, metadata={"environ": "AWS_SESSION_TOKEN"}
    )
    #: The event log edges follow (``/api/v1/events``) keeps events this long and at most
    #: this many; an edge further behind revalidates everything it holds.
    events_retention_seconds: float = 7 * 86400
    events_retention_count: int = 1_000_000
    #: How often expiries (tokens, builds) are recorded and the log pruned.
    events_housekeeping_interval_seconds: float = 15
    #: How often a process looks for events other origin processes appended (its own wake
    #: its long polls at once).
    events_poll_interval_seconds: float = 0.5
    #: ``redis://HOST:PORT/DB``: failed-credential limits per client shared by every origin
    #: using it (``--redis-url``, ``DEPOT_ORIGIN_REDIS_URL``); empty: per process. Redis
    #: down: per process again, logged.
    redis_url: str = ""
    #: Redirect mode (off by default): a blob GET that a client is allowed to make is
    #: answered 307 to a presigned URL of the S3 store, valid ``storage_redirect_seconds``;
    #: the client (an edge) fetches the bytes from the store. Ignored on the filesystem.
    storage_redirect: bool = False
    storage_redirect_seconds: float = 300

    #: Serve HTTPS (``--tls-cert``/``--tls-key``, ``DEPOT_ORIGIN_TLS_CERT_FILE``...): the
    #: certificate chain and its private key, PEM. Neither: plain HTTP.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    """One upstream registry an edge mirrors (``[[mirrors]]`` in the edge's TOML file,
    ``--mirror NAME=URL`` and ``--mirror-access NAME=MODE`` on its command line)."""

    #: How clients name it: a registry host such as ``docker.io`` or ``ghcr.io`` (it must
    #: contain a dot, so it can never be an org's name).
    name: str = ""
    #: Where it is: ``https://registry-1.docker.io``. Its token service is found through its
    #: own challenge.
    url: str = ""
    #: Credentials at the upstream (both or neither): the password is read from a file.
    username: str = ""
    password_file: Path | None = None
    #: ``authenticated``: any valid token of any org on this system may pull through it;
    #: ``anonymous``: anyone may (for private networks; logged at start).
    access: str = "authenticated"


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    listen: str = "127.0.0.1:5001"
    #: The origin's base URL, e.g. ``http://127.0.0.1:5000``.
    upstream: str = ""
    cache_dir: Path = Path("./edge-cache")
    cache_size_bytes: int = 50 * 1024**3
    #: File holding the edge's service token (``dpe_...``), created with
    #: ``depot-registry token create --kind edge``.
    upstream_token_file: Path | None = None
    base_domain: str = ""
    token_service: str = "depot-registry"
    token_issuer: str = "depot-registry"
    #: Upstream registries this edge mirrors beside its origin (see edge/mirror/).
    mirrors: tuple[MirrorSettings, ...] = ()
    #: Where requests without ``?ns=`` for names that are not an org's go (Docker Engine's
    #: ``registry-mirrors`` sends Docker Hub names so): a mirror's name; empty means
    #: ``docker.io`` when it is mirrored, ``none`` means nowhere.
    default_mirror: str = ""
    #: How long the edge keeps an org's registered upstreams before asking origin again
    #: (and whether a name's first part is an org at all, when that answer was no).
    org_upstreams_refresh_seconds: float = 60

    #: A cached tag is answered locally this long, then revalidated with origin.
    tag_freshness_seconds: float = 30
    #: Manifest, tag and HEAD requests to origin give up after this long (then stale/503).
    upstream_deadline_seconds: float = 10
    #: A whole blob fill is abandoned after this long.
    fill_deadline_seconds: float = 3600
    #: Retry-After on a 503 for an uncached object while origin is unavailable.
    unavailable_retry_after_seconds: int = 10
    jwks_refresh_seconds: float = 300
    graceful_timeout_seconds: float = 30
    #: As for the origin: 408 after this long without a request-body byte.
    body_idle_timeout_seconds: float = 60
    #: As for the origin: a response the client accepts no byte of for this long is cut.
    send_idle_timeout_seconds: float = 60
    #: Push relay targets spoken to over plain HTTP besides 127.0.0.0/8 and localhost:
    #: ``host[:port]`` entries, comma-separated (Docker's ``insecure-registries``).
    insecure_registries: str = ""
    #: Relay jobs running at once on this edge, and per caller (one registry token).
    relay_max_jobs: int = 8
    relay_max_jobs_per_principal: int = 2
    #: Blobs one relay job copies at once to a target registry.
    relay_blob_concurrency: int = 4
    #: Blobs larger than this go to a target in PATCH chunks of this size (resumable).
    relay_chunk_bytes: int = 16 * 1024**2
    #: A job whose client went away (and did not come back) is cancelled after this long.
    relay_grace_seconds: float = 5
    #: A whole relay job is abandoned after this long.
    relay_deadline_seconds: float = 6 * 3600
    #: Requests passed through to origin at once (edge/passthrough.py). Reads (GET/HEAD:
    #: /token, tag lists) and writes (uploads, pushes, deletes) have separate connections
    #: and limits, so writes never starve pulls; each client address may have
    #: ``passthrough_per_client_max`` of each in flight (generous: a CI farm behind one NAT
    #: address pushes many layers at once). Past a limit: 429 with Retry-After.
    passthrough_reads_max: int = 128
    passthrough_writes_max: int = 128
    passthrough_per_client_max: int = 32
    #: How long a pass-through request waits for a slot when only the total is reached.
    passthrough_queue_seconds: float = 2
    #: Comma-separated addresses/networks of proxies in front of the edge (load balancers)
    #: whose X-Forwarded-For names the client, for the per-client limits.
    trusted_proxies: str = ""
    #: The circuit breaker on origin (edge/breaker.py): this many consecutive failures open
    #: it; it stays open 1 s, doubling after each failed probe up to the max.
    breaker_failures: int = 3
    breaker_max_interval_seconds: float = 30
    #: Redis shared by the edges of a region (``redis://HOST:PORT/DB``); with ``region`` set,
    #: edges fetch each cold digest from upstream once per region (edge/region/). Empty:
    #: every edge on its own, as without Redis.
    redis_url: str = ""
    region: str = ""
    #: The URL the region's other edges reach this edge at (empty: the bound address).
    advertise_url: str = ""
    #: A region's fill lock on a digest expires this long after its holder last renewed it
    #: (a dead leader's fills are taken over after it).
    region_lock_seconds: float = 5
    #: Follow origin's event feed (edge/events/): tags, deletions, revocations and
    #: visibility changes act at once instead of after their freshness windows.
    events: bool = True
    #: How long one long poll of the feed waits at origin for an event. Below
    #: ``upstream_deadline_seconds``: through a shield edge, the poll is a pass-through read
    #: whose answer must start within that deadline.
    events_wait_seconds: float = 8
    #: Serve HTTPS (``--tls-cert``/``--tls-key``): the certificate chain and its key, PEM.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: CA bundle (PEM) that origin's certificate must chain to when ``upstream`` is https
    #: (``--upstream-ca``); none: the system's trust store.
    upstream_ca_file: Path | None = None
    #: When a manifest is fetched from origin, its blobs (config and layers) start filling
    #: in the background, this many at once, largest first, so the client's blob GETs join
    #: fills already running. 0 turns it off.
    prefetch_blobs: int = 3
    #: Worker processes sharing the listening socket and the cache directory, one fill per
    #: digest across them (edge/coord/host_lock.py). 1 (not the core count) by default:
    #: each worker follows origin's event feed and keeps its own memory and metrics.
    workers: int = 1
