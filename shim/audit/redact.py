"""Defence in depth: strip secrets from an args summary before it is serialised.

The dispatcher is supposed to hand the writer summaries only (handles, mechanism
names, attribute names, lengths and SHA-256 of signed data).  ``redact`` makes a
mistake there harmless instead of a PIN in a file that is shipped off-host.

Redacted, at any depth of dicts and lists:

* any key whose name, lower-cased with ``_``/``-`` removed, *contains* ``pin``,
  ``password``, ``passphrase`` or ``secret`` (``pin``, ``pPin``, ``old_pin``,
  ``so_pin``, ``ulPinLen`` ...);
* any key named ``value``/``CKA_VALUE`` or an RSA private component
  (``CKA_PRIVATE_EXPONENT``, ``CKA_PRIME_1``/``_2``, ``CKA_EXPONENT_1``/``_2``,
  ``CKA_COEFFICIENT``), with or without the ``CKA_`` prefix; the same names as
  the first item of a ``[name, value]`` pair.  A caller that wants to log a
  non-secret value (a public point, a label) must use another key, e.g.
  ``value_len`` or ``value_sha256``;
* bytes anywhere become ``<bytes len=N>`` (in the encoder, ``schema._default``).

The value is replaced by ``"<redacted>"`` rather than dropped, so the record
still shows that a PIN was passed.  Free text in ``error`` is not scanned.
"""

from __future__ import annotations

from typing import Any, Final

from shim.audit.schema import REDACTED

_SECRET_PARTS: Final = ("pin", "password", "passphrase", "secret")
_SECRET_NAMES: Final = frozenset({
    "value", "privateexponent", "prime1", "prime2", "exponent1", "exponent2", "coefficient",
})


def is_secret_key(key: object) -> bool:
    """True if a field called ``key`` may hold a secret."""
    if not isinstance(key, str):
        return False
    hit = _KEY_CACHE.get(key)
    return _classify(key) if hit is None else hit


# Args use a few dozen distinct keys: classify each once (bounded, in case of junk).
_KEY_CACHE: dict[str, bool] = {}
_SCALARS: Final = frozenset({int, str, float, bool, type(None)})


def _classify(key: str) -> bool:
    k = key.lower().replace("_", "").replace("-", "")
    if k.startswith("cka"):
        k = k[3:]
    secret = k in _SECRET_NAMES or any(p in k for p in _SECRET_PARTS)
    if len(_KEY_CACHE) < 4096:
        _KEY_CACHE[key] = secret
    return secret


def redact(args: Any) -> Any:
    """``args`` with every secret-named value replaced; the input is never modified.

    Returns the same object when nothing needs redacting, so the common case
    allocates nothing.
    """
    if isinstance(args, dict):
        out: dict[Any, Any] | None = None
        for k, v in args.items():
            secret = _KEY_CACHE.get(k)  # inline fast path of is_secret_key()
            if secret is None:
                secret = is_secret_key(k)
            if secret:
                nv: Any = REDACTED
            elif type(v) in _SCALARS:
                continue  # scalar under a harmless key: the common case
            else:
                nv = redact(v)
            if nv is v:
                continue
            if out is None:
                out = dict(args)
            out[k] = nv
        return args if out is None else out
    if isinstance(args, list | tuple):
        if len(args) == 2 and is_secret_key(args[0]):
            return [args[0], REDACTED]
        items = [redact(v) for v in args]
        if all(a is b for a, b in zip(items, args, strict=True)):
            return args
        return items
    return args
