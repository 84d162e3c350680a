"""Writes the hand-made consumer sequences (``sequences/*.jsonl``) from ../shared/facts.

Run ``python -m conformance.gen_sequences`` after changing this file; the .jsonl files are the data
the suite reads (and what a recorded field log looks like after ``conformance.record``).  Counts are
scaled down (a few signatures, not 2011); hypothesis varies sizes and data around them.
"""

from __future__ import annotations

from typing import Any

from conformance.sequence import SEQUENCES_DIR, Sequence, Step, dump

EC_PUB = {"CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_KEY_TYPE": "CKK_EC", "CKA_TOKEN": False, "CKA_PRIVATE": False,
          "CKA_VERIFY": True, "CKA_EC_PARAMS": "${ec.params}", "CKA_EC_POINT": "${ec.point}"}
RSA_PUB = {"CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_KEY_TYPE": "CKK_RSA", "CKA_TOKEN": False, "CKA_PRIVATE": False,
           "CKA_VERIFY": True, "CKA_MODULUS": "${rsa.modulus}", "CKA_PUBLIC_EXPONENT": "${rsa.exponent}"}


class B:
    def __init__(self, name: str, source: str, **meta: Any) -> None:
        self.seq = Sequence(name, [], {"consumer": name, "source": source, **meta})
        self.n = 0

    def __call__(self, fn: str, expect: str | None = None, check: dict[str, Any] | None = None,
                 ctx: str = "main", note: str | None = None, **args: Any) -> B:
        self.seq.steps.append(Step(fn, args, "CKR_OK", expect, check or {}, ctx, note))
        return self

    def sym(self, prefix: str = "o") -> str:
        self.n += 1
        return f"${prefix}{self.n}"

    def find(self, s: str, template: dict[str, Any], count: int | None = 1, max_count: int = 1,
             ctx: str = "main") -> list[str]:
        syms = [self.sym() for _ in range(max(count or 1, 1))]
        self("C_FindObjectsInit", session=s, template=template, ctx=ctx)
        self("C_FindObjects", session=s, maxObjectCount=max(max_count, len(syms)), found=syms,
             check={"found": count} if count is not None else {"found_min": 1}, ctx=ctx)
        self("C_FindObjectsFinal", session=s, ctx=ctx)
        return syms

    def attr(self, s: str, o: str, name: str, expect: str | None = None, check: dict[str, Any] | None = None,
             ctx: str = "main") -> None:
        """Size query, then the value with a buffer of that size (BIND 9.16 segfaults if they disagree)."""
        self("C_GetAttributeValue", expect, session=s, object=o, template={name: None}, ctx=ctx)
        self("C_GetAttributeValue", expect, check, session=s, object=o, template={name: "<1 bytes>"}, ctx=ctx)

    def save(self) -> None:
        dump(self.seq, SEQUENCES_DIR / f"{self.seq.name}.jsonl")


def digest(b: B, s: str, tag: str, updates: int = 5, ctx: str = "main") -> None:
    b("C_DigestInit", session=s, mechanism="CKM_SHA256", ctx=ctx)
    for u in range(updates):
        b("C_DigestUpdate", session=s, data=f"${{data.{tag}u{u}}}", data_len=[12, 40, 7, 96, 33][u % 5], ctx=ctx)
    b("C_DigestFinal", session=s, digest_len=32, check={"digest_len": 32}, ctx=ctx)


def bind916_start(b: B, gen: bool = True) -> None:
    b("C_Initialize", init_flags="0x2")
    b("C_GetSlotList", tokenPresent=False)
    b("C_GetSlotList", tokenPresent=False)
    b("C_GetTokenInfo", slot="$slot")
    need = {"CKM_EC_KEY_PAIR_GEN": ["CKF_GENERATE_KEY_PAIR"], "CKM_ECDSA": ["CKF_SIGN", "CKF_VERIFY"]}
    for m in ("CKM_RSA_PKCS_KEY_PAIR_GEN", "CKM_RSA_PKCS", "CKM_MD5_RSA_PKCS", "CKM_SHA1_RSA_PKCS",
              "CKM_SHA256_RSA_PKCS", "CKM_SHA512_RSA_PKCS", "CKM_EC_KEY_PAIR_GEN", "CKM_ECDSA",
              "CKM_EC_EDWARDS_KEY_PAIR_GEN", "CKM_EDDSA"):
        if m in need:
            b("C_GetMechanismInfo", slot="$slot", mechanism=m, check={"flags_include": need[m]},
              note="ECDSA slot admission")
        else:
            b("C_GetMechanismInfo", "any", slot="$slot", mechanism=m, note="RSA/EdDSA admission only")


