"""Completion: what the card lacks, supplied on the host (:mod:`shim.soft`).

The layer's functions are in :mod:`shim.handlers`; :data:`OVERRIDES` is the
one list of what it serves.  Everything else passes to the layer below
unchanged.  It owns the :class:`~shim.soft.state.CompletionState`: sessions and
their operations, shim objects, the card's learnt capabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from shim.call import INTERNAL, Table
from shim.handlers import digest, info, keygen, mechanisms, objects, random, sessions, sign, verify
from shim.soft.state import CompletionState

Handler = Callable[..., int]

OVERRIDES: dict[str, Handler] = {
    "C_Finalize": sessions.finalize,
    "C_GetInfo": info.get_info,
    "C_GetTokenInfo": mechanisms.get_token_info,
    "C_GetMechanismList": mechanisms.get_mechanism_list,
    "C_GetMechanismInfo": mechanisms.get_mechanism_info,
    "C_OpenSession": sessions.open_session,
    "C_CloseSession": sessions.close_session,
    "C_CloseAllSessions": sessions.close_all_sessions,
    "C_GetOperationState": digest.get_operation_state,
    "C_SetOperationState": digest.set_operation_state,
    "C_CreateObject": objects.create_object,
    "C_CopyObject": objects.copy_object,
    "C_DestroyObject": objects.destroy_object,
    "C_GetObjectSize": objects.get_object_size,
    "C_GetAttributeValue": objects.get_attribute_value,
    "C_SetAttributeValue": objects.set_attribute_value,
    "C_FindObjectsInit": objects.find_objects_init,
    "C_FindObjects": objects.find_objects,
    "C_FindObjectsFinal": objects.find_objects_final,
    "C_DigestInit": digest.digest_init,
    "C_Digest": digest.digest,
    "C_DigestUpdate": digest.digest_update,
    "C_DigestKey": digest.digest_key,
    "C_DigestFinal": digest.digest_final,
    "C_SignInit": sign.sign_init,
    "C_Sign": sign.sign,
    "C_SignUpdate": sign.sign_update,
    "C_SignFinal": sign.sign_final,
    "C_VerifyInit": verify.verify_init,
    "C_Verify": verify.verify,
    "C_VerifyUpdate": verify.verify_update,
    "C_VerifyFinal": verify.verify_final,
    "C_GenerateKeyPair": keygen.generate_key_pair,
    "C_SeedRandom": random.seed_random,
    "C_GenerateRandom": random.generate_random,
}


class Completion:
    def __init__(self, below: Table, *, mask_functions: frozenset[str] = frozenset(),
                 mask_mechanisms: frozenset[int] = frozenset(), advertise_keygen: bool = True,
                 eddsa_keygen_alias: bool = True) -> None:
        self.below = below
        # The shim's own calls to the card (and the card half of completed calls) go below with
        # a call object that is never recorded: only the application's call is.
        card = {name: partial(fn, INTERNAL) for name, fn in below.items()}
        self.state = CompletionState(card, mask_functions=mask_functions, mask_mechanisms=mask_mechanisms,
                                     advertise_keygen=advertise_keygen, eddsa_keygen_alias=eddsa_keygen_alias)

    def table(self) -> Table:
        return {name: partial(OVERRIDES[name], self.state) if name in OVERRIDES else fn
                for name, fn in self.below.items()}

    def reset(self) -> None:
        self.state.reset()
