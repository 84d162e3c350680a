"""The offline-KSK key ceremony on SmartCard-HSMs (``sc4dnssec ceremony``, docs/ceremony.md).

:mod:`policy` is what the shim consults (the ceremony window); the rest runs in the ceremony's
own process and drives the cards through OpenSC's tools and the shim.  The BIND steps live in
:mod:`shim.ceremony.bind`.
"""
