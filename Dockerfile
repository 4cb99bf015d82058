# Tenexa: Wan2.2-I2V-A14B image-to-video worker for RunPod serverless (ComfyUI + WanVideoWrapper + VHS + KJNodes).
#
# Every version below mirrors stack.lock (tests/test_entrypoint.py checks that each ARG default equals its
# stack.lock value). Build with the lock's values, stamped with a version:
#   docker build $(grep -E '^[A-Z_]+=' stack.lock | sed 's/^/--build-arg /') \
#     --build-arg HANDLER_VERSION=$(git describe --tags --always --dirty) -t tenexa:dev .
# Models are not baked in: entrypoint.sh provisions them from models.json (or finds them on the network volume).

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

# ---------------------------------------------------------------------------------------------------------
# builder: one virtual environment with torch, ComfyUI and the three packs' requirements, the handler's
# requirements and SageAttention compiled for the listed GPUs. It is copied whole into the runtime stage, so
# the interpreter that installs the packs' requirements is the one that runs ComfyUI (peers' problem 8).
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS builder

ARG COMFYUI_REPO=https://github.com/comfyanonymous/ComfyUI
ARG COMFYUI_COMMIT=3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce
ARG WANVIDEOWRAPPER_REPO=https://github.com/kijai/ComfyUI-WanVideoWrapper
ARG WANVIDEOWRAPPER_COMMIT=64191921d4b9991ef308ba130db399b618fe3c24
ARG VHS_REPO=https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite
ARG VHS_COMMIT=3234937ff5f3ca19068aaba5042771514de2429d
ARG KJNODES_REPO=https://github.com/kijai/ComfyUI-KJNodes
ARG KJNODES_COMMIT=487c7d86a0230aae3d8c0a37d517159b73834f85
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ARG TORCHAUDIO_VERSION=2.9.1
ARG TORCH_CUDA_TAG=cu128
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
# build at every Ubuntu security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git ca-certificates build-essential \
    && rm -rf /var/lib/apt/lists/*

# Exactly the pinned commits: fetch the one commit (GitHub serves any reachable commit), check it, drop .git.
RUN fetch_commit() { \
        local repo=$1 dir=$2 commit=$3; \
        git init -q "$dir" && git -C "$dir" fetch -q --depth 1 "$repo" "$commit" \
        && git -C "$dir" checkout -q FETCH_HEAD \
        && test "$(git -C "$dir" rev-parse HEAD)" = "$commit" \
        && rm -rf "$dir/.git"; \
    } \
    && fetch_commit "$COMFYUI_REPO" /ComfyUI "$COMFYUI_COMMIT" \
    && fetch_commit "$WANVIDEOWRAPPER_REPO" /ComfyUI/custom_nodes/ComfyUI-WanVideoWrapper "$WANVIDEOWRAPPER_COMMIT" \
    && fetch_commit "$VHS_REPO" /ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite "$VHS_COMMIT" \
    && fetch_commit "$KJNODES_REPO" /ComfyUI/custom_nodes/ComfyUI-KJNodes "$KJNODES_COMMIT" \
    && fetch_commit "$SAGEATTENTION_REPO" /tmp/SageAttention "$SAGEATTENTION_COMMIT"

# torch first, from the CUDA-specific index; the constraints keep every later install from replacing it
# (2.9.1 matches the installed 2.9.1+cu128).
RUN python3 -m venv /opt/venv \
    && pip install --index-url "https://download.pytorch.org/whl/${TORCH_CUDA_TAG}" \
        "torch==${TORCH_VERSION}+${TORCH_CUDA_TAG}" \
        "torchvision==${TORCHVISION_VERSION}+${TORCH_CUDA_TAG}" \
        "torchaudio==${TORCHAUDIO_VERSION}+${TORCH_CUDA_TAG}" \
    && printf 'torch==%s\ntorchvision==%s\ntorchaudio==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" "$TORCHAUDIO_VERSION" \
        > /opt/torch-constraints.txt

# ComfyUI, the three packs and the handler in one resolver run: a conflict fails the build instead of one
# install silently downgrading what an earlier one needed; `pip check` confirms the result.
COPY requirements.txt /tmp/tenexa-requirements.txt
RUN pip install -c /opt/torch-constraints.txt \
        -r /ComfyUI/requirements.txt \
        -r /ComfyUI/custom_nodes/ComfyUI-WanVideoWrapper/requirements.txt \
        -r /ComfyUI/custom_nodes/ComfyUI-VideoHelperSuite/requirements.txt \
        -r /ComfyUI/custom_nodes/ComfyUI-KJNodes/requirements.txt \
        -r /tmp/tenexa-requirements.txt \
    && pip check

# SageAttention 2 is not on PyPI; compile it for the listed compute capabilities (no GPU needed to build).
WORKDIR /tmp/SageAttention
RUN pip install setuptools==80.9.0 wheel==0.45.1 \
    && TORCH_CUDA_ARCH_LIST="${SAGEATTENTION_CUDA_ARCHS//,/;}" EXT_PARALLEL=4 MAX_JOBS="$MAX_JOBS" \
        pip install --no-build-isolation --no-deps . \
    && test "$(python -c 'import importlib.metadata as m; print(m.version("sageattention"))')" = "$SAGEATTENTION_VERSION" \
    && rm -rf /tmp/SageAttention
WORKDIR /

# ---------------------------------------------------------------------------------------------------------
# runtime: the CUDA base image (torch's wheels carry cuDNN/cuBLAS), Python, ffmpeg, the venv and the worker.
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS runtime

ARG COMFYUI_COMMIT=3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce
ARG WANVIDEOWRAPPER_COMMIT=64191921d4b9991ef308ba130db399b618fe3c24
ARG VHS_COMMIT=3234937ff5f3ca19068aaba5042771514de2429d
ARG KJNODES_COMMIT=487c7d86a0230aae3d8c0a37d517159b73834f85
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

# Every custom node must import (on CPU here: no GPU at build time); an IMPORT FAILED line fails the build.
WORKDIR /ComfyUI
RUN python main.py --cpu --quick-test-for-ci --disable-auto-launch > /tmp/comfy-import.log 2>&1 \
    && if grep -q "IMPORT FAILED" /tmp/comfy-import.log; then cat /tmp/comfy-import.log; exit 1; fi \
    && grep "seconds:" /tmp/comfy-import.log \
    && rm -rf /tmp/comfy-import.log /ComfyUI/user /ComfyUI/temp

WORKDIR /app
COPY stack.lock models.json extra_model_paths.yaml example_image.png entrypoint.sh handler.py requirements.txt ./
COPY *_api.json ./
COPY tenexa/ ./tenexa/
COPY scripts/ ./scripts/
RUN chmod +x /app/entrypoint.sh \
    && python -c "import tenexa.provision, tenexa.config" \
    && python -m tenexa.provision --models none

EXPOSE 8000
CMD ["/app/entrypoint.sh"]