def bind916() -> None:
    src = "consumers-bind.md: BIND 9.16 native PKCS#11"
    b = B("bind916-startup", src)
    bind916_start(b)
    b("C_Finalize").save()

    b = B("bind916-keyfromlabel", src)
    bind916_start(b)
    b("C_OpenSession", slot="$slot", flags="0x4", opened="$s1")
    b("C_Login", session="$s1", user="CKU_USER")
    (pub,) = b.find("$s1", {"CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_KEY_TYPE": "CKK_EC", "CKA_TOKEN": True,
                            "CKA_LABEL": "${ec.label}"})
    b.attr("$s1", pub, "CKA_EC_PARAMS")
    b.attr("$s1", pub, "CKA_EC_POINT", check={"ec_point_der": True})
    b.find("$s1", {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_KEY_TYPE": "CKK_EC", "CKA_TOKEN": True,
                   "CKA_LABEL": "${ec.label}"})
    b("C_CloseSession", session="$s1")("C_Finalize").save()

    for kind, n_sessions in (("ecdsa", 1), ("ecdsa-n4", 4), ("rsa", 1)):
        b = B(f"bind916-signzone-{kind}", src, needs=["rsa"] if kind == "rsa" else ["ec"])
        bind916_start(b)
        sessions = [f"$s{i + 1}" for i in range(n_sessions)]
        for s in sessions:
            b("C_OpenSession", slot="$slot", flags="0x4", opened=s)
        b("C_Login", session=sessions[0], user="CKU_USER")
        k = "rsa" if kind == "rsa" else "ec"
        (priv,) = b.find(sessions[0], {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_TOKEN": True,
                                       "CKA_LABEL": f"${{{k}.label}}"})
        for r in range(4 if n_sessions > 1 else 3):
            s = sessions[r % n_sessions]
            if k == "ec":
                digest(b, s, f"r{r}")
                b("C_SignInit", session=s, mechanism="CKM_ECDSA", key=priv)
                b("C_Sign", session=s, data="${digest}", data_len=32, signature_len=64, check={"signature_len": 64})
                digest(b, s, f"r{r}")  # the self-check re-hashes the same RRset
                pub = b.sym()
                b("C_CreateObject", session=s, template=EC_PUB, object=pub)
                b("C_VerifyInit", session=s, mechanism="CKM_ECDSA", key=pub)
                b("C_Verify", session=s, data="${digest}", signature="${sig}")
            else:
                b("C_SignInit", session=s, mechanism="CKM_SHA256_RSA_PKCS", key=priv)
                for u in range(3):
                    b("C_SignUpdate", session=s, data=f"${{data.r{r}u{u}}}", data_len=[40, 7, 96][u])
                b("C_SignFinal", session=s, signature_len=256)
                pub = b.sym()
                b("C_CreateObject", session=s, template=RSA_PUB, object=pub)
                b("C_VerifyInit", session=s, mechanism="CKM_SHA256_RSA_PKCS", key=pub)
                for u in range(3):
                    b("C_VerifyUpdate", session=s, data=f"${{data.r{r}u{u}}}", data_len=[40, 7, 96][u])
                b("C_VerifyFinal", session=s, signature="${sig}")
            b("C_DestroyObject", session=s, object=pub)
        for s in sessions:
            b("C_CloseSession", session=s)
        b("C_Finalize").save()


