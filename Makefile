# One entry point for set-up, tests and demos. Every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WEIGHTS_STAMP := $(VENV)/.weights
SYSDEPS_STAMP := $(VENV)/.sysdeps
# The real ROS 2 launch/CLI tools and colcon (tests of the launch file and of a colcon workspace),
# when ../shared/ros2-tools is beside this checkout; install.sh writes this stamp itself.
ROS2_TOOLS := $(wildcard $(CURDIR)/../shared/ros2-tools/install.sh)
ROS2_TOOLS_STAMP := $(if $(ROS2_TOOLS),$(VENV)/.ros2-tools-installed)
# Network rule: DDS traffic of everything started from here stays on loopback.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_shm16mb.xml
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup test lint bench demo train-demo train-demo-large clean

# make demo [BAG=path/to/your.bag IMAGE_TOPIC=... POSE_TOPIC=... POSE_TYPE=Odometry|PoseStamped
#            GT_TOPIC=... MODEL=model.pt MAX_FRAMES=N OUT=demo_out
#            PARAMS='score_threshold:=0.9 geometric_verification:=true']
BAG ?=
IMAGE_TOPIC ?= /camera/image_raw
POSE_TOPIC ?= /odom
POSE_TYPE ?= Odometry
GT_TOPIC ?=
MODEL ?=
MAX_FRAMES ?= 0
PARAMS ?=
OUT ?= demo_out
# make train-demo [TRAIN_OUT=train_demo_out TRAIN_ARGS='--epochs 12 --fresh']
TRAIN_OUT ?= train_demo_out
TRAIN_ARGS ?=

setup: $(STAMP) $(WEIGHTS_STAMP) $(SYSDEPS_STAMP) $(ROS2_TOOLS_STAMP)

# Debian's OSMesa for headless rendering of the simulated garden.
$(SYSDEPS_STAMP): | $(STAMP)
	@if ! ldconfig -p | grep -q libOSMesa; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null) \
	  || { echo "install Debian's libosmesa6 (needed for the simulated garden)"; exit 1; }; fi
	@touch $@

# cmake and ninja build composition_interfaces (which launch_ros needs) in install.sh.
$(ROS2_TOOLS_STAMP): | $(STAMP)
	@if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build \
	   >/dev/null) || { echo "install Debian's cmake and ninja-build (for ros2-tools)"; exit 1; }; fi
	bash $(ROS2_TOOLS) $(VENV)

# requirements-ros.txt: the ROS 2 wheels (this venv has no ROS 2 install); requirements.txt: what
# a ROS 2 user installs with pip; requirements-dev.txt: tests and lint.
$(STAMP): requirements.txt requirements-nokey.txt requirements-ros.txt requirements-dev.txt \
          requirements-slam.txt requirements-post.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-ros.txt \
	  -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-post.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(WEIGHTS_STAMP): $(STAMP) vpr_ros/model/weights.py
	$(PY) -m vpr_ros.model.weights
	@touch $@

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/bench_core.py
	$(PY) bench/bench_map.py --quick
	$(PY) bench/bench_labels.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_node.py

demo: setup
	$(PY) -m vpr_ros.tools.demo --bag "$(BAG)" --image-topic $(IMAGE_TOPIC) --pose-topic $(POSE_TOPIC) \
	  --pose-type $(POSE_TYPE) --gt-topic "$(GT_TOPIC)" --model "$(MODEL)" \
	  --max-frames $(MAX_FRAMES) --out $(OUT) $(foreach p,$(PARAMS),--param '$(p)')

# bags -> extract -> labels -> GCL training -> export -> evaluation (unseen conditions, corridor)
# -> the demo with each model; reuses what an earlier run left in TRAIN_OUT.
train-demo: setup
	$(PY) -m vpr_ros.training.demo.train_demo --out $(TRAIN_OUT) $(TRAIN_ARGS)

# The longer comparison: 4 simulated gardens (2 never trained on), unseen seasons/times/weather,
# >= 1,000 test queries; GCL vs CL, 2 seeds each, bootstrap 95 % intervals (renders cached).
train-demo-large: setup
	$(PY) -m vpr_ros.training.demo.train_demo --large --loss both --seeds 2 \
	  --out $(TRAIN_OUT)_large $(TRAIN_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
