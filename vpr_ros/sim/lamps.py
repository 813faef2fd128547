"""
Light at night: some of the garden's lamp posts lit (seeded), and the robot's own lamp.

pyrender shades with at most 4 point lights and 4 spot lights (constants.MAX_N_LIGHTS) and,
beyond that, picks lights by their distance to each mesh's origin (every merged mesh of the garden
sits at the origin). So the scene holds N_POINT_LIGHTS point lights that follow the camera: before
each frame they move to the lit lamps nearest to it, dimmed with distance (FADE_*), so a lamp that
falls out of the nearest set is already faint and does not pop. Every lit lamp's lantern glows
(an emissive mesh), near or far. The robot's lamp is a spot light at the camera, pointing along
its optical axis. No shadows: pyrender's shadow maps are too slow on OSMesa, so light passes
through hedges (the lamps stand beside the paths, so little of that is seen).
"""
import numpy as np

from vpr_ros.sim import geometry as G
from vpr_ros.sim.world import GardenWorld

LIT_FRACTION = 0.6
LAMP_COLOR = np.array([1.0, 0.80, 0.55])       # warm white, about 3000 K
LAMP_INTENSITY = 0.03                         # at exposure multiplier 1 (daylight units)
ROBOT_LAMP_COLOR = np.array([0.95, 0.97, 1.0])  # LED
ROBOT_LAMP_INTENSITY = 0.02
ROBOT_LAMP_CONE_RAD = (0.30, 0.65)            # inner, outer half angles
LANTERN_GLOW = (1.6, 1.45, 1.2)               # emissive (pyrender squares it): saturated
N_POINT_LIGHTS = 4
FADE_START_M, FADE_END_M = 9.0, 16.0


def lit_lamps(world: GardenWorld) -> np.ndarray:
    """(K, 3) lantern positions of the lamps lit at night: a seeded subset, at least two."""
    lamps = np.asarray(world.lamps, dtype=np.float64).reshape(-1, 3)
    if len(lamps) == 0:
        return lamps
    rng = np.random.default_rng([world.seed, 41])
    lit = rng.random(len(lamps)) < LIT_FRACTION
    if lit.sum() < min(2, len(lamps)):
        lit[rng.permutation(len(lamps))[:2]] = True
    return lamps[lit]


class NightLights:
    """The lit lamps and the robot's lamp in one pyrender scene; `follow(cam_pose)` per frame."""

    def __init__(self, pr, scene, world: GardenWorld, multiplier: float):
        self.lamps = lit_lamps(world)
        self.multiplier = float(multiplier)
        if len(self.lamps):
            glass = G.merge([G.box(0.28, 0.28, 0.2).transformed(G.pose_matrix(x, y, z))
                             for x, y, z in self.lamps])
            mat = pr.MetallicRoughnessMaterial(baseColorFactor=[0.9, 0.85, 0.7, 1.0],
                                               emissiveFactor=list(LANTERN_GLOW),
                                               metallicFactor=0.0, roughnessFactor=0.9)
            scene.add(pr.Mesh([pr.Primitive(positions=glass.positions, normals=glass.normals,
                                             indices=glass.faces, material=mat)],
                              name='lanterns'))
        self.points = [scene.add(pr.PointLight(color=LAMP_COLOR, intensity=0.0),
                                 pose=np.eye(4))
                       for _ in range(min(N_POINT_LIGHTS, len(self.lamps)))]
        self.spot = scene.add(pr.SpotLight(color=ROBOT_LAMP_COLOR,
                                           intensity=ROBOT_LAMP_INTENSITY * self.multiplier,
                                           innerConeAngle=ROBOT_LAMP_CONE_RAD[0],
                                           outerConeAngle=ROBOT_LAMP_CONE_RAD[1]),
                              pose=np.eye(4))
        self.scene = scene

    def follow(self, gl_camera_pose: np.ndarray) -> None:
        """Put the point lights on the lamps nearest the camera and the spot on the camera."""
        self.scene.set_pose(self.spot, gl_camera_pose)
        if not self.points:
            return
        d = np.linalg.norm(self.lamps[:, :2] - gl_camera_pose[:2, 3], axis=1)
        nearest = np.argsort(d, kind='stable')[:len(self.points)]
        for node, k in zip(self.points, nearest):
            pose = np.eye(4)
            pose[:3, 3] = self.lamps[k] - np.array([0.0, 0.0, 0.05])   # just under the glass
            self.scene.set_pose(node, pose)
            fade = float(np.clip((FADE_END_M - d[k]) / (FADE_END_M - FADE_START_M), 0.0, 1.0))
            node.light.intensity = LAMP_INTENSITY * self.multiplier * fade
