"""How a client reaches a Triton server: the gRPC address, the API key, TLS.

    connection = Connection("twin.example.org:8001", tls_ca="ca.pem")   # key from $TWINSERVE_API_KEY
    client = connection.client()   # tritonclient.grpc.InferenceServerClient; every call carries the key

`twin serve` asks for the key on every gRPC and HTTP call when it has one (`contract.API_KEY_HEADER`;
over gRPC, Triton reads it as the metadata `triton-grpc-protocol-<header>`). A call without it, or
with a wrong one, is refused with gRPC status UNAVAILABLE and the message "This protocol is
restricted, expecting header …" — the same status as a lost connection (and as a full queue), so
`connection_lost` tells them apart by the message. `AccessRefused` says what to do about it.

The `twin` commands that talk to a server take `--url`, `--api-key-file`, `--tls-ca` and `--tls`
(`add_arguments`, `Connection.from_args`). tritonclient is imported only when a client is made, so
the command line starts without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from twinserve.contract import API_KEY_ENV, API_KEY_HEADER, read_api_key

DEFAULT_URL = "localhost:8001"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton reads a restricted protocol's gRPC header under this prefix
RESTRICTED = "is restricted, expecting header"  # in Triton's refusal of a call without the right key
OVERLOADED = "Exceeds maximum queue size"  # Triton's refusal of a request its full queue has no room for
# gRPC statuses that mean the connection or the server is gone, not that the request was bad.
CONNECTION_LOST = ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED", "StatusCode.DEADLINE_EXCEEDED")
LOST_MESSAGES = ("UNAVAILABLE", "Socket closed", "Connection reset", "failed to connect", "Broken pipe",
                 "no longer in valid state")


class AccessRefused(ValueError):
    """The server asks for an API key and this client sent none, or a wrong one."""


def key_refused(error: Exception) -> bool:
    """Whether `error` is Triton refusing a call for a missing or wrong API key."""
    return RESTRICTED in str(error)


def connection_lost(error: Exception) -> bool:
    """Whether an error means the server or the connection is gone (rather than a refused request)."""
    if key_refused(error) or OVERLOADED in str(error):  # status UNAVAILABLE, from a server that is there
        return False
    status = getattr(error, "status", lambda: None)()
    return status in CONNECTION_LOST or any(message in str(error) for message in LOST_MESSAGES)


class _KeyHeader:
    """tritonclient plugin: puts the API key into the metadata of every call (unary calls and streams)."""

    def __init__(self, key: str):
        self._key = key

    def __call__(self, request) -> None:
        request.headers[GRPC_HEADER_PREFIX + API_KEY_HEADER] = self._key

    def __repr__(self) -> str:
        return "_KeyHeader(…)"


@dataclass(frozen=True)
class Connection:
    """A Triton server's gRPC address, the API key to send (default: the environment variable
    `API_KEY_ENV`; None or empty: none) and TLS: `tls_ca` a PEM file of the root certificate(s) to
    trust, or `tls=True` for the system's roots; neither: plaintext."""

    url: str = DEFAULT_URL
    api_key: str | None = field(default_factory=lambda: read_api_key(None), repr=False)
    tls: bool = False
    tls_ca: str | Path | None = None

    @classmethod
    def of(cls, target: str | Connection) -> Connection:
        """A `Connection` as is, or one to the address `target` (key from the environment, no TLS)."""
        return target if isinstance(target, Connection) else cls(target)

    @classmethod
    def from_args(cls, args) -> Connection:
        """From the flags of `add_arguments`."""
        return cls(args.url, read_api_key(args.api_key_file), tls=args.tls, tls_ca=args.tls_ca)

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None

    def client(self):
        """A `tritonclient.grpc.InferenceServerClient` to the server that sends the key with every call,
        streams included."""
        import tritonclient.grpc as grpc

        if self.tls_ca is not None and not Path(self.tls_ca).is_file():
            raise FileNotFoundError(f"{self.tls_ca}: no such file (TLS root certificate)")
        client = grpc.InferenceServerClient(self.url, ssl=self.uses_tls,
                                            root_certificates=None if self.tls_ca is None else str(self.tls_ca))
        if self.api_key:
            client.register_plugin(_KeyHeader(self.api_key))
        return client

    def refused(self) -> AccessRefused:
        """The error for a call refused for its key: what happened and how to pass a key."""
        what = "refused the API key it was sent" if self.api_key else "requires an API key and none was sent"
        return AccessRefused(f"the server at {self.url} {what}: pass it with --api-key-file FILE or the "
                             f"environment variable {API_KEY_ENV} (Python: Connection(url, api_key=...))")

    def hint(self, problem: str) -> str:
        """`problem` (a failure to connect), with a guess at a TLS mismatch where it looks like one."""
        if not self.uses_tls and "Socket closed" in problem:
            return f"{problem} (if the server uses TLS, pass --tls-ca CA.pem or --tls)"
        if self.uses_tls and "handshake" in problem.lower():
            return f"{problem} (TLS handshake failed: does the server use TLS, and does --tls-ca hold its root?)"
        return problem


def add_arguments(parser, url: str = DEFAULT_URL) -> None:
    """The flags that say how to reach the server: --url, --api-key-file, --tls-ca, --tls."""
    parser.add_argument("--url", default=url, help=f"Triton gRPC address (default {url})")
    parser.add_argument("--api-key-file", help=f"file whose first line is the server's API key (default: the "
                                               f"environment variable {API_KEY_ENV}, if set)")
    parser.add_argument("--tls-ca", help="PEM root certificate to trust: talk TLS to the server")
    parser.add_argument("--tls", action="store_true",
                        help="talk TLS to the server, trusting the system's root certificates")
