"""Faster target-contact check for Memory Maze (a monkey-patch of dm-control).

Memory Maze's targets are ``dm_control.locomotion.props.target_sphere.TargetSphere``
entities. After every physics substep (50 per 4 Hz control step) each target runs
``TargetSphere._update_activation``, which iterates over ``physics.data.contact``
in Python; building one contact object per iteration makes that loop about 60% of
an env step on a CPU. The replacement below does the same test on the contact
arrays (``geom1``/``geom2``) with numpy: the activation state, the material alpha
it changes and therefore rewards and images are unchanged (tests/test_memory_maze.py
compares patched and unpatched rollouts).

A second patch keeps dm-control's render ``Camera`` across frames (``_render``), +35% steps/s
on 9x9 (BENCHMARKS.md) with identical frames. ``apply()`` patches both (idempotent); ``remove()`` restores
the originals.
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
    from dm_control.mujoco import engine

    cls = _target_class()
    return cls.__dict__.get('_update_activation') is _update_activation and engine.Physics.render is _render


def _render(
    self,
    height=240,
    width=320,
    camera_id=-1,
    overlays=(),
    depth=False,
    segmentation=False,
    scene_option=None,
    render_flag_overrides=None,
    scene_callback=None,
):
    """``Physics.render`` that keeps its ``Camera`` (scene, buffers) while the model stays the same.

    dm-control builds a new ``Camera`` (and allocates an ``MjvScene``) for every frame; Memory Maze
    renders one frame per step with the same camera. Plain RGB renders reuse one camera per
    (model, size, camera id); anything else goes to the original method. The image is copied out
    of the camera's buffer, so earlier observations never change."""
    from dm_control.mujoco import engine

    if (
        overlays
        or depth
        or segmentation
        or scene_option is not None
        or render_flag_overrides
        or scene_callback
    ):
        return _ORIGINAL_RENDER[0](
            self,
            height,
            width,
            camera_id,
            overlays,
            depth,
            segmentation,
            scene_option,
            render_flag_overrides,
            scene_callback,
        )
    model = self.model.ptr
    cache = self.__dict__.get('_r2i_cameras')
    if cache is None or cache[0] is not model:  # a new or recompiled model: drop the old scenes
        if cache is not None:
            for camera in cache[1].values():
                camera._scene.free()
        cache = self.__dict__['_r2i_cameras'] = (model, {})
    key = (height, width, camera_id)
    camera = cache[1].get(key)
    if camera is None:
        camera = cache[1][key] = engine.Camera(physics=self, height=height, width=width, camera_id=camera_id)
    return np.array(camera.render(), copy=True)


_ORIGINAL_RENDER = []


def apply(force: bool = False) -> bool:
    """Patches ``TargetSphere._update_activation`` and ``Physics.render``; returns whether the
    patches are active.

    Does nothing (and returns False) when ``R2I_MMAZE_SPEEDUP=0`` unless ``force``.
    """
    if not force and not enabled_by_env():
        return is_applied()
    cls = _target_class()
    if not hasattr(cls, _ORIGINAL_ATTR):
        setattr(cls, _ORIGINAL_ATTR, cls.__dict__['_update_activation'])
    cls._update_activation = _update_activation
    from dm_control.mujoco import engine

    if not _ORIGINAL_RENDER:
        _ORIGINAL_RENDER.append(engine.Physics.render)
    engine.Physics.render = _render
    return True


def remove() -> None:
    """Restores dm-control's original method (for comparisons)."""
    cls = _target_class()
    original = cls.__dict__.get(_ORIGINAL_ATTR)
    if original is not None:
        cls._update_activation = original
    if _ORIGINAL_RENDER:
        from dm_control.mujoco import engine

        engine.Physics.render = _ORIGINAL_RENDER[0]