def bind918() -> None:
    src = "consumers-bind.md: BIND 9.18 + libp11 engine"

    def start(b: B) -> None:
        b("C_Initialize")("C_GetInfo")
        b("C_GetSlotList", tokenPresent=False)("C_GetSlotList", tokenPresent=False)
        b("C_GetSlotInfo", slot="$slot")("C_GetTokenInfo", slot="$slot")
        b("C_OpenSession", slot="$slot", flags="0x4", opened="$s1")

    b = B("bind918-libp11-keyfromlabel", src)
    start(b)
    b("C_FindObjectsInit", session="$s1", template={"CKA_CLASS": "CKO_PRIVATE_KEY"})
    b("C_FindObjects", session="$s1", maxObjectCount=1, note="before login: cards hide private keys")
    b("C_FindObjectsFinal", session="$s1")
    b("C_Login", session="$s1", user="CKU_USER")
    b("C_FindObjectsInit", session="$s1", template={"CKA_CLASS": "CKO_PRIVATE_KEY"})
    b("C_FindObjects", session="$s1", maxObjectCount=1, found=["$k1"], check={"found": 1})
    b("C_FindObjects", session="$s1", maxObjectCount=1)
    b("C_FindObjectsFinal", session="$s1")
    for a in ("CKA_CLASS", "CKA_KEY_TYPE", "CKA_ID", "CKA_LABEL", "CKA_ALWAYS_AUTHENTICATE"):
        b.attr("$s1", "$k1", a, expect="any" if a == "CKA_ALWAYS_AUTHENTICATE" else None)
    (pub,) = b.find("$s1", {"CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_ID": "${ec.id}"})
    for a in ("CKA_CLASS", "CKA_KEY_TYPE", "CKA_ID", "CKA_LABEL", "CKA_EC_PARAMS"):
        b.attr("$s1", pub, a)
    b.attr("$s1", pub, "CKA_EC_POINT", check={"ec_point_der": True})
    b("C_FindObjectsInit", session="$s1", template={"CKA_CLASS": "CKO_PUBLIC_KEY"})
    b("C_FindObjects", session="$s1", maxObjectCount=1, check={"found": 1})
    b("C_FindObjectsFinal", session="$s1")
    b("C_GetAttributeValue", "CKR_OBJECT_HANDLE_INVALID", session="$s1", object=0, template={"CKA_CLASS": None},
      note="libp11 reads handle 0 after an empty search")
    b.save()  # libp11 never calls C_Finalize

    for k, mech, n, buf in (("ec", "CKM_ECDSA", 32, 72), ("rsa", "CKM_RSA_PKCS", 51, 256)):
        b = B(f"bind918-libp11-signzone-{k}", src, needs=[k])
        start(b)
        b("C_Login", session="$s1", user="CKU_USER")
        (priv,) = b.find("$s1", {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_ID": f"${{{k}.id}}"})
        for _ in range(4):
            b("C_SignInit", session="$s1", mechanism=mech, key=priv)
            b("C_Sign", session="$s1", data_len=n, signature_len=buf, note="OpenSSL-sized (long) buffer")
        b.save()


def bind920() -> None:
    src = "consumers-bind920.md: BIND 9.20 + pkcs11-provider (early load)"

    def start(b: B) -> None:
        b("C_GetInterface", "any", note="only if exported")
        b("C_Initialize", init_flags="0x2")("C_GetInfo")
        b("C_GetSlotList", tokenPresent=False)("C_GetSlotList", tokenPresent=False)
        b("C_GetSlotInfo", slot="$slot")("C_GetTokenInfo", slot="$slot")
        b("C_GetMechanismList", slot="$slot")
        b("C_GetMechanismList", slot="$slot", check={"mechanisms_include": ["CKM_ECDSA", "CKM_RSA_PKCS"]},
          note="without raw ECDSA/RSA_PKCS the provider refuses to sign")
        b("C_OpenSession", slot="$slot", flags="0x4", opened="$s0")
        b("C_GetSessionInfo", session="$s0")
        b("C_GenerateRandom", "any", session="$s0", randomLen=8, note="CKR_FUNCTION_NOT_SUPPORTED tolerated")

    b = B("bind920-start", src)
    start(b)
    b("C_CloseSession", session="$s0")("C_Finalize").save()

    b = B("bind920-keyfromlabel", src)
    start(b)
    b("C_Login", session="$s0", user="CKU_USER")
    found = ["$o1", "$o2"]
    b("C_FindObjectsInit", session="$s0", template={"CKA_LABEL": "${ec.label}"})
    b("C_FindObjects", session="$s0", maxObjectCount=16, found=found, check={"found_min": 2},
      note="exactly one private and one public key object")
    b("C_FindObjectsFinal", session="$s0")
    for o in found:
        for a in ("CKA_CLASS", "CKA_KEY_TYPE", "CKA_COPYABLE", "CKA_TOKEN", "CKA_ID", "CKA_LABEL"):
            b.attr("$s0", o, a, expect="any" if a == "CKA_COPYABLE" else None)
        for a in ("CKA_EC_PARAMS", "CKA_EC_POINT", "CKA_ALWAYS_AUTHENTICATE", "CKA_ALLOWED_MECHANISMS"):
            b.attr("$s0", o, a, expect="any")  # EC_POINT on the private key / optional attributes
    b("C_CloseSession", session="$s0")("C_Finalize").save()

    for k, mech, n, siglen in (("ec", "CKM_ECDSA", 32, 64), ("rsa", "CKM_RSA_PKCS", 51, 256)):
        for threads in (1, 4):
            name = f"bind920-signzone-{k}" + ("-n4" if threads > 1 else "")
            b = B(name, src, needs=[k], threads=threads > 1)
            start(b)
            b("C_Login", session="$s0", user="CKU_USER")
            (priv,) = b.find("$s0", {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_LABEL": f"${{{k}.label}}"})
            b.find("$s0", {"CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_LABEL": f"${{{k}.label}}"})
            b("C_CopyObject", "any", session="$s0", object=priv, template={"CKA_TOKEN": False}, copy="$cache",
              note="key cache; CKR_FUNCTION_NOT_SUPPORTED tolerated")
            b("C_DestroyObject", "any", session="$s0", object="$cache")
            for t in range(threads):
                ctx = "main" if threads == 1 else f"t{t}"
                s = f"$s{t + 1}"
                b("C_OpenSession", slot="$slot", flags="0x4", opened=s, ctx=ctx)
                for _ in range(3):
                    b("C_GetSessionInfo", session=s, ctx=ctx)
                    b("C_GetSessionInfo", session=s, ctx=ctx)
                    b("C_SignInit", session=s, mechanism=mech, key=priv if threads == 1 else "$k", ctx=ctx)
                    b("C_Sign", session=s, data_len=n, signature_len=siglen, ctx=ctx)
                b("C_CloseSession", session=s, ctx=ctx)
            if threads > 1:  # each provider thread finds the key in its own context
                steps = b.seq.steps
                for t in range(threads):
                    i = next(j for j, st in enumerate(steps) if st.ctx == f"t{t}")
                    steps[i + 1:i + 1] = [
                        Step("C_FindObjectsInit", {"session": f"$s{t + 1}", "template": {
                            "CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_LABEL": f"${{{k}.label}}"}}, "CKR_OK", ctx=f"t{t}"),
                        Step("C_FindObjects", {"session": f"$s{t + 1}", "maxObjectCount": 1, "found": ["$k"]},
                             "CKR_OK", check={"found": 1}, ctx=f"t{t}"),
                        Step("C_FindObjectsFinal", {"session": f"$s{t + 1}"}, "CKR_OK", ctx=f"t{t}")]
            b("C_CloseSession", session="$s0")("C_Finalize").save()

    b = B("bind920-keystore-keygen", src + ": named key-store + dnssec-policy", needs=["generate", "ec"])
    start(b)
    b("C_OpenSession", slot="$slot", flags="0x6", opened="$s1")
    b("C_Login", session="$s1", user="CKU_USER")
    label = "example.zone-default-ksk-20260101000000"
    kid = "hex:5c4d0f3a9e2b71c68d14a0b3f7e2c951"
    b("C_GenerateKeyPair", session="$s1", mechanism="CKM_EC_KEY_PAIR_GEN",
      publicKeyTemplate={"CKA_TOKEN": True, "CKA_VERIFY": True, "CKA_EC_PARAMS": "06082a8648ce3d030107",
                         "CKA_LABEL": label, "CKA_ID": kid},
      privateKeyTemplate={"CKA_TOKEN": True, "CKA_PRIVATE": True, "CKA_SENSITIVE": True, "CKA_SIGN": True,
                          "CKA_LABEL": label, "CKA_ID": kid},
      publicKey="$gpub", privateKey="$gpriv")
    b.find("$s1", {"CKA_LABEL": label}, count=2, max_count=4)
    b.attr("$s1", "$gpub", "CKA_EC_POINT", check={"ec_point_der": True})
    b("C_SignInit", session="$s1", mechanism="CKM_ECDSA", key="$gpriv")
    b("C_Sign", session="$s1", data_len=32, signature_len=64)
    b("C_DestroyObject", session="$s1", object="$gpriv", note="test cleanup")
    b("C_DestroyObject", session="$s1", object="$gpub", note="test cleanup")
    b("C_CloseSession", session="$s1")("C_CloseSession", session="$s0")("C_Finalize").save()


def others() -> None:
    src = "consumers-other-signers.md"
    b = B("opendnssec-signer", src + ": OpenDNSSEC 2.1 signer, 4 signer threads", threads=True)
    b("C_Initialize", init_flags="0x2")("C_GetSlotList", tokenPresent=True)("C_GetTokenInfo", slot="$slot")
    b("C_OpenSession", slot="$slot", flags="0x6", opened="$s0")("C_Login", session="$s0", user="CKU_USER")
    for t in range(4):
        ctx, s = f"t{t}", f"$s{t + 1}"
        k, mech, n = (("ec", "CKM_ECDSA", 32), ("rsa", "CKM_RSA_PKCS", 51))[t % 2]
        b("C_OpenSession", slot="$slot", flags="0x6", opened=s, ctx=ctx)
        b("C_GetSessionInfo", session=s, ctx=ctx)
        (priv,) = b.find(s, {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_ID": f"${{{k}.id}}"}, ctx=ctx)
        for _ in range(2):
            b("C_SignInit", session=s, mechanism=mech, key=priv, ctx=ctx)
            b("C_Sign", session=s, data_len=n, signature_len=64 if k == "ec" else 256, ctx=ctx)
        b("C_CloseSession", session=s, ctx=ctx)
    b("C_Logout", session="$s0")("C_CloseSession", session="$s0")("C_Finalize").save()

    b = B("opendnssec-keygen", src + ": ods-enforcer key generation (SkipPublicKey)", needs=["generate", "rsa"])
    b("C_Initialize")("C_GetSlotList", tokenPresent=True)
    b("C_OpenSession", slot="$slot", flags="0x6", opened="$s1")("C_Login", session="$s1", user="CKU_USER")
    b("C_GenerateRandom", session="$s1", randomLen=16, note="the CKA_ID; libhsm uses garbage if this fails")
    b("C_GenerateKeyPair", session="$s1", mechanism="CKM_RSA_PKCS_KEY_PAIR_GEN",
      publicKeyTemplate={"CKA_TOKEN": True, "CKA_MODULUS_BITS": 2048, "CKA_PUBLIC_EXPONENT": "010001",
                         "CKA_VERIFY": True, "CKA_LABEL": "ods-test-key", "CKA_ID": "${random}"},
      privateKeyTemplate={"CKA_TOKEN": True, "CKA_PRIVATE": True, "CKA_SIGN": True, "CKA_LABEL": "ods-test-key",
                          "CKA_ID": "${random}"}, publicKey="$gpub", privateKey="$gpriv")
    b.attr("$s1", "$gpub", "CKA_MODULUS")
    b("C_CreateObject", session="$s1", template=RSA_PUB, object="$spub", note="SkipPublicKey: a session copy")
    b("C_DestroyObject", session="$s1", object="$spub")
    b("C_DestroyObject", session="$s1", object="$gpriv", note="test cleanup")
    b("C_DestroyObject", session="$s1", object="$gpub", note="test cleanup")
    b("C_Logout", session="$s1")("C_CloseSession", session="$s1")("C_Finalize").save()

    b = B("knot-sign", src + ": Knot DNS (keys by CKA_ID+CLASS, NULL-buffer length query first)")
    b("C_Initialize")("C_GetSlotList", tokenPresent=True)("C_GetTokenInfo", slot="$slot")
    for s in ("$s1", "$s2", "$s3"):
        b("C_OpenSession", slot="$slot", flags="0x4", opened=s)
        b("C_GetSessionInfo", session=s)
    b("C_Login", session="$s1", user="CKU_USER")
    b("C_Login", "CKR_OK|CKR_USER_ALREADY_LOGGED_IN", session="$s2", user="CKU_USER",
      note="Knot logs in again; the login is shared across sessions")
    plan = (("ec", "CKM_ECDSA", 32, 64), ("rsa", "CKM_RSA_PKCS", 51, 256))
    for s, (k, mech, n, siglen) in zip(("$s2", "$s3"), plan, strict=True):
        (priv,) = b.find(s, {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_ID": f"${{{k}.id}}"})
        b.find(s, {"CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_ID": f"${{{k}.id}}"})
        for r in range(2):
            data = f"${{data.{k}{r}}}"
            b("C_SignInit", session=s, mechanism=mech, key=priv)
            b("C_Sign", session=s, data=data, data_len=n, check={"signature_len": siglen},
              note="length query (NULL buffer)")
            b("C_Sign", session=s, data=data, data_len=n, signature_len=siglen)
    for s in ("$s1", "$s2", "$s3"):
        b("C_CloseSession", session=s)
    b("C_Finalize").save()

    b = B("powerdns-sign", src + ": PowerDNS 4.7 via p11-kit (token digests, uninitialised DigestInit parameter)")
    b("C_Initialize")("C_GetSlotList", tokenPresent=True)("C_GetTokenInfo", slot="$slot")
    b("C_OpenSession", slot="$slot", flags="0x6", opened="$s1")("C_Login", session="$s1", user="CKU_USER")
    (priv,) = b.find("$s1", {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_LABEL": "${ec.label}"})
    (pub,) = b.find("$s1", {"CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_LABEL": "${ec.label}"})
    b.attr("$s1", pub, "CKA_EC_POINT", check={"ec_point_der": True})
    b("C_DigestInit", session="$s1", mechanism="CKM_SHA_1", parameter_garbage=True,
      note="key tag: uninitialised pParameter/ulParameterLen (seen 2147483648)")
    b("C_DigestUpdate", session="$s1", data_len=4)("C_DigestUpdate", session="$s1", data_len=64)
    b("C_DigestFinal", session="$s1", digest_len=20, check={"digest_len": 20})
    for _ in range(3):
        b("C_DigestInit", session="$s1", mechanism="CKM_SHA256")
        b("C_Digest", session="$s1", data_len=180, digest_len=32)
        b("C_SignInit", session="$s1", mechanism="CKM_ECDSA", key=priv)
        b("C_Sign", session="$s1", data="${digest}", data_len=32, signature_len=64)
    (rpriv,) = b.find("$s1", {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_LABEL": "${rsa.label}"})
    b("C_SignInit", session="$s1", mechanism="CKM_SHA256_RSA_PKCS", key=rpriv)
    b("C_Sign", session="$s1", data_len=300, signature_len=256, note="hash-and-sign over the full RRset data")
    b.save()  # PowerDNS never calls C_Finalize

    b = B("pkcs11-tool-sign", src + ": pkcs11-tool --sign -m ECDSA / RSA-PKCS")
    b("C_GetInterface", "any")("C_Initialize")("C_GetSlotList", tokenPresent=False)
    b("C_GetSlotInfo", slot="$slot")("C_GetTokenInfo", slot="$slot")
    b("C_OpenSession", slot="$slot", flags="0x4", opened="$s1")("C_Login", session="$s1", user="CKU_USER")
    for k, mech, n, siglen in (("ec", "CKM_ECDSA", 32, 64), ("rsa", "CKM_RSA_PKCS", 51, 256)):
        (priv,) = b.find("$s1", {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_ID": f"${{{k}.id}}"})
        b("C_SignInit", session="$s1", mechanism=mech, key=priv)
        b("C_GetAttributeValue", "any", session="$s1", object=priv, template={"CKA_ALWAYS_AUTHENTICATE": False})
        b("C_Sign", session="$s1", data_len=n, signature_len=siglen)
    b("C_CloseSession", session="$s1")("C_Finalize").save()


def main() -> None:
    SEQUENCES_DIR.mkdir(exist_ok=True)
    bind916()
    bind918()
    bind920()
    others()


if __name__ == "__main__":
    main()
