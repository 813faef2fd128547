"""
Render a GardenWorld under a Condition from 6DOF camera poses: pyrender, then sky, fog, noise.

pyrender draws the geometry with sun and ambient light (perspective, occlusion, per-pixel
lighting). The sky (gradient, sun glow, clouds fixed in the world) and fog (blend towards the
fog colour by metric depth) are done in numpy on the rendered colour and depth, which is cheaper
than a sky dome and exact in depth. A little seeded sensor noise keeps revisits from being
pixel-identical. Frames are byte-identical for the same inputs.

When the light fails (twilight, night: `sensor.exposure_for` is not the daylight exposure) the
camera's exposure multiplier scales every light and the sky, lamps light the garden (`lamps.py`),
and `sensor.develop` turns the frame into what a camera records in the dark: motion blur (given
the previous pose), gain noise, faded colours. Daylight frames take the original path unchanged.
"""
from dataclasses import dataclass
import math

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.sim.conditions import Condition, lamps_on, lighting, SEASON_FACTORS
from vpr_ros.sim.lamps import NightLights
from vpr_ros.sim.render_backend import import_pyrender, Renderer
from vpr_ros.sim.sensor import develop, exposure_for, motion_blur, shutter_motion, to_linear
from vpr_ros.sim.textures import fractal_noise, make_textures
from vpr_ros.sim.world import GardenWorld

# camera_link (x forward, y left, z up; REP-103) -> OpenGL camera (x right, y up, looking -z)
LINK_T_GL = np.array([[0.0, 0.0, -1.0, 0.0],
                      [-1.0, 0.0, 0.0, 0.0],
                      [0.0, 1.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 1.0]])
Z_NEAR, Z_FAR = 0.05, 120.0
_REPEAT, _CLAMP_TO_EDGE = 10497, 33071   # GL texture wrap modes


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics (pixels) of the rendered images; CameraInfo is written from these."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @staticmethod
    def from_hfov(width: int, height: int, hfov_deg: float = 90.0) -> 'Intrinsics':
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return Intrinsics(int(width), int(height), f, f, width / 2.0, height / 2.0)

    def k(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]


