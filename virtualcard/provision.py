"""Personalise a card: keys and self-signed certificates, written straight into its state.

This is what a card issuer does at the factory; at run time the same can be done through the
card with ``yubico-piv-tool`` (GENERATE ASYMMETRIC KEY PAIR + PUT DATA).  OpenSC finds keys only
through certificates, and signs with keys outside slot 9A only if the certificate's keyUsage
includes digitalSignature, so every key gets a certificate that says so.
"""

from __future__ import annotations

import datetime
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .state import CardState, PrivateKey

DEFAULT_KEYS: dict[str, tuple[int, str]] = {
    # name -> (slot, algorithm) for `virtualcard up` / provision defaults
    "ec": (0x9A, "EC:secp256r1"),
    "rsa": (0x9D, "RSA:2048"),
}


def make_key(spec: str) -> PrivateKey:
    kind, _, param = spec.partition(":")
    if kind == "EC":
        curve = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}[param]
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(65537, int(param))


def self_signed(key: PrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    is_ec = isinstance(key, ec.EllipticCurvePrivateKey)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=not is_ec,
        data_encipherment=False,
        key_agreement=is_ec,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )


def provision_slot(
    state: CardState, slot: int, spec: str, common_name: str | None = None
) -> x509.Certificate:
    key = make_key(spec)
    cert = self_signed(key, common_name or f"virtualcard slot {slot:02X}")
    state.put_key(slot, key)
    from cryptography.hazmat.primitives.serialization import Encoding

    state.put_certificate(slot, cert.public_bytes(Encoding.DER))
    return cert


def provision_defaults(state: CardState, profile: str = "fast") -> None:
    """Blank card -> EC P-256 in 9A and RSA-2048 in 9D, PIN 123456, PUK 12345678."""
    if not state.initialised:
        state.initialise(profile=profile)
    for name, (slot, spec) in DEFAULT_KEYS.items():
        if state.get_key(slot) is None:
            # OpenSC names the token after the CN of the 9A certificate: make it unique per card
            cn = f"virtualcard-{state.counters.serial}" if slot == 0x9A else f"virtualcard {name} key"
            provision_slot(state, slot, spec, cn)


def clone_piv(source: CardState, state_dir: str | os.PathLike[str], slots: list[int] | None = None) -> CardState:
    """A new PIV card holding ``source``'s private keys, as a key import at personalisation would
    put them there: its own serial, CHUID and certificates (the 9A CN names the token, so OpenSC
    tells the two apart).  For card pools (one key on several cards); ``slots`` copies some keys only."""
    from cryptography.hazmat.primitives.serialization import Encoding

    clone = CardState(state_dir)
    clone.initialise()
    for slot in source.slots_with_keys() if slots is None else slots:
        key = source.get_key(slot)
        assert key is not None
        cn = f"virtualcard-{clone.counters.serial}" if slot == 0x9A else f"virtualcard clone key {slot:02x}"
        clone.put_key(slot, key)
        clone.put_certificate(slot, self_signed(key, cn).public_bytes(Encoding.DER))
    return clone


# -- SmartCard-HSM ---------------------------------------------------------------------------
SCHSM_DEFAULT_KEYS: dict[str, tuple[int, str]] = {
    # name -> (key id, pkcs11-tool --key-type) for `virtualcard up --card sc-hsm`
    "ec": (0x01, "EC:prime256v1"),
    "rsa": (0x02, "rsa:2048"),
}


def schsm_label(serial: int) -> str:
    return f"virtualcard-{serial}"


def schsm_token_labels(serial: int) -> tuple[str, ...]:
    """The PKCS#11 token label OpenSC may show: 0.23 appends the user PIN's label (the card has two
    PINs), 0.26 shows the PKCS#15 label alone."""
    return (schsm_label(serial), f"{schsm_label(serial)} (UserPIN)")


def provision_schsm(env: dict[str, str], serial: int, module: str, timeout: float = 120.0) -> None:
    """Personalise a running, blank SmartCard-HSM the way an operator does, through the real stack.

    ``sc-hsm-tool --initialize`` (SO PIN 3537363231383830, PIN 123456, label
    ``virtualcard-<serial>``), then one ``pkcs11-tool --keypairgen`` per default key: the keys are
    generated on the card and OpenSC writes its own descriptors.  ``env`` must show OpenSC this
    card only (``Harness.opensc_conf_for``).
    """
    from .schsm import DEFAULT_PIN, DEFAULT_SO_PIN

    full_env = {**os.environ, **env}

    def run(cmd: list[str]) -> None:
        r = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({r.returncode}): {r.stdout}{r.stderr}")

    run(["sc-hsm-tool", "--initialize", "--so-pin", DEFAULT_SO_PIN, "--pin", DEFAULT_PIN,
         "--label", schsm_label(serial)])
    for name, (key_id, key_type) in SCHSM_DEFAULT_KEYS.items():
        run(["pkcs11-tool", "--module", module, "--login", "--pin", DEFAULT_PIN, "--keypairgen",
             "--key-type", key_type, "--id", f"{key_id:02x}", "--label", f"virtualcard {name} key"])
