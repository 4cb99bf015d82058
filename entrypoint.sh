#!/usr/bin/env bash
# Tenexa worker entrypoint: GPU preflight -> models -> ComfyUI -> optional warm-up -> handler.
#
# Works in the image (defaults below) and on any machine with a ComfyUI checkout. Without COMFY_ROOT it uses the
# image's /ComfyUI, else the install of scripts/install_stack.py (~/.cache/tenexa/ComfyUI, whose venv then runs both
# ComfyUI and the handler): scripts/serve_local.sh is that, serving the local API on CPU.
# Every variable is described in docs/DEPLOYMENT.md. Exit status: 2 bad configuration, 3 no usable GPU,
# 4 model provisioning failed, 5 ComfyUI exited, 6 ComfyUI not ready in time, 7 warm-up job failed,
# 128+N after signal N; otherwise the handler's own exit status.
# Needs bash >= 4.2 (macOS: the Homebrew bash).
set -euo pipefail

REPO_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

# The default install of scripts/install_stack.py: one venv runs ComfyUI and the handler (requirements-stack.lock
# holds the handler's requirements too).
STACK_PREFIX="${HOME:-/root}/.cache/tenexa"
if [[ -z ${COMFY_ROOT:-} && ! -f /ComfyUI/main.py && -f $STACK_PREFIX/ComfyUI/main.py ]]; then
	COMFY_ROOT="$STACK_PREFIX/ComfyUI"
	COMFY_PYTHON="${COMFY_PYTHON:-$STACK_PREFIX/venv/bin/python}"
	HANDLER_PYTHON="${HANDLER_PYTHON:-$STACK_PREFIX/venv/bin/python}"
fi
COMFY_ROOT="${COMFY_ROOT:-/ComfyUI}"
SERVER_ADDRESS="${SERVER_ADDRESS:-127.0.0.1}"
COMFY_PORT="${COMFY_PORT:-8188}"
COMFY_READY_TIMEOUT="${COMFY_READY_TIMEOUT:-120}"
COMFY_LOG="${COMFY_LOG:-}"
COMFY_ARGS="${COMFY_ARGS:-}"
COMFY_PYTHON="${COMFY_PYTHON:-python3}"
HANDLER_PYTHON="${HANDLER_PYTHON:-python3}"
ALLOW_CPU="${ALLOW_CPU:-0}"
MODELS="${MODELS:-all}"
SERVE_API_LOCALLY="${SERVE_API_LOCALLY:-false}"
RP_API_HOST="${RP_API_HOST:-127.0.0.1}"
RP_API_PORT="${RP_API_PORT:-8000}"
WARMUP="${WARMUP:-}"
STOP_GRACE="${STOP_GRACE:-20}"
VOLUME_ROOT="${VOLUME_ROOT:-/runpod-volume}"

COMFY_PID=""
HANDLER_PID=""
STEP_PID=""
CPU_FLAG=()
COMFY_EXTRA=()
PHASES=()

# --- small helpers -------------------------------------------------------------------------------------

log() { printf '%s [entrypoint] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
err() { printf '%s [entrypoint] ERROR: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() {
	local code=$1
	shift
	err "$*"
	exit "$code"
}

is_true() {
	case "${1,,}" in
	1 | true | yes | on) return 0 ;;
	*) return 1 ;;
	esac
}

