"""A virtual PIV smartcard driven by the real pcscd + vpcd + OpenSC stack.

Modules, shaped like vsmartcard's virtualsmartcard:

- :mod:`virtualcard.apdu`      command/response APDUs and BER-TLV helpers
- :mod:`virtualcard.state`     card state (keys, objects, PIN/PUK, management key) on disk
- :mod:`virtualcard.profiles`  realism: latency, slots, algorithms, PIN lengths
- :mod:`virtualcard.piv`       the PIV application (SP 800-73-4 APDU dispatch)
- :mod:`virtualcard.vpcd`      the vpcd TCP transport that drives a card
- :mod:`virtualcard.harness`   a private pcscd plus card processes, started and stopped by PID
- :mod:`virtualcard.cli`       ``virtualcard up|down|provision|remove|insert|status``
- :mod:`virtualcard.pytest_plugin` ``--card=...`` and the ``card`` fixture
"""
