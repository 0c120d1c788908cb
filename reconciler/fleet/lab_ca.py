"""The lab signing authority: a private "sigstore in a box" for air-gapped labs, demos and tests.

`init` makes a directory holding a Fulcio-like CA (P-384 root and intermediate), a CT log key and a
Rekor-like log key, the `trusted_root.json` a device pins (config `trust.trusted_root`) and the
`trust_config.json` the `sigstore` CLI takes with `--trust-config`. `sign` issues an ephemeral
P-256 leaf certificate for an identity, appends a hashedrekord entry to the directory's log and
returns a bundle that the unmodified sigstore `Verifier` accepts with no network: same chain, SCT,
SET, checkpoint and inclusion-proof checks as for public-good bundles.

Whoever can read this directory can sign as any identity: never pin a lab root on production
devices. Only `cryptography` and `rfc8785` are used, so signing does not import sigstore.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.errors import ReconcilerError
from reconciler.text import utc_time

ROOT_KEY = "root.key.pem"
ROOT_CERT = "root.pem"
INTERMEDIATE_KEY = "intermediate.key.pem"
INTERMEDIATE_CERT = "intermediate.pem"
CT_LOG_KEY = "ctlog.key.pem"
REKOR_KEY = "rekor.key.pem"
LOG = "rekor.log"  # leaf hashes of every entry, hex, one a line: the append-only Merkle tree
TRUSTED_ROOT = "trusted_root.json"
TRUST_CONFIG = "trust_config.json"
_FILES = (
    ROOT_KEY,
    ROOT_CERT,
    INTERMEDIATE_KEY,
    INTERMEDIATE_CERT,
    CT_LOG_KEY,
    REKOR_KEY,
    LOG,
    TRUSTED_ROOT,
    TRUST_CONFIG,
)

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# sigstore-python rejects the `trustedroot.v0.2+json` spelling, which its own schema allows.
_TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
_TRUST_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"
_SIGNING_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.signingconfig.v0.2+json"

# Devices drop trusted-root keys whose validFor.start is after their clock, so start long ago.
_VALID_FROM = datetime(2020, 1, 1, tzinfo=UTC)
_CA_VALID_UNTIL = datetime(2100, 1, 1, tzinfo=UTC)
_LEAF_LIFETIME = timedelta(minutes=10)  # as Fulcio's

# `.invalid` never resolves: the URLs are mandatory in the schema but nothing contacts them.
_FULCIO_URL = "https://fulcio.lab.invalid"
_CT_LOG_URL = "https://ctfe.lab.invalid"
_REKOR_URL = "https://rekor.lab.invalid"
_REKOR_NAME = "rekor.lab.invalid"
_ORGANIZATION = "reconciler lab"

_OIDC_ISSUER = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")  # raw UTF-8; policy.Identity reads it
_OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")  # DER UTF8String
_SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


class LabCAError(ReconcilerError):
    """The lab CA directory cannot be created or used as asked."""


@dataclass(frozen=True)
class _Authority:
    """What signing needs from a lab CA directory."""

    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    ct_log_key: ec.EllipticCurvePrivateKey
    rekor_key: ec.EllipticCurvePrivateKey
    log: Path


def init(directory: Path) -> None:
    """Create a new lab CA in `directory` (made with mode 0700 when missing).

    Refuses when the directory already holds any lab CA file: a second `init` must never replace
    the keys that devices already trust.
    """
    existing = [name for name in _FILES if (directory / name).exists()]
    if existing:
        raise LabCAError(
            f"{directory} already holds a lab CA ({', '.join(existing)}); refusing to overwrite "
            "it. Use that one, or choose a new directory."
        )
    if directory.exists() and not directory.is_dir():
        raise LabCAError(f"{directory} exists and is not a directory")

    # Everything is made in memory first, so a failure here leaves no half-made CA behind.
    root_key = ec.generate_private_key(ec.SECP384R1())
    intermediate_key = ec.generate_private_key(ec.SECP384R1())
    ct_log_key = ec.generate_private_key(ec.SECP256R1())
    rekor_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name("reconciler lab root")
    root = _ca_certificate(
        subject=root_name,
        public_key=root_key.public_key(),
        issuer=root_name,
        issuer_key=root_key,
        path_length=1,
    )
    intermediate = _ca_certificate(
        subject=_name("reconciler lab intermediate"),
        public_key=intermediate_key.public_key(),
        issuer=root_name,
        issuer_key=root_key,
        path_length=0,
    )
    trusted_root = _trusted_root(root, intermediate, ct_log_key, rekor_key)
    trust_config = {
        "mediaType": _TRUST_CONFIG_MEDIA_TYPE,
        "trustedRoot": trusted_root,
        # Enough for verifying; the CLI only reads the services listed here when signing.
        "signingConfig": {"mediaType": _SIGNING_CONFIG_MEDIA_TYPE},
    }

    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        directory.chmod(0o700)  # mkdir's mode is masked by the umask
    secret, public = 0o600, 0o644
    files: list[tuple[str, bytes, int]] = [
        (ROOT_KEY, _private_pem(root_key), secret),
        (INTERMEDIATE_KEY, _private_pem(intermediate_key), secret),
        (CT_LOG_KEY, _private_pem(ct_log_key), secret),
        (REKOR_KEY, _private_pem(rekor_key), secret),
        (LOG, b"", secret),
        (ROOT_CERT, root.public_bytes(serialization.Encoding.PEM), public),
        (INTERMEDIATE_CERT, intermediate.public_bytes(serialization.Encoding.PEM), public),
        (TRUSTED_ROOT, _json_file(trusted_root), public),
        (TRUST_CONFIG, _json_file(trust_config), public),
    ]
    for name, content, mode in files:
        _write_new(directory / name, content, mode)


def sign(
    directory: Path,
    data: bytes,
    *,
    identity: str,
    issuer: str,
    now: datetime | None = None,
) -> bytes:
    """Sign `data` as `identity` (from OIDC issuer `issuer`); returns the bundle's JSON bytes.

    The identity becomes a URI SAN when it contains "://" (like a CI workflow identity), an email
    SAN otherwise. The leaf is valid for 10 minutes around `now` (timezone-aware; default the
    current time), and `now` is also the log's integratedTime, which is when verifiers check the
    chain: it must lie after 2020-01-01, where the lab CA starts.
    """
    if not identity or not issuer:
        raise LabCAError("signing with a lab CA needs both an identity and an issuer")
    signed_at = datetime.now(UTC) if now is None else now
    if signed_at.tzinfo is None:
        raise LabCAError("now must be timezone-aware")
    # X.509 times and integratedTime have whole seconds; equal values keep the checks exact.
    signed_at = signed_at.astimezone(UTC).replace(microsecond=0)
    if signed_at < _VALID_FROM + _LEAF_LIFETIME:
        raise LabCAError(f"cannot sign at {signed_at.isoformat()}: the lab CA starts in 2020")
    authority = _load(directory)

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    certificate = _leaf_certificate(
        authority,
        leaf_key.public_key(),
        identity=identity,
        issuer=issuer,
        not_before=signed_at - _LEAF_LIFETIME / 2,
        sct_time=signed_at,
    )
    signature = leaf_key.sign(data, ec.ECDSA(hashes.SHA256()))
    digest = hashlib.sha256(data).digest()
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    body = rfc8785.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
                "signature": {
                    "content": _b64(signature),
                    "publicKey": {"content": _b64(certificate_pem)},
                },
            },
        }
    )
    leaves = _append_to_log(authority.log, _leaf_hash(body))
    index = len(leaves) - 1
    root_hash = _tree_hash(leaves)
    log_id = _key_id(authority.rekor_key.public_key())
    integrated_time = int(signed_at.timestamp())
    signed_entry_timestamp = authority.rekor_key.sign(
        rfc8785.dumps(
            {
                "body": _b64(body),
                "integratedTime": integrated_time,
                "logID": log_id.hex(),
                "logIndex": index,
            }
        ),
        ec.ECDSA(hashes.SHA256()),
    )
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "certificate": {"rawBytes": _b64(certificate.public_bytes(serialization.Encoding.DER))},
            "tlogEntries": [
                {
                    # uint64 fields are JSON strings in the protobuf mapping; numbers are refused.
                    "logIndex": str(index),
                    "logId": {"keyId": _b64(log_id)},
                    "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
                    "integratedTime": str(integrated_time),
                    "inclusionPromise": {"signedEntryTimestamp": _b64(signed_entry_timestamp)},
                    "inclusionProof": {
                        "logIndex": str(index),
                        "rootHash": _b64(root_hash),
                        "treeSize": str(len(leaves)),
                        "hashes": [_b64(node) for node in _audit_path(index, leaves)],
                        "checkpoint": {
                            "envelope": _checkpoint(
                                authority.rekor_key, log_id, len(leaves), root_hash
                            )
                        },
                    },
                    "canonicalizedBody": _b64(body),
                }
            ],
        },
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(digest)},
            "signature": _b64(signature),
        },
    }
    return json.dumps(bundle).encode()


# --- the CA ---


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    path_length: int,
) -> x509.Certificate:
    # The shape cryptography's WebPKI verifier (which sigstore uses) requires of a CA.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_VALID_FROM)
        .not_valid_after(_CA_VALID_UNTIL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )


def _leaf_certificate(
    authority: _Authority,
    public_key: ec.EllipticCurvePublicKey,
    *,
    identity: str,
    issuer: str,
    not_before: datetime,
    sct_time: datetime,
) -> x509.Certificate:
    """A Fulcio-like leaf: the extension set and order of a real Fulcio certificate."""
    san: x509.GeneralName = (
        x509.UniformResourceIdentifier(identity) if "://" in identity else x509.RFC822Name(identity)
    )
    issuer_ski = authority.intermediate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    try:
        template = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(authority.intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + _LEAF_LIFETIME)
            .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
            # Critical would break the WebPKI profile; missing, sigstore raises ExtensionNotFound.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                critical=False,
            )
            # Critical because the subject is empty (RFC 5280 4.2.1.6).
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(
                x509.UnrecognizedExtension(_OIDC_ISSUER, issuer.encode()), critical=False
            )
            .add_extension(
                x509.UnrecognizedExtension(_OIDC_ISSUER_V2, _der(0x0C, issuer.encode())),
                critical=False,
            )
        )
        # The SCT signs the TBS without the SCT extension (RFC 6962 precertificate): sign the
        # template once for it, then again with the SCT appended last.
        precertificate = template.sign(authority.intermediate_key, hashes.SHA384())
    except ValueError as exc:
        raise LabCAError(f"cannot issue a certificate for identity {identity!r}: {exc}") from exc
    tbs = precertificate.tbs_certificate_bytes
    sct = _signed_certificate_timestamp(authority, tbs, sct_time)
    sct_list = struct.pack(">HH", len(sct) + 2, len(sct)) + sct
    certificate = template.add_extension(
        x509.UnrecognizedExtension(_SCT_LIST, _der(0x04, sct_list)), critical=False
    ).sign(authority.intermediate_key, hashes.SHA384())
    if certificate.tbs_precertificate_bytes != tbs:
        raise LabCAError("internal: the certificate does not match the TBS its SCT signs")
    return certificate


def _signed_certificate_timestamp(authority: _Authority, tbs: bytes, when: datetime) -> bytes:
    """An RFC 6962 v1 SCT for a precertificate entry, signed with the CT log key."""
    timestamp_ms = int(when.timestamp() * 1000)
    issuer_key_hash = hashlib.sha256(_spki(authority.intermediate.public_key())).digest()
    signed = (
        struct.pack(">BBQH", 0, 0, timestamp_ms, 1)  # v1, certificate_timestamp, precert_entry
        + issuer_key_hash
        + len(tbs).to_bytes(3, "big")
        + tbs
        + struct.pack(">H", 0)  # no extensions
    )
    signature = authority.ct_log_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    return (
        struct.pack(">B", 0)
        + _key_id(authority.ct_log_key.public_key())
        + struct.pack(">QH", timestamp_ms, 0)
        + struct.pack(">BBH", 4, 3, len(signature))  # sha256, ecdsa
        + signature
    )


def _trusted_root(
    root: x509.Certificate,
    intermediate: x509.Certificate,
    ct_log_key: ec.EllipticCurvePrivateKey,
    rekor_key: ec.EllipticCurvePrivateKey,
) -> dict[str, object]:
    valid_for = {"start": utc_time(_VALID_FROM)}

    def log(url: str, key: ec.EllipticCurvePrivateKey) -> dict[str, object]:
        return {
            "baseUrl": url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": _b64(_spki(key.public_key())),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": valid_for,
            },
            "logId": {"keyId": _b64(_key_id(key.public_key()))},
        }

    return {
        "mediaType": _TRUSTED_ROOT_MEDIA_TYPE,
        "tlogs": [log(_REKOR_URL, rekor_key)],
        "certificateAuthorities": [
            {
                "subject": {"organization": _ORGANIZATION, "commonName": "reconciler lab"},
                "uri": _FULCIO_URL,
                # Bundles carry only the leaf, so the issuing intermediate must be listed.
                "certChain": {
                    "certificates": [
                        {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))}
                        for cert in (intermediate, root)
                    ]
                },
                "validFor": valid_for,
            }
        ],
        "ctlogs": [log(_CT_LOG_URL, ct_log_key)],
        "timestampAuthorities": [],
    }


# --- the log ---


def _append_to_log(path: Path, leaf: bytes) -> list[bytes]:
    """Append `leaf` to the log file; returns every leaf up to and including it."""
    try:
        with path.open("a+b") as log:
            # Two signers at once must not both take the same index.
            fcntl.flock(log.fileno(), fcntl.LOCK_EX)
            log.seek(0)
            leaves = [bytes.fromhex(line.decode("ascii")) for line in log.read().split()]
            log.write(leaf.hex().encode("ascii") + b"\n")
            log.flush()
            os.fsync(log.fileno())
    except (OSError, ValueError) as exc:
        raise LabCAError(f"cannot append to the lab log {path}: {exc}") from exc
    leaves.append(leaf)
    return leaves


def _leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two below `size` (RFC 6962 section 2.1)."""
    return 1 << ((size - 1).bit_length() - 1)


