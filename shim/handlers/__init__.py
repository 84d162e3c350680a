"""The completion layer's functions, one module per concern.

Each is ``handler(state, call, *c_args) -> CK_RV`` over the
:class:`~shim.soft.state.CompletionState`; :mod:`shim.layers.completion` lists
which function each one serves.  Importing a module here registers nothing.
"""
