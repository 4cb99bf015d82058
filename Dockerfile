# Tenexa: Wan2.2-I2V-A14B image-to-video worker for RunPod serverless (ComfyUI + WanVideoWrapper + VHS + KJNodes
# + Frame-Interpolation).
#
# The ComfyUI stack is installed by scripts/install_stack.py from stack.lock (commits, fetched from GitHub) and
# requirements-stack.lock (every package, with hashes): the same script and the same lock CI installs, so the image
# runs the stack the tests ran. The ARG defaults below only repeat stack.lock for the labels and the SageAttention
# build (tests/test_entrypoint.py checks that they agree). Build, stamped with a version:
#   docker build --build-arg HANDLER_VERSION=$(git describe --tags --always --dirty) -t tenexa:dev .
# Models are not baked in: entrypoint.sh provisions them from models.json (or finds them on the network volume).

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

# ---------------------------------------------------------------------------------------------------------
# builder: one virtual environment with the locked stack (torch, ComfyUI's and every pack's requirements, the
# handler's requirements) and SageAttention compiled for the listed GPUs. It is copied whole into the runtime stage,
# so the interpreter that installs the packs' requirements is the one that runs ComfyUI (peers' problem 8).
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS builder

ARG SAGEATTENTION_REPO=https://github.com/thu-ml/SageAttention
ARG SAGEATTENTION_COMMIT=d1a57a546c3d395b1ffcbeecc66d81db76f3b4b5
ARG SAGEATTENTION_VERSION=2.2.0
ARG SAGEATTENTION_CUDA_ARCHS=8.0,8.6,8.9,9.0,10.0,12.0
# nvcc jobs for SageAttention; each needs several GB of RAM.
ARG MAX_JOBS=4

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Apt versions are those of the pinned Ubuntu release; pinning each package's patch version would break the
# build at every Ubuntu security update. Ubuntu 24.04's python3 is 3.12, the Python requirements-stack.lock is for.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git ca-certificates build-essential \
    && rm -rf /var/lib/apt/lists/*

# The pinned stack, exactly as CI installs it: each repository's GitHub archive of its stack.lock commit, unpacked
# into /ComfyUI and custom_nodes/, the lock installed with --require-hashes --no-deps (PyPI's torch 2.9.1 Linux wheel
# is the CUDA 12.8 build), `pip check`, and a CPU boot that fails on any IMPORT FAILED.
COPY stack.lock requirements-stack.lock /opt/tenexa-stack/
COPY scripts/install_stack.py /opt/tenexa-stack/scripts/
RUN python3 /opt/tenexa-stack/scripts/install_stack.py --comfy-root /ComfyUI --venv /opt/venv --prefix /tmp/tenexa-stack \
    && rm -rf /tmp/tenexa-stack /ComfyUI/user /ComfyUI/temp

# SageAttention 2 is not on PyPI (PyPI has only the Triton-only 1.x) and needs CUDA to build: the one part of the
# stack CI cannot install. Compiled for the listed compute capabilities (no GPU needed to build) against the locked
# torch, with the lock's setuptools; `pip check` again afterwards.
RUN git init -q /tmp/SageAttention \
    && git -C /tmp/SageAttention fetch -q --depth 1 "$SAGEATTENTION_REPO" "$SAGEATTENTION_COMMIT" \
    && git -C /tmp/SageAttention checkout -q FETCH_HEAD \
    && test "$(git -C /tmp/SageAttention rev-parse HEAD)" = "$SAGEATTENTION_COMMIT"
WORKDIR /tmp/SageAttention
RUN TORCH_CUDA_ARCH_LIST="${SAGEATTENTION_CUDA_ARCHS//,/;}" EXT_PARALLEL=4 MAX_JOBS="$MAX_JOBS" \
        pip install --no-build-isolation --no-deps . \
    && test "$(python -c 'import importlib.metadata as m; print(m.version("sageattention"))')" = "$SAGEATTENTION_VERSION" \
    && pip check \
    && rm -rf /tmp/SageAttention
WORKDIR /

# ---------------------------------------------------------------------------------------------------------
# runtime: the CUDA base image (torch's wheels carry cuDNN/cuBLAS), Python, ffmpeg, the venv and the worker.
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS runtime

ARG COMFYUI_COMMIT=3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce
ARG WANVIDEOWRAPPER_COMMIT=64191921d4b9991ef308ba130db399b618fe3c24
ARG VHS_COMMIT=3234937ff5f3ca19068aaba5042771514de2429d
ARG KJNODES_COMMIT=487c7d86a0230aae3d8c0a37d517159b73834f85
ARG FRAME_INTERPOLATION_COMMIT=a969c01dbccd9e5510641be04eb51fe93f6bfc3d
ARG TORCH_VERSION=2.9.1
ARG TORCH_CUDA_TAG=cu128
ARG CUDA_VERSION
ARG SAGEATTENTION_VERSION=2.2.0
ARG HANDLER_VERSION=dev

LABEL org.opencontainers.image.title="tenexa" \
      org.opencontainers.image.description="Wan2.2-I2V-A14B image-to-video worker for RunPod serverless" \
      org.opencontainers.image.version="${HANDLER_VERSION}" \
      io.tenexa.comfyui.commit="${COMFYUI_COMMIT}" \
      io.tenexa.wanvideowrapper.commit="${WANVIDEOWRAPPER_COMMIT}" \
      io.tenexa.vhs.commit="${VHS_COMMIT}" \
      io.tenexa.kjnodes.commit="${KJNODES_COMMIT}" \
      io.tenexa.frame-interpolation.commit="${FRAME_INTERPOLATION_COMMIT}" \
      io.tenexa.torch.version="${TORCH_VERSION}+${TORCH_CUDA_TAG}" \
      io.tenexa.cuda.version="${CUDA_VERSION}" \
      io.tenexa.sageattention.version="${SAGEATTENTION_VERSION}"

ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HANDLER_VERSION=${HANDLER_VERSION} \
    COMFY_ROOT=/ComfyUI \
    COMFY_PYTHON=/opt/venv/bin/python \
    HANDLER_PYTHON=/opt/venv/bin/python \
    RP_API_HOST=0.0.0.0 \
    RP_API_PORT=8000 \
    RUNPOD_LOG_LEVEL=INFO
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3 must be the same release as the builder's (the venv links to /usr/bin/python3.12); ffmpeg for VHS;
# libgl1 + libglib2.0 for opencv-python (VHS, WanVideoWrapper); curl for the entrypoint's readiness probe.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ffmpeg libgl1 libglib2.0-0t64 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /ComfyUI /ComfyUI

WORKDIR /app
COPY stack.lock requirements-stack.lock models.json extra_model_paths.yaml example_image.png entrypoint.sh handler.py requirements.txt ./
COPY *_api.json ./
COPY tenexa/ ./tenexa/
COPY scripts/ ./scripts/
# The runtime base must run what the builder installed: pip check and the same CPU boot (every custom node imports;
# a library missing from this base image would show here), then the worker's own imports.
RUN chmod +x /app/entrypoint.sh \
    && python /app/scripts/install_stack.py check --comfy-root /ComfyUI --venv /opt/venv \
    && rm -rf /ComfyUI/user /ComfyUI/temp \
    && python -c "import tenexa.provision, tenexa.config" \
    && python -m tenexa.provision --models none

EXPOSE 8000
CMD ["/app/entrypoint.sh"]