def _tree_hash(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node_hash(_tree_hash(leaves[:k]), _tree_hash(leaves[k:]))


def _audit_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]): sibling hashes from the leaf up to the root."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*_audit_path(index, leaves[:k]), _tree_hash(leaves[k:])]
    return [*_audit_path(index - k, leaves[k:]), _tree_hash(leaves[:k])]


def _checkpoint(
    rekor_key: ec.EllipticCurvePrivateKey, log_id: bytes, size: int, root_hash: bytes
) -> str:
    """A C2SP signed note over the tree head, signed as Rekor v1 does."""
    note = f"{_REKOR_NAME} - {log_id.hex()[:16]}\n{size}\n{_b64(root_hash)}\n"
    signature = rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
    return f"{note}\n\u2014 {_REKOR_NAME} {_b64(log_id[:4] + signature)}\n"


# --- files and encodings ---


def _load(directory: Path) -> _Authority:
    missing = [name for name in _FILES if not (directory / name).is_file()]
    if missing:
        raise LabCAError(
            f"{directory} is not a lab CA: {', '.join(missing)} missing (create one with init)"
        )
    try:
        intermediate = x509.load_pem_x509_certificate((directory / INTERMEDIATE_CERT).read_bytes())
        return _Authority(
            intermediate_key=_load_key(directory / INTERMEDIATE_KEY),
            intermediate=intermediate,
            ct_log_key=_load_key(directory / CT_LOG_KEY),
            rekor_key=_load_key(directory / REKOR_KEY),
            log=directory / LOG,
        )
    except (OSError, ValueError) as exc:
        raise LabCAError(f"cannot read the lab CA in {directory}: {exc}") from exc


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise LabCAError(f"{path} is not an EC private key")
    return key


def _write_new(path: Path, content: bytes, mode: int) -> None:
    """Write a file that must not exist yet (O_EXCL: a racing init cannot be overwritten)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise LabCAError(
            f"{path} appeared while creating the lab CA; refusing to overwrite"
        ) from exc
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """Log ID as Rekor and CT logs define it: SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(_spki(key)).digest()


def _der(tag: int, value: bytes) -> bytes:
    """One DER TLV (definite length)."""
    size = len(value)
    if size < 0x80:
        return bytes([tag, size]) + value
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json_file(document: object) -> bytes:
    return json.dumps(document, indent=2).encode() + b"\n"


def lab_ca_init(directory: Path, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`reconciler lab-ca init DIR`: 0, or 1 with the reason on `err`."""
    try:
        init(directory)
    except (ReconcilerError, OSError) as exc:
        print(f"lab-ca init: {exc}", file=err or sys.stderr)
        return 1
    print(
        f"lab CA in {directory}: devices pin {directory / 'trusted_root.json'} as "
        "trust.trusted_root; sign with: reconciler release --lab-ca "
        f"{directory} --identity ID --issuer ISSUER",
        file=out or sys.stdout,
    )
    return 0