now_ms() {
	local t="${EPOCHREALTIME:-}"
	if [[ -n $t ]]; then
		t="${t/[.,]/}"
		echo $((10#$t / 1000))
	else
		echo $(($(date +%s) * 1000))
	fi
}

seconds_since() {
	local ms=$(($(now_ms) - $1))
	printf '%d.%d' $((ms / 1000)) $(((ms % 1000) / 100))
}

# Record and print how long a phase took: "phase <name>: <seconds> s".
phase_done() {
	local took
	took="$(seconds_since "$2")"
	PHASES+=("$1 ${took}s")
	log "phase $1: ${took} s"
}

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# Sleep without blocking traps: a foreground `sleep` would delay a forwarded SIGTERM until it returns.
nap() {
	sleep "$1" &
	wait $! 2>/dev/null || return 0
}

comfy_log_tail() {
	if [[ -s $COMFY_LOG ]]; then
		err "last 50 lines of $COMFY_LOG:"
		tail -n 50 "$COMFY_LOG" | sed 's/^/  comfy| /' >&2
	else
		err "$COMFY_LOG is empty"
	fi
}

# Stop one child: SIG, then KILL after STOP_GRACE seconds.
stop_pid() {
	local pid=$1 sig=$2 waited=0
	alive "$pid" || return 0
	kill -s "$sig" "$pid" 2>/dev/null || return 0
	while alive "$pid" && ((waited < STOP_GRACE * 5)); do
		nap 0.2
		waited=$((waited + 1))
	done
	if alive "$pid"; then
		err "pid $pid ignored SIG$sig for ${STOP_GRACE}s; killing it"
		kill -s KILL "$pid" 2>/dev/null || return 0
	fi
	wait "$pid" 2>/dev/null || return 0
}

stop_children() {
	local sig=${1:-TERM}
	stop_pid "$STEP_PID" "$sig"
	stop_pid "$HANDLER_PID" "$sig"
	stop_pid "$COMFY_PID" "$sig"
}

on_signal() {
	local sig=$1 code=$2
	trap - TERM INT
	log "received SIG$sig: forwarding it to the handler and ComfyUI"
	stop_children "$sig"
	exit "$code"
}

on_exit() {
	# Whatever path ends the script, no ComfyUI or handler is left behind.
	stop_children TERM
}

trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT
trap on_exit EXIT

# Run one step (provisioning, warm-up) in the background so that signals are forwarded at once.
run_step() {
	local rc=0
	"$@" &
	STEP_PID=$!
	wait "$STEP_PID" || rc=$?
	STEP_PID=""
	return "$rc"
}

# --- configuration -------------------------------------------------------------------------------------

check_config() {
	[[ $COMFY_PORT =~ ^[0-9]+$ ]] || die 2 "COMFY_PORT must be a port number, got '$COMFY_PORT'"
	[[ $RP_API_PORT =~ ^[0-9]+$ ]] || die 2 "RP_API_PORT must be a port number, got '$RP_API_PORT'"
	[[ $STOP_GRACE =~ ^[0-9]+$ ]] || die 2 "STOP_GRACE must be whole seconds, got '$STOP_GRACE'"
	[[ $COMFY_READY_TIMEOUT =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
		die 2 "COMFY_READY_TIMEOUT must be a number of seconds, got '$COMFY_READY_TIMEOUT'"
	[[ -f $COMFY_ROOT/main.py ]] ||
		die 2 "COMFY_ROOT=$COMFY_ROOT has no main.py; point COMFY_ROOT at a ComfyUI checkout"
	# Absolute, because extra_model_paths.yaml expands ${COMFY_ROOT} relative to its own folder otherwise.
	COMFY_ROOT="$(cd -- "$COMFY_ROOT" && pwd)"
	COMFY_LOG="${COMFY_LOG:-$COMFY_ROOT/comfy.log}"
	# The handler, tenexa.provision and ComfyUI (for extra_model_paths.yaml) read these; the handler probes
	# SageAttention in COMFY_PYTHON for TENEXA_ATTENTION=auto.
	export COMFY_ROOT VOLUME_ROOT SERVER_ADDRESS COMFY_PORT COMFY_READY_TIMEOUT COMFY_LOG MODELS COMFY_PYTHON
	[[ -f $REPO_DIR/handler.py ]] || die 2 "$REPO_DIR/handler.py not found"
	[[ -f $REPO_DIR/extra_model_paths.yaml ]] || die 2 "$REPO_DIR/extra_model_paths.yaml not found"
	command -v "$COMFY_PYTHON" >/dev/null 2>&1 || die 2 "COMFY_PYTHON=$COMFY_PYTHON is not an executable"
	command -v "$HANDLER_PYTHON" >/dev/null 2>&1 || die 2 "HANDLER_PYTHON=$HANDLER_PYTHON is not an executable"
	read -r -a COMFY_EXTRA <<<"$COMFY_ARGS"
}

# --- 1. GPU preflight ----------------------------------------------------------------------------------

# A real allocation, not just is_available(): bad hosts fail here with "CUDA unknown error".
TORCH_PROBE='import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}): torch.cuda.is_available() is False")
torch.zeros(1, device="cuda")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")'

preflight_gpu() {
	local why="" gpus="" probe=""
	if [[ " ${COMFY_EXTRA[*]-} " == *" --cpu "* ]]; then
		log "COMFY_ARGS asks for --cpu: no GPU check"
		return 0
	fi
	if ! command -v nvidia-smi >/dev/null 2>&1; then
		why="nvidia-smi not found (no NVIDIA driver visible in this container)"
	elif ! gpus="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"; then
		why="nvidia-smi failed: ${gpus//$'\n'/ }"
	elif ! probe="$("$COMFY_PYTHON" -c "$TORCH_PROBE" 2>&1)"; then
		why="$COMFY_PYTHON cannot use CUDA: $(tail -n 1 <<<"$probe")"
	fi
	if [[ -z $why ]]; then
		log "GPU: ${gpus//$'\n'/; } | $probe"
	elif is_true "$ALLOW_CPU"; then
		log "WARNING: $why; ALLOW_CPU=$ALLOW_CPU, so ComfyUI runs with --cpu (slow: tests and development only)"
		CPU_FLAG=(--cpu)
	else
		die 3 "no usable GPU: $why. Use a GPU worker, or set ALLOW_CPU=1 to run on CPU."
	fi
}

# --- 2. models -----------------------------------------------------------------------------------------

provision_models() {
	if [[ $MODELS == none ]]; then
		log "MODELS=none: model provisioning skipped"
		# Files already on the volume that a node pack reads from its own folder (the RIFE checkpoint) still
		# get linked there; without the link the pack would download at run time.
		run_step "$HANDLER_PYTHON" -m tenexa.provision --link-only ||
			die 4 "linking model files into node packs failed (the lines above say why)"
		return 0
	fi
	log "provisioning models (MODELS=$MODELS)"
	run_step "$HANDLER_PYTHON" -m tenexa.provision ||
		die 4 "model provisioning failed (the lines above name each file); the next start resumes what was downloaded"
}

# --- 3. ComfyUI ----------------------------------------------------------------------------------------

comfy_answers() {
	local url=$1
	if command -v curl >/dev/null 2>&1; then
		curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null
	else
		"$HANDLER_PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url" 2>/dev/null
	fi
}

start_comfy() {
	local host=$SERVER_ADDRESS
	[[ $host == 0.0.0.0 || $host == "::" ]] && host=127.0.0.1
	[[ $host == *:* ]] && host="[$host]"
	local url="http://$host:$COMFY_PORT/system_stats"
	local args=(main.py --listen "$SERVER_ADDRESS" --port "$COMFY_PORT" --disable-auto-launch
		--extra-model-paths-config "$REPO_DIR/extra_model_paths.yaml"
		${CPU_FLAG[@]+"${CPU_FLAG[@]}"} ${COMFY_EXTRA[@]+"${COMFY_EXTRA[@]}"})

	mkdir -p "$(dirname -- "$COMFY_LOG")"
	log "starting ComfyUI: (cd $COMFY_ROOT && $COMFY_PYTHON ${args[*]}) > $COMFY_LOG"
	(cd -- "$COMFY_ROOT" && PYTHONUNBUFFERED=1 exec "$COMFY_PYTHON" "${args[@]}") >"$COMFY_LOG" 2>&1 &
	COMFY_PID=$!

	local started deadline rc
	started="$(now_ms)"
	deadline=$((started + ${COMFY_READY_TIMEOUT%.*} * 1000))
	while :; do
		if ! alive "$COMFY_PID"; then
			rc=0
			wait "$COMFY_PID" || rc=$?
			COMFY_PID=""
			comfy_log_tail
			die 5 "ComfyUI exited with status $rc after $(seconds_since "$started") s, before answering $url"
		fi
		if comfy_answers "$url"; then
			log "ComfyUI answers $url (pid $COMFY_PID)"
			return 0
		fi
		if (($(now_ms) >= deadline)); then
			comfy_log_tail
			die 6 "ComfyUI (pid $COMFY_PID) did not answer $url within COMFY_READY_TIMEOUT=${COMFY_READY_TIMEOUT}s"
		fi
		nap 0.25
	done
}

# --- 4. warm-up (optional) -----------------------------------------------------------------------------

warm_up() {
	local job
	case "${WARMUP,,}" in
	"" | 0 | false | no | off) return 1 ;;
	# The warm-up mode loads the experts, VAE and text encoder a default generate needs into ComfyUI, so the
	# first real job starts sampling at once; it reports problems as ok=false and never fails the job.
	1 | true | yes | on) job='{"input": {"warmup": true}}' ;;
	*)
		[[ $WARMUP == "{"* ]] || die 2 "WARMUP must be 1/true (warm-up job) or a JSON job like {\"input\": {...}}, got '$WARMUP'"
		job=$WARMUP
		;;
	esac
	log "warm-up job: $job"
	run_step "$HANDLER_PYTHON" handler.py --test_input "$job" || die 7 "warm-up job failed (see the handler's lines above)"
}

# --- 5. handler ----------------------------------------------------------------------------------------

run_handler() {
	local args=(handler.py) rc
	if is_true "$SERVE_API_LOCALLY"; then
		args+=(--rp_serve_api --rp_api_host "$RP_API_HOST" --rp_api_port "$RP_API_PORT")
		log "local API on http://$RP_API_HOST:$RP_API_PORT (POST /runsync)"
	fi
	log "starting handler: $HANDLER_PYTHON ${args[*]}"
	"$HANDLER_PYTHON" "${args[@]}" &
	HANDLER_PID=$!
	while :; do
		if ! alive "$HANDLER_PID"; then
			rc=0
			wait "$HANDLER_PID" || rc=$?
			HANDLER_PID=""
			log "handler exited with status $rc; stopping ComfyUI"
			exit "$rc"
		fi
		if ! alive "$COMFY_PID"; then
			rc=0
			wait "$COMFY_PID" || rc=$?
			COMFY_PID=""
			err "ComfyUI exited with status $rc while the handler was running"
			comfy_log_tail
			# Give a job in flight time to report its COMFY_CRASHED error before the worker goes away.
			nap 5
			die 5 "stopping the worker so that RunPod replaces it"
		fi
		nap 1
	done
}

main() {
	local t0 t
	t0="$(now_ms)"
	check_config
	cd -- "$REPO_DIR"

	t="$(now_ms)"
	preflight_gpu
	phase_done gpu-preflight "$t"

	t="$(now_ms)"
	provision_models
	phase_done models "$t"

	t="$(now_ms)"
	start_comfy
	phase_done comfyui-ready "$t"

	t="$(now_ms)"
	if warm_up; then phase_done warmup "$t"; fi

	local summary
	summary="$(printf '%s, ' "${PHASES[@]}")"
	log "ready in $(seconds_since "$t0") s (${summary%, })"
	run_handler
}

main "$@"
