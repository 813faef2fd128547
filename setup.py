"""ament_python package: vpr_ros (node + core) and vpr_ros.training (from ./training)."""
from glob import glob

from setuptools import setup

package_name = 'vpr_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=[
        package_name,
        f'{package_name}.core',
        f'{package_name}.model',
        f'{package_name}.map',
        f'{package_name}.ros',
        f'{package_name}.tools',
        f'{package_name}.sim',
        f'{package_name}.training',
        f'{package_name}.training.data',
        f'{package_name}.training.fit',
        f'{package_name}.training.ship',
        f'{package_name}.training.eval',
        f'{package_name}.training.demo',
    ],  # experiments/ (research scripts beside bench/) is not installed
    # The shipped model files (vpr_ros/model/shipped.py pins their sha256), read by path.
    package_data={f'{package_name}.model': ['data/*.pt']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{package_name}']),
        (f'share/{package_name}', ['package.xml']),
        (f'share/{package_name}/launch', glob('launch/*.launch.py')),
        (f'share/{package_name}/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,  # shipped model files are opened by path
    maintainer='vpr_ros developers',
    maintainer_email='vpr_ros@example.org',
    description='Visual place recognition and loop-closure candidates for ROS 2 (GCL-trained).',
    license='Apache-2.0',
    # the reference SLAM back-end (vpr-slam-backend) only: requirements-slam.txt pins them
    extras_require={'test': ['pytest'], 'slam': ['gtsam', 'evo']},
    entry_points={
        'console_scripts': [
            'vpr_node = vpr_ros.ros.node:main',
            'vpr_lifecycle_node = vpr_ros.ros.lifecycle_node:main',
            'vpr-play = vpr_ros.ros.bag_player:main',
            'vpr-map = vpr_ros.tools.map_cli:main',
            'vpr-sim = vpr_ros.sim.cli:main',
            'vpr-extract-bag = vpr_ros.training.data.extract_bag:main',
            'vpr-labels = vpr_ros.training.data.labels:main',
            'vpr-train = vpr_ros.training.fit.train:main',
            'vpr-eval = vpr_ros.training.eval.evaluate:main',
            'vpr-export = vpr_ros.training.ship.export:main',
            'vpr-train-demo = vpr_ros.training.demo.train_demo:main',
            'vpr-cross-session = vpr_ros.tools.cross_session:main',
            'vpr-slam-backend = vpr_ros.tools.slam_backend:main',
        ],
    },
)
