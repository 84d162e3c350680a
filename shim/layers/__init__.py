"""The shim as a stack of layers (p11-kit's shape), composed by :mod:`shim.runtime`.

From the bottom: :mod:`~shim.layers.base` forwards every function to the
backend; :mod:`~shim.layers.completion` supplies what the card lacks;
:mod:`~shim.layers.fixups` makes answers the specification's;
:mod:`~shim.layers.guard` admits calls (initialisation, policy, fork);
:mod:`~shim.layers.audit` summarises and records every call.  A layer is
handed the table of the layer below and returns its own: the table below
with the few functions it overrides, named in one list in its module.
Nothing registers by being imported.
"""
