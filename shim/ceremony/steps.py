"""The ceremony's steps, run one at a time and in order over a :class:`~shim.ceremony.state.Ceremony`.

Each step says what it is about to do, opens its window (the shim then admits only the functions
the step needs, :mod:`shim.ceremony.policy`), does its card operations (each once, see
:meth:`Ceremony.op`), closes the window, and says what the audit log holds for it: its sequence
range and the calls in it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from shim.ceremony import cards, transport
from shim.ceremony.policy import Open, write_window
from shim.ceremony.state import Ceremony, OrderError, utc_now

PIN_VAR, SO_PIN_VAR = "SC4_CEREMONY_PIN", "SC4_CEREMONY_SO_PIN"
BIND_STEPS = ("zsk-keygen", "sign-ksr", "export-ds")

#: What each step does, in the words the operator reads before it runs (seed script step, DPS).
DESCRIPTIONS: dict[str, str] = {
    "init-cards": "Initialise every card (erase) with an m-of-m DKEK share set; each custodian's share is "
                  "written password-protected to files/ and imported into every card; the key check values "
                  "must agree.",
    "generate-ksk": "Generate the KSK inside the primary card; save its public key to files/.",
    "backup": "Wrap the KSK under the DKEK (encrypted backup in files/), unwrap it into every backup card, "
              "and prove each clone holds the same key (same public key, and a signature by the clone that "
              "verifies with the primary's public key).",
    "zsk-keygen": "Pre-generate the ZSKs for the period with dnssec-ksr keygen (randomness from the card) "
                  "and write the key signing request.",
    "sign-ksr": "Sign the key signing request with the KSK on the card (dnssec-ksr sign): the SKR.",
    "export-ds": "Export the DS records for the parent.",
    "encrypt-zsks": "Encrypt the ZSK material for transport to the online signer.",
    "close": "Close the ceremony: a signed audit checkpoint over the chain head, then the ceremony record.",
}


Say = Callable[[str], None]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def shim_conf_text(backend: str, audit_log: str, window: str) -> str:
    """The shim configuration every tool of the ceremony loads (SC4DNSSEC_CONF)."""
    return (f"# written by sc4dnssec ceremony start\nbackend = {json.dumps(backend)}\n\n[audit]\n"
            f"path = {json.dumps(audit_log)}\nfsync = \"always\"\n\n[policy]\n"
            f"ceremony_window = {json.dumps(window)}\n")


def audit_summary(log: str, first: int, last: int) -> str:
    """The calls in seq ``first..last`` of ``log``: ``C_Fn rv xN`` in order of first appearance."""
    counts: Counter[str] = Counter()
    denied = 0
    with open(log, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not first <= rec.get("seq", 0) <= last or rec.get("kind") == "intent":
                continue
            if rec.get("kind") != "call":
                counts[f"{rec['kind']} record"] += 1
                continue
            counts[f"{rec['fn']} {rec['rv']}"] += 1
            denied += rec["rv"] == "CKR_ACTION_PROHIBITED"
    parts = [f"{k} x{n}" if n > 1 else k for k, n in counts.items()]
    return ", ".join(parts) + (f" ({denied} denied by the ceremony policy)" if denied else "")


class Runner:
    """Runs the steps of one ceremony; ``env`` is the operator's environment (PC/SC socket...)."""

    def __init__(self, cer: Ceremony, say: Say = print, env: Mapping[str, str] | None = None,
                 ask: Callable[[str], str] = getpass.getpass) -> None:
        self.cer = cer
        self.say = say
        self.env = dict(os.environ if env is None else env)
        self._ask = ask
        self._shares: dict[int, bytes] = {}
        self._secrets: dict[str, str] = {}

    # -- secrets ---------------------------------------------------------------------------
    def secret(self, name: str, prompt: str) -> str:
        """A secret from the file named at the start (never stored in the ceremony), else asked for."""
        if name not in self._secrets:
            path = self.cer.doc.get("secret_files", {}).get(name)
            if path:
                self._secrets[name] = Path(path).read_text().rstrip("\n")
            else:
                self._secrets[name] = self._ask(f"{prompt}: ")
        return self._secrets[name]

    def tools(self) -> cards.Tools:
        pins = {PIN_VAR: self.secret("pin", "User PIN of the cards"),
                SO_PIN_VAR: self.secret("so_pin", "SO PIN of the cards (16 hex digits)")}
        env = {**self.env, "SC4DNSSEC_CONF": self.cer.shim_conf}
        env.pop("SC4DNSSEC_BACKEND", None)  # the ceremony's configuration names the backend
        env.pop("SC4DNSSEC_AUDIT_LOG", None)
        return cards.Tools(env, self.cer.doc["module"], pins)

    # -- running a step --------------------------------------------------------------------
    def run(self, name: str) -> None:
        cer = self.cer
        cer.check_order(name)
        resumed = cer.status(name) == "started"
        self.say(f"== step {cer.plan.index(name) + 1}/{len(cer.plan)}: {name}" + (" (resumed)" if resumed else ""))
        self.say(f"   {DESCRIPTIONS[name]}")
        impl = getattr(self, "_" + name.replace("-", "_"))
        cer.begin(name)
        write_window(cer.window, Open(cer.doc["id"], name))
        try:
            impl(name)
        except BaseException as e:
            write_window(cer.window, None)
            cer.interrupted(name, f"{type(e).__name__}: {e}")
            raise
        write_window(cer.window, None)
        cer.finish(name)
        run = cer.doc["steps"][name]["runs"][-1]
        if run["seq_last"] > run["seq_after"]:
            first, last = run["seq_after"] + 1, run["seq_last"]
            self.say(f"   audit log: seq {first}..{last}: {audit_summary(cer.audit_log, first, last)}")
        else:
            self.say("   audit log: no records (this step made no PKCS#11 call)")
        self.say(f"   done at {utc_now()}")

    def skip(self, name: str, why: str) -> None:
        self.cer.check_order(name)
        self.cer.begin(name)
        self.cer.note(name, f"skipped: {why}")
        self.cer.finish(name, "skipped")
        self.say(f"== step {name}: skipped ({why})")

    # -- 1 ---------------------------------------------------------------------------------
    def _share(self, i: int) -> bytes:
        if i not in self._shares:
            self.say(f"  decrypting DKEK share {i} (10 million key-derivation rounds, as sc-hsm-tool)")
            pw = self.secret(f"share_{i}", f"Password of DKEK share {i}")
            self._shares[i] = cards.read_share_file(self.cer.files / f"dkek-share-{i}.pbe", pw.encode())
        return self._shares[i]

    def _init_cards(self, step: str) -> None:
        cer, tools = self.cer, self.tools()
        m = int(cer.doc["dkek_shares"])
        custodians = cer.doc["custodians"]
        for i in range(1, m + 1):
            path = cer.files / f"dkek-share-{i}.pbe"

            def create(i: int = i, path: Path = path) -> dict[str, Any]:
                self.say(f"  DKEK share {i} of {m} (custodian {custodians[i - 1]}): creating {path.name} "
                         "(10 million key-derivation rounds)")
                share = secrets.token_bytes(32)
                pw = self.secret(f"share_{i}", f"Password of DKEK share {i} ({custodians[i - 1]})")
                if path.exists():
                    path.unlink()  # written by a run that stopped before recording it: never imported
                cards.write_share_file(path, share, pw.encode())
                self._shares[i] = share
                return {"file": path.name, "custodian": custodians[i - 1]}

            cer.op(step, f"share-{i}:create", create, self.say)
        for card in cer.doc["cards"]:
            role, reader = card["role"], card["reader"]

            def initialize(card: dict[str, Any] = card) -> dict[str, Any]:
                self.say(f"  {card['role']}: sc-hsm-tool --initialize --dkek-shares {m} --label {card['label']} "
                         f"(reader {card['reader']})")
                tools.initialize(card["reader"], so_pin_var=SO_PIN_VAR, pin_var=PIN_VAR, dkek_shares=m,
                                 label=card["label"])
                return {"label": card["label"]}

            cer.op(step, f"{role}:initialize", initialize, self.say)
            for i in range(1, m + 1):

                def imp(i: int = i, reader: str = reader, role: str = role) -> dict[str, Any]:
                    st = tools.hsm_status(reader)
                    if st.shares != m:
                        raise cards.CardError(f"{role}: the card expects {st.shares} DKEK shares, not {m}")
                    if st.shares - st.outstanding >= i:
                        self.say(f"  {role}: DKEK share {i} is already on the card (not imported again)")
                        return {"outstanding": st.outstanding, "found_on_card": True}
                    self.say(f"  {role}: importing DKEK share {i}")
                    st = tools.import_share(reader, self._share(i))
                    return {"outstanding": st.outstanding}

                cer.op(step, f"{role}:import-share-{i}", imp, self.say)

            def check(role: str = role, reader: str = reader) -> dict[str, Any]:
                st = tools.hsm_status(reader)
                if not st.complete:
                    raise cards.CardError(f"{role}: DKEK incomplete ({st.outstanding} share(s) missing)")
                serial = tools.slot_of(reader).serial
                self.say(f"  {role}: serial {serial}, DKEK key check value {st.kcv}")
                return {"kcv": st.kcv, "serial": serial}

            got = cer.op(step, f"{role}:check", check, self.say)
            card["kcv"], card["serial"] = got["kcv"], got["serial"]
        kcvs = {c["kcv"] for c in cer.doc["cards"]}
        if len(kcvs) != 1:
            raise cards.CardError("the cards' DKEK key check values differ: "
                                  + ", ".join(f"{c['role']} {c['kcv']}" for c in cer.doc["cards"]))
        cer.doc["dkek_kcv"] = kcvs.pop()
        cer.save()
        self.say(f"  every card holds the DKEK with key check value {cer.doc['dkek_kcv']}")

    # -- 2 ---------------------------------------------------------------------------------
    def _generate_ksk(self, step: str) -> None:
        cer, tools = self.cer, self.tools()
        primary = cer.doc["cards"][0]
        label = cer.doc["ksk_label"]

        def generate() -> dict[str, Any]:
            pub = tools.public_key(primary["reader"], label)
            found = pub is not None
            if found:
                self.say(f"  {label} is already on the primary card (made by a run that stopped): not generated again")
            else:
                self.say(f"  pkcs11-tool --keypairgen --key-type EC:{cer.doc['curve']} --label {label} (primary)")
                tools.generate_ec_key(primary["reader"], label, cer.doc["ksk_id"], curve=cer.doc["curve"],
                                      pin_var=PIN_VAR)
                pub = tools.public_key(primary["reader"], label)
            if pub is None:
                raise cards.CardError(f"{label}: no public key on the primary card after generation")
            (cer.files / "ksk.pub.der").write_bytes(pub)
            key = serialization.load_der_public_key(pub)
            (cer.files / "ksk.pub.pem").write_bytes(
                key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            ref = tools.key_ref(primary["reader"], label)
            if ref is None:
                raise cards.CardError(f"{label}: pkcs15-tool shows no key reference")
            return {"key_ref": ref, "found_on_card": found, "spki_sha256": hashlib.sha256(pub).hexdigest()}

        got = cer.op(step, "primary:generate", generate, self.say)
        cer.doc["ksk"] = {"label": label, "key_ref": got["key_ref"], "spki_sha256": got["spki_sha256"]}
        cer.save()
        self.say(f"  KSK {label}: key reference {got['key_ref']}, public key SHA-256 {got['spki_sha256']}")

    # -- 3 ---------------------------------------------------------------------------------
    def _backup(self, step: str) -> None:
        cer, tools = self.cer, self.tools()
        primary, clones = cer.doc["cards"][0], cer.doc["cards"][1:]
        ksk = cer.doc["ksk"]
        blob = cer.files / "ksk.wrapped"
        pub_der = (cer.files / "ksk.pub.der").read_bytes()

        def wrap() -> dict[str, Any]:
            if blob.exists():
                blob.unlink()  # a run that stopped before recording it
            self.say(f"  sc-hsm-tool --wrap-key {blob.name} --key-reference {ksk['key_ref']} (primary)")
            tools.wrap_key(primary["reader"], ksk["key_ref"], blob, pin_var=PIN_VAR)
            return {"file": blob.name, "sha256": sha256_file(blob)}

        cer.op(step, "primary:wrap", wrap, self.say)
        for clone in clones:
            role, reader = clone["role"], clone["reader"]

            def unwrap(role: str = role, reader: str = reader) -> dict[str, Any]:
                st = tools.hsm_status(reader)
                if not st.complete or st.kcv != cer.doc["dkek_kcv"]:
                    raise cards.CardError(
                        f"{role} refused: its DKEK key check value is {st.kcv or 'none'} "
                        f"({'complete' if st.complete else 'incomplete'}), the primary's is {cer.doc['dkek_kcv']}; "
                        "the backup was not unwrapped into it")
                have = tools.public_key(reader, ksk["label"])
                if have is None:
                    self.say(f"  {role}: sc-hsm-tool --unwrap-key {blob.name} --key-reference {ksk['key_ref']}")
                    tools.unwrap_key(reader, ksk["key_ref"], blob, pin_var=PIN_VAR)
                    have = tools.public_key(reader, ksk["label"])
                else:
                    self.say(f"  {role}: {ksk['label']} is already on the card (not unwrapped again)")
                if have != pub_der:
                    raise cards.CardError(f"{role}: the public key of {ksk['label']} differs from the primary's")
                return {"spki_sha256": hashlib.sha256(have).hexdigest()}

            cer.op(step, f"{role}:unwrap", unwrap, self.say)

            def prove(role: str = role, reader: str = reader) -> dict[str, Any]:
                challenge = hashlib.sha256(f"{cer.doc['id']} {role} {secrets.token_hex(16)}".encode()).digest()
                sig = tools.sign(reader, ksk["label"], challenge, pin_var=PIN_VAR)
                key = serialization.load_der_public_key(pub_der)
                assert isinstance(key, ec.EllipticCurvePublicKey)
                half = len(sig) // 2
                der = utils.encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
                key.verify(der, challenge, ec.ECDSA(utils.Prehashed(hashes.SHA256())))  # raises if it differs
                self.say(f"  {role}: signed a fresh challenge; the primary's public key verifies it")
                return {"challenge": challenge.hex(), "signature": sig.hex()}

            cer.op(step, f"{role}:prove", prove, self.say)

    # -- 4-6: BIND 9.20 (shim.ceremony.bind) -----------------------------------------------
    def _bind(self) -> tuple[Any, Any, Any, Path]:
        """shim.ceremony.bind, its ToolEnv, the KSK's BIND key files and the BIND work directory.

        Imported by name at run time: the BIND steps run where BIND 9.20 is (a Debian 13 laptop);
        a ceremony started with --without-bind never gets here."""
        import importlib
        from datetime import UTC, datetime

        from shim.openssl_conf import PROVIDER_MODULE, openssl_cnf

        try:
            bind = importlib.import_module("shim.ceremony.bind")
        except ImportError as e:
            raise OrderError(f"the BIND steps need shim.ceremony.bind ({e}); start with --without-bind") from None
        cer = self.cer
        work = cer.dir / "bind"
        work.mkdir(exist_ok=True)
        cnf = work / "openssl.cnf"
        if not cnf.exists():
            cnf.write_text(openssl_cnf(cer.doc["module"], cer.doc.get("provider") or PROVIDER_MODULE))
        tools = self.tools()
        plain = {k: v for k, v in tools.env.items() if k != "OPENSSL_CONF"}
        env = bind.ToolEnv(signing={**plain, "OPENSSL_CONF": str(cnf)}, plain=plain, module=cer.doc["module"])
        pin_file = cer.doc.get("secret_files", {}).get("pin")
        if not pin_file:
            raise OrderError("the BIND steps read the PIN from a file (pin-source=): start with --pin-file")
        primary = cer.doc["cards"][0]
        token = tools.slot_of(primary["reader"]).label or primary["label"]
        from urllib.parse import quote

        uri = (f"pkcs11:token={quote(token, safe='')};object={quote(cer.doc['ksk']['label'], safe='')};"
               f"pin-source={pin_file}")
        start = datetime.strptime(cer.doc["schedule_start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        schedule = bind.Schedule.days(int(cer.doc.get("period_days", 90)), start=start)
        if cer.done_op("zsk-keygen", "ksk-files"):
            base = Path(cer.op_result("zsk-keygen", "ksk-files")["base"])
            ksk = bind.KskRef(uri, base)
        else:
            ksk = None
        return bind, env, (ksk, uri, schedule), work

    def _keep(self, produced: Path) -> dict[str, Any]:
        """A BIND output copied into files/, so the record hashes it."""
        dest = self.cer.files / produced.name
        dest.write_bytes(produced.read_bytes())
        return {"file": dest.name, "sha256": sha256_file(dest)}

    def _zsk_keygen(self, step: str) -> None:
        cer = self.cer
        bind, env, (_, uri, schedule), work = self._bind()

        def ksk_files() -> dict[str, Any]:
            ref = bind.ksk_from_card(cer.doc["zone"], work, uri, env, since=schedule.start)
            self.say(f"  dnssec-keyfromlabel: {ref.base.name} (key tag {ref.tag}) points at the KSK on the card")
            return {"base": str(ref.base), "tag": ref.tag}

        base = Path(cer.op(step, "ksk-files", ksk_files, self.say)["base"])
        ksk = bind.KskRef(uri, base)

        def seed() -> dict[str, Any]:
            got = bind.seed_kernel_from_card(work, ksk, env)
            self.say(f"  {got.nbytes} bytes from the card's RNG into the kernel's pool"
                     + ("; reseeded" if got.reseeded else f" ({got.reason})"))
            return {"nbytes": got.nbytes, "reseeded": got.reseeded}

        cer.op(step, "card-rng", seed, self.say)

        def keygen() -> dict[str, Any]:
            out = bind.pregenerate_zsks(cer.doc["zone"], work, ksk, schedule, env)
            ksr, zsks = out[-1], out[:-1]
            self.say(f"  dnssec-ksr keygen + request: {len(zsks)} ZSK file(s), KSR {ksr.name}")
            return {"zsks": [str(p) for p in zsks], "ksr": str(ksr), **self._keep(ksr)}

        got = cer.op(step, "keygen", keygen, self.say)
        cer.doc["zsk_material"] = [p for p in got["zsks"] if p.endswith(".private")] + \
            [p for p in got["zsks"] if not p.endswith(".private")]
        cer.save()

    def _sign_ksr(self, step: str) -> None:
        cer = self.cer
        bind, env, (ksk, _, schedule), work = self._bind()
        ksr = Path(cer.op_result("zsk-keygen", "keygen")["ksr"])

        def sign() -> dict[str, Any]:
            skr = bind.sign_ksr(cer.doc["zone"], work, ksk, ksr, schedule, env)
            bundles = bind.skr_bundles(skr)
            self.say(f"  dnssec-ksr sign: SKR {skr.name}, {len(bundles)} bundle(s), every DNSKEY RRset signed by "
                     f"KSK {ksk.tag}")
            return {"bundles": len(bundles), **self._keep(skr)}

        cer.op(step, "sign", sign, self.say)

    def _export_ds(self, step: str) -> None:
        cer = self.cer
        bind, env, (ksk, _, _), work = self._bind()

        def ds() -> dict[str, Any]:
            path = bind.export_ds(cer.doc["zone"], work, ksk, env)
            self.say(f"  DS for the parent: {path.read_text().strip()}")
            return self._keep(path)

        cer.op(step, "ds", ds, self.say)

    # -- 7 ---------------------------------------------------------------------------------
    def _encrypt_zsks(self, step: str) -> None:
        cer = self.cer
        material = [Path(p) for p in cer.doc.get("zsk_material", [])]
        if not material:
            raise OrderError("no ZSK material to encrypt (step zsk-keygen made none, and none was named at start)")
        out = cer.files / "zsks.sealed"
        recipient = cer.doc.get("transport_recipient")

        def seal() -> dict[str, Any]:
            if recipient:
                key = serialization.load_pem_public_key(Path(recipient).read_bytes())
                if not isinstance(key, X25519PublicKey):
                    raise OrderError(f"{recipient}: not an X25519 public key")
                header = transport.seal(material, out, recipient=key)
                how = f"to the X25519 key {recipient}"
            else:
                phrase = self.secret("transport", "Transport passphrase for the ZSK material")
                header = transport.seal(material, out, passphrase=phrase.encode())
                how = "with the transport passphrase (scrypt)"
            self.say(f"  sealed {len(material)} file(s) into {out.name} {how}")
            return {"file": out.name, "sha256": sha256_file(out), "kdf": header["kdf"]["name"],
                    "files": {p.name: sha256_file(p) for p in material}}

        cer.op(step, "seal", seal, self.say)

    # -- 8 ---------------------------------------------------------------------------------
    def _close(self, step: str) -> None:
        from shim.audit import signing
        from shim.audit.checkpoint import checkpoint

        cer = self.cer

        def sign() -> dict[str, Any]:
            key = signing.load_private(cer.doc["checkpoint_key"])
            cp = checkpoint(cer.audit_log, key, program="sc4dnssec-ceremony")
            entry = signing.read_checkpoints(cp.path)[-1]
            self.say(f"  signed checkpoint at seq {cp.seq} over the chain head seq {cp.head_seq} "
                     f"{cp.head_sha256[:16]}... (key {entry['key_id']})")
            return {"seq": cp.seq, "head_seq": cp.head_seq, "head_sha256": cp.head_sha256,
                    "line_sha256": cp.line_sha256, "sig": entry["sig"], "key_id": entry["key_id"],
                    "signed_at": entry["signed_at"], "alg": entry["alg"], "detached": cp.path}

        cer.doc["checkpoint"] = cer.op(step, "checkpoint", sign, self.say)
        cer.save()
