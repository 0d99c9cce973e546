"""Faster target-contact check for Memory Maze (a monkey-patch of dm-control).

Memory Maze's targets are ``dm_control.locomotion.props.target_sphere.TargetSphere``
entities. After every physics substep (50 per 4 Hz control step) each target runs
``TargetSphere._update_activation``, which iterates over ``physics.data.contact``
in Python; building one contact object per iteration makes that loop about 60% of
an env step on a CPU. The replacement below does the same test on the contact
arrays (``geom1``/``geom2``) with numpy: the activation state, the material alpha
it changes and therefore rewards and images are unchanged (tests/test_memory_maze.py
compares patched and unpatched rollouts).

``apply()`` patches the class once (idempotent); ``remove()`` restores the original.
The environment variable ``R2I_MMAZE_SPEEDUP=0`` makes ``apply()`` a no-op.
"""

from __future__ import annotations

import os

import numpy as np

ENV_VAR = 'R2I_MMAZE_SPEEDUP'
_ORIGINAL_ATTR = '_r2i_original_update_activation'


def enabled_by_env() -> bool:
    """False when ``R2I_MMAZE_SPEEDUP`` is set to 0/false/no/off."""
    return os.environ.get(ENV_VAR, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def _update_activation(self, physics):
    """Vectorised ``TargetSphere._update_activation``: same condition, no Python loop."""
    if self._activated:
        return
    if physics.data.ncon == 0:
        return
    contact = physics.data.contact
    g1 = np.asarray(contact.geom1)
    g2 = np.asarray(contact.geom2)
    hit = (g1 == self._geom_id) | (g2 == self._geom_id)
    specific = self._specific_collision_geom_ids
    if specific:  # same truthiness test as the original
        ids = np.asarray(list(specific))
        hit &= np.isin(g1, ids) | np.isin(g2, ids)
    if hit.any():
        self._activated = True
        physics.bind(self._material).rgba[-1] = 0


def _target_class():
    from dm_control.locomotion.props import target_sphere

    return target_sphere.TargetSphere


def is_applied() -> bool:
    cls = _target_class()
    return cls.__dict__.get('_update_activation') is _update_activation


def apply(force: bool = False) -> bool:
    """Patches ``TargetSphere._update_activation``; returns whether the patch is active.

    Does nothing (and returns False) when ``R2I_MMAZE_SPEEDUP=0`` unless ``force``.
    """
    if not force and not enabled_by_env():
        return is_applied()
    cls = _target_class()
    if is_applied():
        return True
    if not hasattr(cls, _ORIGINAL_ATTR):
        setattr(cls, _ORIGINAL_ATTR, cls.__dict__['_update_activation'])
    cls._update_activation = _update_activation
    return True


def remove() -> None:
    """Restores dm-control's original method (for comparisons)."""
    cls = _target_class()
    original = cls.__dict__.get(_ORIGINAL_ATTR)
    if original is not None:
        cls._update_activation = original