def pose_to_matrix(pose7) -> np.ndarray:
    """[tx, ty, tz, qx, qy, qz, qw] -> 4x4 world_T_camera_link."""
    p = np.asarray(pose7, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(p[3:7]).as_matrix()
    m[:3, 3] = p[:3]
    return m


class GardenScene:
    """
    One world under one condition at one image size; `render(pose)` gives an HxWx3 uint8 image.

    A renderer can be shared between scenes of the same size (pass `renderer`), which avoids
    creating a GL context per traverse.
    """

    def __init__(self, world: GardenWorld, condition: Condition, intrinsics: Intrinsics,
                 renderer: Renderer | None = None, noise_sigma: float = 1.5,
                 noise_seed: int = 0):
        pr = import_pyrender()
        self.world = world
        self.condition = condition
        self.intr = intrinsics
        self.noise_sigma = float(noise_sigma)
        self.noise_seed = int(noise_seed)
        self._own_renderer = renderer is None
        self.renderer = renderer or Renderer(intrinsics.width, intrinsics.height)
        if (self.renderer.width, self.renderer.height) != (intrinsics.width, intrinsics.height):
            raise ValueError('renderer size differs from the intrinsics')
        self.light = lighting(condition)
        self.exposure = exposure_for(condition)
        # 1.0 in daylight, where nothing below scales anything (the original frames)
        gain = 1.0 if self.exposure.is_daylight() else self.exposure.multiplier()
        factors, density = SEASON_FACTORS[condition.season]
        textures = make_textures(world.seed)
        ambient = self.light.ambient if gain == 1.0 else self.light.ambient * gain
        self.scene = pr.Scene(ambient_light=ambient, bg_color=[0, 0, 0, 0])
        tex_cache = {}
        for part in world.parts:
            key = part.material
            if key not in tex_cache:
                # the photo atlas must not wrap into the neighbouring photo
                wrap = _CLAMP_TO_EDGE if key == 'photos' else _REPEAT
                tex_cache[key] = pr.Texture(
                    source=textures[key], source_channels='RGB',
                    sampler=pr.Sampler(wrapS=wrap, wrapT=wrap))
            factor = factors.get(part.kind, (1.0, 1.0, 1.0))
            mat = pr.MetallicRoughnessMaterial(
                baseColorTexture=tex_cache[key], baseColorFactor=[*factor, 1.0],
                metallicFactor=0.0, roughnessFactor=0.95 if part.material != 'water' else 0.3)
            poses = None
            if part.instances is not None:
                poses = part.instances.copy()
                if part.kind in ('crown', 'bush'):
                    poses[:, :3, :3] *= density ** (0.5 if part.kind == 'bush' else 1.0)
            g = part.geo
            prim = pr.Primitive(positions=g.positions, normals=g.normals, texcoord_0=g.uvs,
                                indices=g.faces, material=mat, poses=poses)
            self.scene.add(pr.Mesh([prim], name=part.name))
        cam = pr.IntrinsicsCamera(intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy,
                                  znear=Z_NEAR, zfar=Z_FAR)
        self.cam_node = self.scene.add(cam, pose=np.eye(4))
        sun = pr.DirectionalLight(color=np.ones(3), intensity=1.0)
        sun.color = self.light.sun_color / max(self.light.sun_color.max(), 1e-9)
        sun.intensity = float(self.light.sun_color.max())
        if gain != 1.0:
            sun.intensity *= gain
        self.scene.add(sun, pose=_light_pose(self.light.sun_dir))
        self.night = NightLights(pr, self.scene, world, gain) if lamps_on(condition) else None
        # the sky is drawn in display values: the exposure brightens it as light ** (1 / 2.2)
        self._display_gain = None if gain == 1.0 else np.float32(gain ** (1.0 / 2.2))
        self._rays = _pixel_rays(intrinsics)
        self._ray_len = np.linalg.norm(self._rays, axis=-1).astype(np.float32)
        self._clouds = fractal_noise(np.random.default_rng([world.seed, 23,
                                                            int(condition.hour * 10)]),
                                     (256, 256), beta=2.6)

    def render(self, pose7, frame_index: int = 0, prev_pose7=None,
               dt_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """
        (rgb HxWx3 uint8, depth HxW float32 m, 0 = sky) seen from a camera_link pose.

        prev_pose7, dt_s earlier, gives the motion that long exposures blur (low light only).
        """
        world_t_link = pose_to_matrix(pose7)
        self.scene.set_pose(self.cam_node, world_t_link @ LINK_T_GL)
        if self.night is not None:
            self.night.follow(world_t_link @ LINK_T_GL)
        color, depth = self.renderer.render(self.scene)
        img = color.astype(np.float32) / 255.0
        sky = depth <= 0.0
        if sky.any():
            img[sky] = self._sky(world_t_link[:3, :3].astype(np.float32) @ self._rays[sky].T)
        fog_m = self.condition.fog_m
        if fog_m > 0:
            dist = np.where(sky, np.float32(Z_FAR * 4), depth * self._ray_len)
            f = 1.0 - np.exp(dist * np.float32(-3.0 / fog_m))
            fog_color = self.light.fog_color.astype(np.float32)
            if self._display_gain is not None:
                fog_color = np.minimum(fog_color * self._display_gain, np.float32(1.0))
            img += (fog_color - img) * f[..., None]
        rng = np.random.default_rng([self.noise_seed, int(frame_index)])
        if self._display_gain is not None:
            return self._develop(img, depth, world_t_link, prev_pose7, dt_s, rng), depth
        if self.noise_sigma > 0:
            img += rng.standard_normal(img.shape, dtype=np.float32) * (self.noise_sigma / 255.0)
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), depth

    def _develop(self, img: np.ndarray, depth: np.ndarray, world_t_link: np.ndarray,
                 prev_pose7, dt_s: float, rng: np.random.Generator) -> np.ndarray:
        """Record as a low-light camera does: blur along the motion, gain noise, faded colour."""
        lin = to_linear(img)
        if prev_pose7 is not None and dt_s > 0:
            link_t_open = shutter_motion(world_t_link, pose_to_matrix(prev_pose7), dt_s,
                                         self.exposure.exposure_ms)
            i = self.intr
            lin = motion_blur(lin, depth, self._rays, (i.fx, i.fy, i.cx, i.cy), link_t_open)
        return develop(lin, self.exposure, rng, self.noise_sigma)

    def _sky(self, dirs: np.ndarray) -> np.ndarray:
        """Sky colour for world-frame view directions (3, N): gradient, sun glow, clouds."""
        L = self.light
        d = dirs / np.sqrt((dirs * dirs).sum(axis=0, keepdims=True))
        up = np.clip(d[2], 0.0, 1.0)
        t = up ** 0.5
        hor, zen = L.horizon.astype(np.float32), L.zenith.astype(np.float32)
        col = hor[None, :] * (1 - t)[:, None] + zen[None, :] * t[:, None]
        glow = np.clip(d.T @ L.sun_dir.astype(np.float32), 0.0, 1.0) ** 24 * np.float32(
            1.0 - 0.8 * (L.cloud_cover - 0.3))
        if L.glow_scale != 1.0:
            glow = glow * np.float32(L.glow_scale)
        col = col + glow[:, None] * np.array([0.5, 0.45, 0.35], np.float32)
        # clouds on a layer 300 m up, fixed in the world, fading towards the horizon
        z = np.maximum(d[2], np.float32(0.03))
        u = (d[0] / z * 300.0 / 600.0) % 1.0
        v = (d[1] / z * 300.0 / 600.0) % 1.0
        n = self._clouds[(v * 255).astype(int), (u * 255).astype(int)]
        cover = np.clip((n - (1.0 - L.cloud_cover)) * 3.0, 0.0, 1.0) * np.clip(d[2] * 6, 0, 1)
        cloud_col = L.horizon * 0.55 + 0.4 * (0.6 + 0.4 * L.sun_dir[2]) \
            if L.cloud_color is None else L.cloud_color
        col = col * (1 - cover)[:, None] + cloud_col[None, :] * cover[:, None]
        if self._display_gain is not None:
            col = col * self._display_gain
        return np.clip(col, 0.0, 1.0).astype(np.float32)

    def close(self) -> None:
        if self._own_renderer:
            self.renderer.close()


def _pixel_rays(intr: Intrinsics) -> np.ndarray:
    """Per-pixel view directions in camera_link (HxWx3), unit depth along +x."""
    v, u = np.mgrid[0:intr.height, 0:intr.width].astype(np.float64)
    xo = (u + 0.5 - intr.cx) / intr.fx
    yo = (v + 0.5 - intr.cy) / intr.fy
    return np.stack([np.ones_like(xo), -xo, -yo], axis=-1).astype(np.float32)


def _light_pose(to_sun: np.ndarray) -> np.ndarray:
    """Pose of a directional light shining along -z: its +z points at the sun."""
    z = to_sun / np.linalg.norm(to_sun)
    x = np.cross([0.0, 0.0, 1.0], z)
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z], axis=1)
    return m
