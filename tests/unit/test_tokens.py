"""Path tokens: signing (ES256 with an SVID's key), verification with the mTLS peer's
certificate, NSM's token policies through the authorize element, and the cap of a caller's expiry
in updatetoken. Real keys and lab certificates (controller.identity), real JWTs (pyjwt); the
peer's certificate is handed over as the servicer context gives it (tests/conformance/
test_nsm_tokens.py does the same over real mTLS sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import grpc
import jwt
import pytest

from controller.nsm.base import clock
from controller.nsm.base.errors import NsmError
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tokens import TokenError, TokenSource, Verifier, decode
from controller.nsm.elements.authorize import Authorize, path_tokens
from controller.nsm.elements.chain import CallContext, Connection
from controller.nsm.elements.updatetoken import UpdateToken
from nsm_api import connection_pb2
from tests.support.svids import TrustDomain, cert_pem, upstream_token

NSC, US, NSE = "spiffe://p4nsm/nsc/a", "spiffe://p4nsm/controller", "spiffe://p4nsm/nse/b"


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> TrustDomain:
    return TrustDomain.make(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> TrustDomain:
    """Another CA, whose SVIDs name the same SPIFFE ids."""
    return TrustDomain.make(tmp_path_factory.mktemp("evil"))


def _path(*tokens: str, index: int) -> Connection:
    segments = [connection_pb2.PathSegment(name=f"s{i}", id=f"id{i}", token=t) for i, t in enumerate(tokens)]
    return Connection(id="id0", path=connection_pb2.Path(index=index, path_segments=segments))


def _refusal(policy_server: Authorize, conn: Connection, ctx: CallContext | None = None) -> str:
    with pytest.raises(NsmError) as info:
        policy_server.inspect(conn, ctx or CallContext())
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    return str(info.value)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_claims(token: str, **changes: object) -> str:
    """The same header and signature over other claims: what a forger who edits a token sends."""
    header, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


# --- signing and verifying -----------------------------------------------------------------------

def test_a_signed_token_is_upstreams_and_verifies_with_the_signers_certificate(domain) -> None:
    signer = domain.signer(NSC)
    token, expires = TokenSource.of("ignored", 60.0, signer).issue(US)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "typ": "JWT"}
    found = domain.verifier().verify(token, cert_pem(signer))
    assert (found.sub, found.aud, found.exp) == (NSC, (US,), expires)
    with pytest.raises(TokenError, match="without a peer certificate"):
        domain.verifier().verify(token)


def test_an_upstream_token_verifies_with_the_peers_certificate(domain) -> None:
    signer = domain.signer(NSC)
    token, _ = upstream_token(signer, US)
    assert domain.verifier().verify(token, cert_pem(signer)).sub == NSC


def test_a_token_signed_by_another_key_for_the_same_id_is_refused(domain, evil) -> None:
    token, _ = evil.tokens(NSC, 60.0).issue(US)
    with pytest.raises(TokenError, match="signature does not verify"):
        domain.verifier().verify(token, cert_pem(domain.signer(NSC)))


def test_an_edited_token_does_not_verify(domain) -> None:
    signer = domain.signer(NSC)
    token, _ = TokenSource.of("", 60.0, signer).issue(US)
    with pytest.raises(TokenError, match="signature does not verify"):
        domain.verifier().verify(_with_claims(token, exp=int(clock.now()) + 10**6), cert_pem(signer))


def test_a_sub_other_than_the_signers_spiffe_id_is_refused(domain) -> None:
    signer = domain.signer(NSC)
    other = jwt.encode({"sub": NSE, "exp": int(clock.now()) + 60}, signer.key, algorithm="ES256")
    with pytest.raises(TokenError, match="has sub 'spiffe://p4nsm/nse/b' but the caller is spiffe://p4nsm/nsc/a"):
        domain.verifier().verify(other, cert_pem(signer))


def test_unsigned_and_symmetric_tokens_are_refused_when_there_is_a_bundle(domain) -> None:
    unsigned, _ = TokenSource(NSC, 60.0).issue(US)
    with pytest.raises(TokenError, match="not signed with ES256"):
        domain.verifier().verify(unsigned, cert_pem(domain.signer(NSC)))
    # HS256 keyed with the (public) certificate: the algorithm-confusion forgery
    peer = cert_pem(domain.signer(NSC))
    header, claims = _b64(json.dumps({"alg": "HS256"}).encode()), _b64(json.dumps({"sub": NSC, "exp": 2**40}).encode())
    signed_part = f"{header}.{claims}"
    hs = f"{signed_part}.{_b64(hmac.new(peer, signed_part.encode(), hashlib.sha256).digest())}"
    with pytest.raises(TokenError, match="not signed with ES256"):
        domain.verifier().verify(hs, peer)
    with pytest.raises(TokenError, match="no trust bundle"):
        Verifier().verify(domain.tokens(NSC, 60.0).issue(US)[0], cert_pem(domain.signer(NSC)))


@pytest.mark.parametrize("token, why", [
    ("", "is missing"),
    ("caller-token", "is not a JWT"),
    ("a.b.c", "is not a JWT"),
    (TokenSource("", 60.0).issue()[0], "has no sub"),
])
def test_what_is_not_a_jwt_with_sub_and_exp_is_refused(token: str, why: str) -> None:
    with pytest.raises(TokenError, match=why):
        decode(token)


# --- the policies through the authorize element ------------------------------------------------

def test_with_a_bundle_a_signed_chained_path_is_allowed_and_each_rule_refuses_its_breach(domain, evil) -> None:
    authorize = Authorize(path_tokens(domain.verifier()))
    signer = domain.signer(NSC)
    client, ctx = TokenSource.of("", 60.0, signer), CallContext(peer_identity=NSC, peer_cert=cert_pem(signer))
    ours = domain.tokens(US, 60.0).issue()[0]
    authorize.inspect(_path(client.issue(US)[0], ours, index=1), ctx)
    # tokens_chained: the caller's token was made for another hop
    assert "path_segments[0].token: aud ['spiffe://p4nsm/other'] does not name the next hop" in \
        _refusal(authorize, _path(client.issue("spiffe://p4nsm/other")[0], ours, index=1), ctx)
    # tokens_expired
    expired = TokenSource.of("", -5.0, signer).issue(US)[0]
    assert "path_segments[0].token: expired" in _refusal(authorize, _path(expired, ours, index=1), ctx)
    # prev_token_signed: unsigned, signed by another key, or over a call without a certificate
    assert "not signed with ES256" in _refusal(authorize, _path(TokenSource(NSC, 60.0).issue(US)[0], ours, index=1), ctx)
    forged = evil.tokens(NSC, 60.0).issue(US)[0]
    assert "signature does not verify" in _refusal(authorize, _path(forged, ours, index=1), ctx)
    assert "without a peer certificate" in _refusal(authorize, _path(client.issue(US)[0], ours, index=1))
    # tokens_valid: not a JWT at all
    assert "path_segments[0].token: is not a JWT" in _refusal(authorize, _path("caller-token", ours, index=1), ctx)


def test_an_upstream_client_token_is_allowed_with_its_mtls_certificate(domain) -> None:
    authorize = Authorize(path_tokens(domain.verifier()))
    signer = domain.signer(NSC)
    token, _ = upstream_token(signer, US)
    ours = domain.tokens(US, 60.0).issue()[0]
    authorize.inspect(_path(token, ours, index=1), CallContext(peer_identity=NSC, peer_cert=cert_pem(signer)))
    # the same token from a caller holding another certificate
    assert "but the caller is spiffe://p4nsm/nsc/x" in _refusal(
        authorize, _path(token, ours, index=1), CallContext(peer_cert=cert_pem(domain.signer("spiffe://p4nsm/nsc/x"))))


def test_without_a_bundle_a_token_must_still_be_an_unexpired_jwt() -> None:
    authorize = Authorize(path_tokens(Verifier()))
    ours = TokenSource(US, 60.0).issue()[0]
    authorize.inspect(_path(TokenSource(NSC, 60.0).issue()[0], ours, index=1), CallContext())
    assert "is not a JWT" in _refusal(authorize, _path("caller-token", ours, index=1))
    assert "is missing" in _refusal(authorize, _path("", ours, index=1))
    assert "expired" in _refusal(authorize, _path(TokenSource(NSC, -5.0).issue()[0], ours, index=1))


def test_the_servers_own_calls_are_not_authorized_again() -> None:
    Authorize(path_tokens(Verifier())).inspect(_path("", "", index=1), CallContext(internal="expired"))


# --- updatetoken ---------------------------------------------------------------------------------

def test_a_callers_expiry_is_cut_to_the_cap_and_to_its_tokens_exp() -> None:
    update = UpdateToken(TokenSource(US, 60.0), max_lifetime=300.0)
    far = clock.parse_rfc3339("9999-12-31T23:59:59Z")
    token, _ = TokenSource(NSC, 10**9).issue(US)
    conn = _path("", "", index=1)
    update.inspect(conn, CallContext(credentials=Credentials(token, far)))
    assert conn.path.path_segments[0].token == token
    assert clock.now() + 299 < clock.to_seconds(conn.path.path_segments[0].expires) <= clock.now() + 300
    short, exp = TokenSource(NSC, 30.0).issue(US)
    conn = _path("", "", index=1)
    update.inspect(conn, CallContext(credentials=Credentials(short, far)))
    assert clock.to_seconds(conn.path.path_segments[0].expires) == exp
    assert decode(conn.path.path_segments[1].token).sub == US
